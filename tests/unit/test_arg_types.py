"""model.arg_types: the bounded-number flag types every command line uses."""

from __future__ import annotations

import argparse

import pytest

from model.arg_types import (
    comma_separated,
    fraction,
    non_negative_float,
    one_of,
    positive_float,
    positive_fraction,
    positive_int,
)


@pytest.mark.parametrize(
    ("parse", "text", "value"),
    [
        (positive_int, "3", 3),
        (positive_float, "0.5", 0.5),
        (non_negative_float, "0", 0.0),
        (fraction, "1", 1.0),
        (positive_fraction, "1", 1.0),
        (one_of(int, (0, 1)), "0", 0),
        (comma_separated(positive_int), "1, 4,,16", [1, 4, 16]),
        (comma_separated(positive_float), "0.5", [0.5]),
    ],
)
def test_a_value_in_bounds_comes_back_as_its_type(parse, text, value):
    assert parse(text) == value and type(parse(text)) is type(value)


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (positive_int, "0", "must be at least 1, got 0"),
        (positive_int, "1.5", "invalid int value: '1.5'"),
        (positive_float, "0", "must be above 0, got 0"),
        (positive_float, "nan", "must be a finite number above 0, got nan"),
        (positive_float, "inf", "must be a finite number above 0, got inf"),  # a duration or tolerance is finite
        (non_negative_float, "-inf", "must be a finite number at least 0, got -inf"),
        (non_negative_float, "-1", "must be at least 0, got -1"),
        (fraction, "1.1", "must be from 0 to 1 (0.9 = 90%), got 1.1"),
        (fraction, "nan", "must be from 0 to 1"),
        (fraction, "x", "invalid float value: 'x'"),
        (positive_fraction, "0", "must be above 0 and at most 1, got 0"),
        (positive_fraction, "1.5", "must be above 0 and at most 1, got 1.5"),
        (one_of(int, (0, 1)), "2", "must be 0 or 1, got 2"),
        (comma_separated(positive_int), "1,0", "must be at least 1, got 0"),  # the first bad one, as its type says
        (comma_separated(positive_int), "4,x", "invalid int value: 'x'"),
        (comma_separated(positive_int), " , ", "expected comma-separated values, got ' , '"),
    ],
)
def test_a_value_out_of_bounds_is_a_flag_error_naming_the_bound(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        parse(text)
