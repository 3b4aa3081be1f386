"""The memory that decoding large images may take at once, shared by every front end of a server.

A small file can decode to a large image: a 90 KB PNG of 40 megapixels with an alpha channel takes
about 0.34 GB while it is decoded, composited and resized (``preprocess.decode_peak_bytes``). Every
decode thread of every front end could hold one such image at once, so the budget has to be the
server's, not a process's: the supervisor makes one anonymous file (memfd) and hands it to each front
end, and the budget is ``UNITS`` byte-range locks on it.

- An image whose estimate is under one unit (``total / UNITS``) takes nothing: ordinary photos
  never wait, and never make a system call here.
- A larger one holds ``estimate // unit`` units (at most all of them) while it decodes; a decode that
  does not fit waits for others to finish. One waiting thread at a time gathers its units (the
  turnstile, byte 0), so two large images never each hold half of what both need.
- The locks are open-file-description locks (Linux ``F_OFD_SETLK``), one description per thread: the
  kernel tells threads apart, and a process that dies, however it dies, lets go of its units.
- A request that ends (deadline, hang-up) while its work waits gives up the wait (``abandoned``):
  it neither holds the budget nor decodes for nobody.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("service.decode_budget")
UNITS = 64
_TURNSTILE = 0
# struct flock on 64-bit Linux: l_type, l_whence (short), l_start, l_len (off_t), l_pid (0 for OFD locks).
_FLOCK = "hhxxxxqqixxxx"


def _flock(kind: int, start: int, length: int = 1) -> bytes:
    return struct.pack(_FLOCK, kind, os.SEEK_SET, start, length, 0)


def create_budget_file() -> int:
    """A fresh budget file for a server's front ends (the supervisor passes its fd to each)."""
    return os.memfd_create("alexnet-decode-budget", os.MFD_CLOEXEC)


class Abandoned(Exception):
    """The work waiting for the budget was given up (its request ended at its deadline or hung up)."""


class _ThreadFd:
    """One thread's open file description of the budget file, closed when the thread ends."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __del__(self) -> None:
        os.close(self.fd)


class DecodeBudget:
    """``total_bytes`` of decoding at once, across every process that shares ``fd`` (a private budget
    when ``fd`` is None). Holds do not nest: a thread holds one share at a time."""

    def __init__(self, total_bytes: int, fd: int | None = None) -> None:
        if total_bytes < UNITS:
            raise ValueError(f"a decode budget needs at least {UNITS} bytes, got {total_bytes}")
        self.unit_bytes = total_bytes // UNITS
        self._fd = fd if fd is not None else create_budget_file()
        self._owned = fd is None
        self._local = threading.local()
        self._unavailable = False

    def units_for(self, nbytes: int) -> int:
        """Units an image of ``nbytes`` estimated peak holds: 0 under one unit, never more than all."""
        return min(UNITS, nbytes // self.unit_bytes)

    @contextmanager
    def hold(
        self, nbytes: int, on_wait: Callable[[float], None] | None = None, abandoned: threading.Event | None = None
    ) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the block; ``on_wait(seconds)`` is called once it is held.
        Waiting ends with Abandoned as soon as ``abandoned`` is set (the request has ended)."""
        units = self.units_for(nbytes)
        fd = self._thread_fd() if units else None
        if fd is None:
            yield
            return
        start = time.perf_counter()
        taken = self._acquire(fd, units, abandoned)
        try:
            if on_wait is not None:
                on_wait(time.perf_counter() - start)
            yield
        finally:
            for unit in taken:
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, unit))

    def close(self) -> None:
        """Close the budget file if this budget made it. Each thread's own description of it closes
        when that thread ends (a decode still running keeps its share until it finishes)."""
        if self._owned:
            os.close(self._fd)
            self._owned = False

    # -- inside ------------------------------------------------------------------------------------
    def _thread_fd(self) -> int | None:
        """This thread's own open file description of the budget file (locks are per description);
        None, and a warning once, where /proc cannot reopen it: then decoding goes unbudgeted."""
        mine = getattr(self._local, "fd", None)
        if mine is None:
            if self._unavailable:
                return None
            try:
                mine = _ThreadFd(os.open(f"/proc/self/fd/{self._fd}", os.O_RDWR | os.O_CLOEXEC))
            except OSError as exc:
                self._unavailable = True
                log.warning("decode memory budget unavailable, decoding without it: cannot reopen its file (%s)", exc)
                return None
            self._local.fd = mine
        return mine.fd

    def _acquire(self, fd: int, units: int, abandoned: threading.Event | None) -> list[int]:
        _lock(fd, _TURNSTILE, abandoned)
        taken: list[int] = []
        try:
            for unit in range(1, UNITS + 1):  # the free ones first, without waiting
                if len(taken) == units:
                    break
                if _try_lock(fd, unit):
                    taken.append(unit)
            for unit in range(1, UNITS + 1):  # then wait for the rest, one at a time
                if len(taken) == units:
                    break
                if unit not in taken:
                    _lock(fd, unit, abandoned)
                    taken.append(unit)
        except BaseException:
            for unit in taken:
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, unit))
            raise
        finally:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, _TURNSTILE))
        return taken


def _try_lock(fd: int, byte: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK, byte))
    except (BlockingIOError, PermissionError):  # EAGAIN, or EACCES: some systems' word for it
        return False
    return True


def _lock(fd: int, byte: int, abandoned: threading.Event | None) -> None:
    """Take ``byte``'s lock, waiting for it: in the kernel, or, where the wait may be abandoned, by
    trying again at growing intervals (1 to 20 ms) until it is free or ``abandoned`` is set."""
    if abandoned is None:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, _flock(fcntl.F_WRLCK, byte))
        return
    pause = 0.001
    while not _try_lock(fd, byte):
        if abandoned.wait(pause):
            raise Abandoned
        pause = min(2 * pause, 0.02)
