"""Progress of a TensorRT engine build, in lines a log keeps, and Ctrl-C that cancels it.

``build_serialized_network`` takes minutes and says nothing until it returns, and a Ctrl-C waits for
it: the signal is only seen once Python code runs again. TensorRT calls an ``IProgressMonitor`` as it
enters and leaves each phase of the build and completes each step (TensorRT 10 and 11, the same
names). ``BuildProgress`` turns those calls into:

- a line when a top-level phase starts (with its number of steps) and when it ends (with its time);
- every ``interval_s`` at most, one line with the phases under way and their steps, innermost last
  (nested phases come and go too fast, and in numbers that change between TensorRT versions, for a
  line each);
- a cancelled build on Ctrl-C: a KeyboardInterrupt raised in one of these calls (they are where the
  build runs Python code) is kept, and the next ``step_complete`` answers False, which asks TensorRT
  to stop; ``build_engine`` then says the build was cancelled.

TensorRT may call the monitor from several threads: one lock guards its state. ``monitor_for`` wraps
a BuildProgress in the bindings' class (tests drive BuildProgress directly and through a stand-in).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class _Phase:
    depth: int
    started: float
    steps: int  # of num_steps, completed
    num_steps: int


class BuildProgress:
    def __init__(
        self,
        report: Callable[[str], object],
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._report = report
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._phases: dict[str, _Phase] = {}  # under way, in the order they started
        self._started = clock()
        self._reported = self._started  # when the last progress line was written
        self.cancelled = False  # a Ctrl-C came during the build

    # -- the three calls TensorRT makes ------------------------------------------------------------
    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        try:
            with self._lock:
                parent = self._phases.get(parent_phase) if parent_phase is not None else None
                depth = 0 if parent is None else parent.depth + 1
                self._phases[phase_name] = _Phase(depth, self._clock(), 0, num_steps)
            if depth == 0:
                self._report(f"  {phase_name} ({num_steps} step{'s' if num_steps != 1 else ''})")
        except KeyboardInterrupt:
            self.cancelled = True

    def step_complete(self, phase_name: str, step: int) -> bool:
        """True: go on; False: stop the build (after a Ctrl-C)."""
        try:
            line = None
            with self._lock:
                phase = self._phases.get(phase_name)
                if phase is not None:
                    phase.steps = step + 1  # steps are numbered from 0
                now = self._clock()
                if now - self._reported >= self.interval_s:
                    self._reported = now
                    line = self._progress_line(now)
            if line:
                self._report(line)
        except KeyboardInterrupt:
            self.cancelled = True
        return not self.cancelled

    def phase_finish(self, phase_name: str) -> None:
        try:
            with self._lock:
                phase = self._phases.pop(phase_name, None)
                now = self._clock()
            if phase is not None and phase.depth == 0:
                self._report(f"  {phase_name} done in {now - phase.started:.1f} s")
        except KeyboardInterrupt:
            self.cancelled = True

    # -- inside ------------------------------------------------------------------------------------
    def _progress_line(self, now: float) -> str:
        under_way = " > ".join(f"{name} {p.steps}/{p.num_steps}" for name, p in self._phases.items())
        return f"  {now - self._started:.0f} s: {under_way or 'working'}"


def monitor_for(trt: Any, progress: BuildProgress) -> Any:
    """``progress`` as a ``trt.IProgressMonitor`` for ``config.progress_monitor``, or None where the
    bindings have no such class. Keep the returned object alive until the build has returned."""
    base: Any = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(base):  # the bindings' trampoline class
        def __init__(self) -> None:
            base.__init__(self)  # the bindings require the base's own __init__

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            progress.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return progress.step_complete(phase_name, step)

        def phase_finish(self, phase_name: str) -> None:
            progress.phase_finish(phase_name)

    return Monitor()
