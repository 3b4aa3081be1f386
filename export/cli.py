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
    ``errors`` or MissingExtra (the failures a user can fix); anything else is a bug and keeps its traceback."""
    fixable: tuple[type[BaseException], ...] = (MissingExtra, *errors)
    try:
        action()
    except fixable as exc:
        print(f"[{tag}] error: {exc}", file=sys.stderr)
        return 1
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
