"""Progress on stderr: a one-line bar (redrawn in place on a terminal, a line every few seconds otherwise),
and ``say``, a timestamped line of the benchmark's narration."""

from __future__ import annotations

import sys
import time

from loadtest.step import StepResult


class ProgressBar:
    def __init__(self, total_steps: int, stream=sys.stderr, width: int = 24) -> None:
        self.total_steps = total_steps
        self.step = 0
        self.stream = stream
        self.width = width
        self.tty = stream.isatty()
        self._last_line = 0.0

    def next_step(self) -> None:
        self.step += 1

    def __call__(self, result: StepResult, elapsed_s: float, planned_s: float) -> None:
        frac = min(1.0, elapsed_s / planned_s) if planned_s else 0.0
        filled = int(frac * self.width)
        rps = result.ok / elapsed_s if elapsed_s > 0 else 0.0
        p50 = result.latency.percentile_ms(50) if result.latency.count else float("nan")
        line = (
            f"[{'#' * filled}{'.' * (self.width - filled)}] step {self.step}/{self.total_steps} "
            f"{result.config.label:<16} {elapsed_s:5.1f}s {result.counted:6d} req "
            f"{result.counted - result.ok:4d} err {rps:7.1f} req/s p50 {p50:7.1f} ms"
        )
        if self.tty:
            self.stream.write("\r" + line)
            self.stream.flush()
        elif time.monotonic() - self._last_line > 5:
            self._last_line = time.monotonic()
            self.stream.write(line + "\n")
            self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\r" + " " * 110 + "\r")
            self.stream.flush()


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)
