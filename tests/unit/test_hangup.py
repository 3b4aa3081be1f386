"""A request's stages end at the deadline or when the client hangs up, and the work being stopped
always hears of it (service/routes/hangup.py): it is the work that frees what it took (arena slots,
queued decodes), so a stop it never sees would leak them."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.errors import DeadlineExceeded
from service.routes.hangup import by_deadline


async def _gated_work(gate: asyncio.Future, seen: list[str]) -> str:
    try:
        await gate
    except asyncio.CancelledError:
        seen.append("cancelled")  # where the real work frees its slots
        raise
    seen.append("finished")
    return "staged"


def test_a_cancel_in_the_loop_turn_the_work_finishes_still_reaches_the_work():
    """Python 3.11's asyncio.wait_for returned the result here and dropped the cancel: the caller then
    took the request as gone while the work's slots stayed taken."""

    async def main() -> None:
        gate = asyncio.get_running_loop().create_future()
        seen: list[str] = []
        task = asyncio.ensure_future(by_deadline(_gated_work(gate, seen), time.monotonic() + 30, "while testing"))
        for _ in range(5):
            await asyncio.sleep(0)
        gate.set_result(None)  # the work can finish in this turn...
        task.cancel()  # ...and the client hangs up in the same turn
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == ["cancelled"]

    asyncio.run(main())


def test_work_past_the_deadline_is_cancelled_and_the_caller_gets_a_504():
    async def main() -> None:
        seen: list[str] = []
        gate = asyncio.get_running_loop().create_future()
        with pytest.raises(DeadlineExceeded, match="while testing"):
            await by_deadline(_gated_work(gate, seen), time.monotonic() + 0.05, "while testing")
        assert seen == ["cancelled"]

    asyncio.run(main())
