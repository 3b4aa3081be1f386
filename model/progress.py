"""A dependency-free progress line with images per second, for training and evaluation loops."""

from __future__ import annotations

import sys
import time
from typing import TextIO

import torch


class Progress:
    """``desc  step/total  img/s  extras``; redrawn in place on a terminal, one line every
    ``every_s`` seconds in a log file (so CI logs stay short), and always on ``close``."""

    def __init__(
        self, total: int, desc: str, enabled: bool = True, every_s: float = 10.0, stream: TextIO | None = None
    ) -> None:
        self.total, self.desc, self.enabled, self.every_s = total, desc, enabled, every_s
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = self.last_print = time.perf_counter()
        self.count = 0
        self.images = 0

    @property
    def images_per_s(self) -> float:
        return self.images / max(time.perf_counter() - self.start, 1e-9)

    def update(self, images: int, **extras: float | torch.Tensor) -> None:
        self.count += 1
        self.images += images
        now = time.perf_counter()
        if self.enabled and (now - self.last_print >= (0.2 if self.tty else self.every_s)):
            self.last_print = now
            self._write(extras, end="\r" if self.tty else "\n")

    def close(self, **extras: float | torch.Tensor) -> None:
        if self.enabled:
            self._write(extras, end="\n")

    def _write(self, extras: dict[str, float | torch.Tensor], end: str) -> None:
        width = len(str(self.total))
        parts = [f"{self.desc} {self.count:>{width}}/{self.total}", f"{self.images_per_s:8.1f} img/s"]
        parts += [f"{k} {float(v):.4g}" for k, v in extras.items()]
        self.stream.write("  ".join(parts) + end)
        self.stream.flush()
