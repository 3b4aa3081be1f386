"""argparse ``type``s for bounded numbers, shared by every command line of the project (training,
export, the load generator). A value out of bounds is a flag error naming the flag and the bound,
exit 2 before any work: ``--top-k: must be at least 1, got 0``."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def at_least(cast: Callable[[str], float], low: float, strict: bool = False) -> Callable[[str], float]:
    """One finite number (``cast``: int or float) >= ``low``, or > ``low`` when ``strict``."""
    bound = f"above {low:g}" if strict else f"at least {low:g}"

    def parse(text: str):
        value = _number(cast, text)
        if not math.isfinite(value):  # NaN too
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


positive_int = at_least(int, 1)  # counts: batch sizes, images, requests
positive_float = at_least(float, 0, strict=True)  # limits: a tolerance, a duration
non_negative_float = at_least(float, 0)  # a warm-up that may be skipped


def fraction(text: str) -> float:
    """A share from 0 to 1, such as an agreement floor."""
    value = _number(float, text)
    if not 0 <= value <= 1:  # also NaN
        raise argparse.ArgumentTypeError(f"must be from 0 to 1 (0.9 = 90%), got {text}")
    return value


def positive_fraction(text: str) -> float:
    """A share above 0, up to 1, such as the part of a batch offered to one decoder."""
    value = _number(float, text)
    if not 0 < value <= 1:  # also NaN
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {text}")
    return value


def one_of(cast: Callable[[str], T], allowed: tuple[T, ...]) -> Callable[[str], T]:
    """One of ``allowed`` (``cast``: its type), such as a switch given as 0 or 1."""
    words = " or ".join(map(str, allowed))

    def parse(text: str) -> T:
        value = _number(cast, text)
        if value not in allowed:
            raise argparse.ArgumentTypeError(f"must be {words}, got {text}")
        return value

    return parse


def comma_separated(item: Callable[[str], T]) -> Callable[[str], list[T]]:
    """Comma-separated values, at least one, each parsed by ``item`` (one of the types here): the first
    that is not valid is the flag's error, in ``item``'s words (``--concurrency: must be at least 1, got
    0``). A sweep's steps, a benchmark's batch sizes."""

    def parse(text: str) -> list[T]:
        values = [item(value.strip()) for value in text.split(",") if value.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated values, got {text!r}")
        return values

    return parse


def _number(cast: Callable[[str], T], text: str) -> T:
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid {getattr(cast, '__name__', 'number')} value: {text!r}") from None
