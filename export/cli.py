"""What the export scripts share on the command line: one progress line per step, tagged with the
script's name (``[to_onnx] ...``), and one way to turn an expected failure into exit status 1."""

from __future__ import annotations

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
