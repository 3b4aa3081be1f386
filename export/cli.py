"""What the export scripts share on the command line: one progress line per step, tagged with the
script's name (``[to_onnx] ...``), and one way to turn an expected failure into exit status 1."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from export.ort import MissingExtra


def step_printer(tag: str) -> Callable[[str], float]:
    """A ``step(message)`` that prints ``[tag] message`` at once and returns ``time.perf_counter()``."""

    def step(message: str) -> float:
        print(f"[{tag}] {message}", flush=True)
        return time.perf_counter()

    return step


def run_main(tag: str, action: Callable[[], object], errors: tuple[type[BaseException], ...]) -> int:
    """0 when ``action()`` returns; 1 and one line ``[tag] error: ...`` on stderr when it raises one of
    ``errors``, MissingExtra or OSError (the failures a user can fix: a full disk, a read-only folder);
    130 and one line on Ctrl-C (the output files are written atomically: none is left half-written);
    anything else is a bug and keeps its traceback."""
    fixable: tuple[type[BaseException], ...] = (MissingExtra, OSError, *errors)
    try:
        action()
    except fixable as exc:
        print(f"[{tag}] error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"[{tag}] interrupted; no file is left half-written", file=sys.stderr)
        return 130
    return 0


def positive_int(text: str) -> int:
    """argparse ``type`` for counts that must be at least 1 (exit 2 with the flag named otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse ``type`` for limits that must be above 0, such as a tolerance (exit 2 otherwise)."""
    value = _float(text)
    if not value > 0:  # also NaN
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def fraction(text: str) -> float:
    """argparse ``type`` for a share from 0 to 1, such as an agreement floor (exit 2 otherwise)."""
    value = _float(text)
    if not 0 <= value <= 1:  # also NaN
        raise argparse.ArgumentTypeError(f"must be from 0 to 1 (0.9 = 90%), got {text}")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
