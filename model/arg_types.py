"""argparse ``type``s for bounded numbers, shared by every command line of the project (training,
export, the load generator). A value out of bounds is a flag error naming the flag and the bound,
exit 2 before any work: ``--top-k: must be at least 1, got 0``."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


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


def _number(cast: Callable[[str], float], text: str) -> float:
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid {getattr(cast, '__name__', 'number')} value: {text!r}") from None
