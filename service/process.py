"""What every child process of the supervisor does first."""

from __future__ import annotations

import contextlib
import os
import signal


def follow_parent(parent: int | None) -> bool:
    """Ask Linux to SIGTERM this process when its parent dies, so that no orphan keeps the port or
    the GPU; False when the parent is already gone (then exit at once)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    return parent is None or os.getppid() == parent
