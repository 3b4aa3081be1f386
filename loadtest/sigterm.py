"""SIGTERM (a ``timeout``, a ``kill``) as Ctrl-C for an asyncio run: it cancels the running task
through the event loop, so the code that catches the cancellation still writes what finished.

A Python handler raising KeyboardInterrupt instead raises it wherever the main thread is, and Python
swallows it when that is a weakref callback or a ``__del__`` ("Exception ignored in ..."): the run then
went on to its end.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Sigterm:
    came: bool = False


@contextmanager
def sigterm_cancels_this_task(seen: Sigterm | None = None) -> Iterator[None]:
    """Within the block, inside a task on the running loop: SIGTERM cancels that task (and sets
    ``seen.came``); after it, SIGTERM does what it did before."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None

    def cancel() -> None:
        if seen is not None:
            seen.came = True
        task.cancel()

    previous = signal.getsignal(signal.SIGTERM)
    loop.add_signal_handler(signal.SIGTERM, cancel)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGTERM)  # which sets SIG_DFL: put the previous handler back
        signal.signal(signal.SIGTERM, previous)
