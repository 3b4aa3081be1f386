"""Progress of a TensorRT engine build, in lines a log keeps, and Ctrl-C that cancels it.

``build_serialized_network`` takes minutes and says nothing until it returns, and a Ctrl-C waits for
it: Python sees a signal only once its main thread runs Python code again. TensorRT calls an
``IProgressMonitor`` as it enters and leaves each phase of the build and completes each step
(TensorRT 10 and 11, the same names). ``BuildProgress`` turns those calls into:

- a line when a top-level phase starts (with its number of steps) and when it ends (with its time);
- every ``interval_s`` at most, one line with the phases under way and their steps, innermost last
  (nested phases come and go too fast, and in numbers that change between TensorRT versions, for a
  line each);
- a cancelled build on Ctrl-C (``cancel_on_ctrl_c``, around the build): SIGINT only marks the build
  cancelled, and the next ``step_complete`` answers False, which asks TensorRT to stop; ``build_engine``
  then says so. The mark is made by the signal's Python handler when the main thread runs Python (a
  monitor call on it), and through a wakeup fd, which the C-level handler writes at once, that
  ``step_complete`` reads on whatever thread TensorRT calls it from. (A KeyboardInterrupt raised
  inside a monitor call instead would be caught and printed by the bindings, and lost.)

TensorRT may call the monitor from several threads: one lock guards its state. ``monitor_for`` wraps
a BuildProgress in the bindings' class (tests drive BuildProgress directly and through a stand-in).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
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
        self._said_cancelled = False
        self.wakeup: socket.socket | None = None  # SIGINT's wakeup fd, read by step_complete (cancel_on_ctrl_c)

    def cancel(self) -> None:
        """Stop the build at its next step (Ctrl-C). Only sets a flag: safe in a signal handler, which
        may run in the middle of a print."""
        self.cancelled = True

    # -- the three calls TensorRT makes ------------------------------------------------------------
    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        with self._lock:
            if parent_phase is None:
                depth = 0
            else:  # a parent not seen (another thread's, a name reused) still makes it a nested phase
                parent = self._phases.get(parent_phase)
                depth = 1 + (parent.depth if parent is not None else 0)
            self._phases[phase_name] = _Phase(depth, self._clock(), 0, num_steps)
        if depth == 0:
            self._report(f"  {phase_name} ({num_steps} step{'s' if num_steps != 1 else ''})")

    def step_complete(self, phase_name: str, step: int) -> bool:
        """True: go on; False: stop the build (after a Ctrl-C)."""
        if self._signalled():
            self.cancel()
        line = None
        with self._lock:
            if self.cancelled:
                if self._said_cancelled:
                    return False
                self._said_cancelled = True
                line = "  Ctrl-C: asking TensorRT to stop the build"
            phase = self._phases.get(phase_name)
            if phase is not None:
                phase.steps = step + 1  # steps are numbered from 0
            now = self._clock()
            if line is None and now - self._reported >= self.interval_s:
                self._reported = now
                line = self._progress_line(now)
        if line:
            self._report(line)
        return not self.cancelled

    def phase_finish(self, phase_name: str) -> None:
        with self._lock:
            phase = self._phases.pop(phase_name, None)
            now = self._clock()
        if phase is not None and phase.depth == 0:
            self._report(f"  {phase_name} done in {now - phase.started:.1f} s")

    # -- inside ------------------------------------------------------------------------------------
    def _progress_line(self, now: float) -> str:
        under_way = " > ".join(f"{name} {p.steps}/{p.num_steps}" for name, p in self._phases.items())
        return f"  {now - self._started:.0f} s: {under_way or 'working'}"

    def _signalled(self) -> bool:
        """A SIGINT since the last look, by the bytes its C-level handler wrote to the wakeup fd."""
        if self.wakeup is None:
            return False
        try:
            return signal.SIGINT in self.wakeup.recv(64)
        except (BlockingIOError, OSError):  # nothing written, or closed after the build
            return False


@contextlib.contextmanager
def cancel_on_ctrl_c(progress: BuildProgress) -> Iterator[None]:
    """Around the build: SIGINT cancels it at its next step (see the module docstring), instead of
    raising KeyboardInterrupt; the previous handler and wakeup fd are back afterwards. Only on the
    main thread, where Python takes signals; elsewhere the build runs as it would without."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    previous_handler = signal.signal(signal.SIGINT, lambda _signum, _frame: progress.cancel())
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    progress.wakeup = reader
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGINT, previous_handler)
        progress.wakeup = None
        reader.close()
        writer.close()


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
