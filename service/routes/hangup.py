"""A request's lifetime, shared by every inference route: each stage (receiving the body, decoding,
inference) ends at the request's deadline, and the decoding and inference stop when the client hangs up,
so that a client that has gone costs no decode threads and its images take no batch slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import Request
from starlette.requests import ClientDisconnect

from service.errors import DeadlineExceeded
from service.pipeline import Pipeline, Staged
from service.wire import ImageResult

T = TypeVar("T")


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client hangs up (after the body has been read, receive() waits for that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def by_deadline(work: Awaitable[T], deadline: float, during: str) -> T:
    """``work``'s result, or DeadlineExceeded (504) once ``deadline`` (time.monotonic()) passes, ``work``
    then cancelled: a client that sends its body slowly, or images that take long to decode.

    asyncio.timeout, not wait_for: Python 3.11's wait_for runs ``work`` in a task of its own, and when
    that task finishes in the same loop turn as a cancel from ``while_connected`` it returns the
    result and drops the cancel: decoded images would then stay in the arena with nobody to submit or
    free them. Here the cancel reaches ``work`` itself, which frees what it took."""
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            return await work
    except TimeoutError:
        raise DeadlineExceeded(f"the request's deadline passed {during}; retry later") from None


async def while_connected(request: Request, work: Awaitable[T], on_hangup: Callable[[], None] | None = None) -> T:
    """``work``'s result; if the client hangs up first, ``on_hangup()``, ``work`` cancelled and
    ClientDisconnect raised (the app counts it and answers nobody). Only once the body has been read."""
    task = asyncio.ensure_future(work)
    hangup = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, hangup}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hangup.cancel()
        gone = not task.done()
        if gone:  # the client left, or this request's own task is being cancelled
            if on_hangup is not None:
                on_hangup()  # even if the task never got to run
            task.cancel()
    if gone:
        await asyncio.gather(task, return_exceptions=True)
        raise ClientDisconnect()
    return task.result()


async def prepare_while_connected(
    request: Request, pipeline: Pipeline, images: list[bytes], deadline: float
) -> list[Staged]:
    """Decode into the arena, stopped by a hang-up or the deadline (images not yet decoded are dropped)."""
    return await while_connected(
        request, by_deadline(pipeline.prepare(images), deadline, "while its images were decoded")
    )


async def infer_while_connected(
    request: Request, pipeline: Pipeline, staged: list[Staged], deadline: float, top_k: int, want_logits: bool = False
) -> list[ImageResult]:
    """Submit to the engine and wait; cancelled if the client leaves first, so its images take no batch slot."""
    submitted = pipeline.submit(staged, deadline, top_k, want_logits)
    return await while_connected(request, pipeline.wait(submitted), on_hangup=lambda: pipeline.cancel(submitted))
