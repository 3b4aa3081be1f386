"""What every child process of the supervisor does first."""

from __future__ import annotations

import contextlib
import gc
import os
import signal

# Exit statuses of ``python -m service`` (README: "Exit status"); 0 = stopped by SIGTERM or SIGINT.
EXIT_FAILED = 1  # a process kept dying, or the port could not be bound
EXIT_INVALID_SETTINGS = 2  # refused before any process started; one line says which setting and why
EXIT_MODEL_NOT_LOADED = 3  # the engine could not load the model (also the engine's own exit status then)

# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap and go back to it when freed: a decoded photo up to
# ~2.7 megapixels. Larger ones still get their own mapping, returned to the kernel at once (their
# page faults are a few percent of their decode time).
KEEP_BLOCKS_UP_TO = 8 * 1024 * 1024
# Free memory each heap (one per thread that allocates) keeps for reuse before giving it back.
KEEP_FREE_UP_TO = 16 * 1024 * 1024
# Net allocations of container objects between collections of the youngest generation (Python's
# default: 700); see settle_garbage_collector.
YOUNG_COLLECTION_THRESHOLD = 7000


def follow_parent(parent: int | None) -> bool:
    """Ask Linux to SIGTERM this process when its parent dies, so that no orphan keeps the port or
    the GPU; False when the parent is already gone (then exit at once)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    return parent is None or os.getppid() == parent


def reuse_freed_memory() -> bool:
    """Let malloc reuse the memory of freed images instead of asking the kernel for fresh pages.

    By default glibc maps large blocks (from 128 KiB) on their own and soon hands free heap memory
    back to the kernel, so every decoded photo and its resized copy arrive as fresh pages: ~290 faults per
    451x300 JPEG on a decode thread, 0.6 ms of a 2.8 ms decode on the 2-core development host. With
    these limits a decode thread reuses its memory (0 faults). False where the C library is not glibc
    or where the user set MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ (theirs win).
    """
    if any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BLOCKS_UP_TO)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREE_UP_TO))


def use_uvloop() -> None:
    """uvloop for the next asyncio.run where installed (uvicorn[standard] brings it, and uvicorn uses it
    in the front ends): less per message on the engine's wire."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()


def settle_garbage_collector() -> None:
    """Tune the cycle collector for a serving process; call once, when start-up is done.

    - Collect once, then freeze what is left (modules, the app, its routes and schemas, the model's
      metadata): it lives as long as the process, and each full collection walked it all again
      (~73,000 objects in a front end: 66-82 ms of event loop stopped per full collection, one every
      ~5 s at c=16 on the 2-core development host; 1-5 ms frozen).
    - Collect the youngest generation after YOUNG_COLLECTION_THRESHOLD net allocations, not 700. A
      request's objects die by reference counting, but its burst of short-lived ones (parsing,
      validation, rendering), on top of what the requests in flight hold, passes 700: at the default a front end ran ~1,800 young collections per 18,000 requests
      (~15 us a request); at 7,000, ~20, at start-up (measured at c=16 and c=64, same host).
    """
    gc.collect()  # garbage from start-up is freed, not frozen with the rest
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)
