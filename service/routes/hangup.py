"""Inference that stops caring when the client hangs up, shared by every inference route."""

from __future__ import annotations

import asyncio

from fastapi import Request
from starlette.requests import ClientDisconnect

from service.pipeline import Pipeline, Staged
from service.wire import ImageResult


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client hangs up (after the body has been read, receive() waits for that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def infer_while_connected(
    request: Request, pipeline: Pipeline, staged: list[Staged], deadline: float, top_k: int, want_logits: bool = False
) -> list[ImageResult]:
    """Submit to the engine and wait, cancelled if the client leaves first, so its images take no batch slot.

    Raises ClientDisconnect then (the app counts it and answers nobody).
    """
    request_id, future = pipeline.submit(staged, deadline, top_k, want_logits)
    inference = asyncio.ensure_future(pipeline.wait(request_id, future, deadline))
    hangup = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({inference, hangup}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hangup.cancel()
        if not inference.done():
            pipeline.cancel(request_id)  # even if the waiting task never got to run
    if not inference.done():
        inference.cancel()
        await asyncio.gather(inference, return_exceptions=True)
        raise ClientDisconnect()
    return inference.result()
