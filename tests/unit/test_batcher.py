"""The dynamic batcher's policy, proven with a controllable fake backend (tests/fakes.py's EchoBackend)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import numpy as np
import pytest

from service.batcher import FAILURES_BEFORE_UNHEALTHY, Batcher
from service.errors import BackendFailure, DeadlineExceeded, NotReady, QueueFull
from service.metrics import Metrics
from tests.fakes import EchoBackend

SHAPE = (3, 4, 4)


def tensor(value: float) -> np.ndarray:
    return np.full(SHAPE, value, dtype=np.float32)


def make(backend, **kwargs) -> Batcher:
    options = dict(max_batch_size=backend.max_batch_size, max_delay_ms=0.0, queue_capacity=64, stall_after_s=30)
    options.update(kwargs)
    batcher = Batcher(backend, Metrics(), **options)
    batcher.start()
    return batcher


def far() -> float:
    return time.monotonic() + 30


async def wait_started(backend: EchoBackend) -> None:
    await asyncio.to_thread(backend.wait_started, 10)


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    """Yield to the event loop until ``condition`` holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        await asyncio.sleep(0.005)


async def held(
    backend: EchoBackend | None = None, values: Iterable[float] = (0,), **options
) -> tuple[EchoBackend, Batcher, list[asyncio.Future]]:
    """A started batcher whose backend holds a first request (one image per value) at its closed gate."""
    backend = backend or EchoBackend()
    backend.gate.clear()
    batcher = make(backend, **options)
    running = batcher.submit([tensor(v) for v in values], far())
    await wait_started(backend)
    return backend, batcher, running


def run(coro):
    return asyncio.run(coro)


def test_an_idle_backend_gets_a_single_request_at_once_even_with_a_long_max_delay():
    async def main():
        backend = EchoBackend()
        batcher = make(backend, max_delay_ms=60_000)
        (future,) = batcher.submit([tensor(7)], far())
        result = await asyncio.wait_for(future, timeout=5)  # would take 60 s if it waited to fill
        assert result.batch_size == 1 and result.logits.tolist() == [7, 7]
        await batcher.stop()

    run(main())


def test_requests_arriving_during_a_batch_go_together_in_the_next_one():
    async def main():
        backend, batcher, first = await held()
        later = [batcher.submit([tensor(v)], far())[0] for v in (1, 2, 3)]
        backend.gate.set()
        results = await asyncio.gather(*first, *later)
        assert backend.calls == [1, 3]
        assert [r.batch_size for r in results] == [1, 3, 3, 3]
        assert [r.logits[0] for r in results] == [0, 1, 2, 3]  # each answer is its own
        await batcher.stop()

    run(main())


def test_batches_never_exceed_max_batch_size():
    async def main():
        backend, batcher, futures = await held(values=range(5), max_batch_size=2)
        backend.gate.set()
        results = await asyncio.gather(*futures)
        assert backend.calls == [2, 2, 1]
        assert [r.logits[0] for r in results] == [0, 1, 2, 3, 4]
        await batcher.stop()

    run(main())


def test_batches_are_padded_to_a_supported_size_and_the_padding_dropped():
    async def main():
        backend, batcher, head = await held(EchoBackend(batch_sizes=(1, 4, 8)))
        futures = batcher.submit([tensor(v) for v in (1, 2, 3)], far())
        backend.gate.set()
        results = await asyncio.gather(*head, *futures)
        assert backend.calls == [1, 4]
        assert [r.logits[0] for r in results] == [0, 1, 2, 3] and results[1].batch_size == 3
        await batcher.stop()

    run(main())


def test_a_full_queue_refuses_the_whole_request():
    async def main():
        backend, batcher, running = await held(queue_capacity=3)
        queued = batcher.submit([tensor(1), tensor(2)], far())
        with pytest.raises(QueueFull):
            batcher.submit([tensor(3), tensor(4)], far())  # only one slot left: refused whole
        assert batcher.depth == 2
        extra = batcher.submit([tensor(5)], far())  # exactly fits
        backend.gate.set()
        await asyncio.gather(*running, *queued, *extra)
        await batcher.stop()

    run(main())


def test_cancelled_images_free_their_queue_places_at_once():
    """A request that gave up (client gone, deadline) must not keep others out while a batch runs."""

    async def main():
        backend, batcher, running = await held(queue_capacity=3)
        gone = batcher.submit([tensor(1), tensor(2), tensor(3)], far())
        for future in gone:
            future.cancel()
        await until(lambda: batcher.depth == 0, "the cancelled images to leave the count")
        assert batcher._metrics.registry.get_sample_value("alexnet_queue_depth") == 0
        kept = batcher.submit([tensor(4), tensor(5), tensor(6)], far())  # the whole capacity again
        with pytest.raises(QueueFull):
            batcher.submit([tensor(7)], far())
        assert batcher._metrics.registry.get_sample_value("alexnet_queue_depth") == 3  # the gauge reads the count
        backend.gate.set()
        assert [(await f).logits[0] for f in kept] == [4, 5, 6]
        await asyncio.gather(*running)
        assert batcher.depth == 0
        await batcher.stop()

    run(main())


def test_expired_and_cancelled_requests_take_no_batch_slot():
    async def main():
        backend, batcher, running = await held()
        (expired,) = batcher.submit([tensor(1)], time.monotonic() - 1)  # expires while it waits in the queue
        (cancelled,) = batcher.submit([tensor(2)], far())
        (kept,) = batcher.submit([tensor(3)], far())
        cancelled.cancel()
        backend.gate.set()
        await asyncio.gather(*running)
        assert (await kept).logits[0] == 3
        with pytest.raises(DeadlineExceeded):
            await expired
        assert backend.calls == [1, 1]
        await batcher.stop()

    run(main())


def test_a_failing_batch_fails_only_its_own_requests_and_health_follows():
    async def main():
        backend = EchoBackend()
        batcher = make(backend)
        backend.fail_next = 1
        with pytest.raises(BackendFailure):
            await batcher.submit([tensor(1)], far())[0]
        assert batcher.healthy  # one failure is not yet unhealthy
        assert (await batcher.submit([tensor(2)], far())[0]).logits[0] == 2
        backend.fail_next = FAILURES_BEFORE_UNHEALTHY
        for _ in range(FAILURES_BEFORE_UNHEALTHY):
            with pytest.raises(BackendFailure):
                await batcher.submit([tensor(3)], far())[0]
        assert not batcher.healthy
        assert (await batcher.submit([tensor(4)], far())[0]).logits[0] == 4
        assert batcher.healthy  # recovers on the next success
        await batcher.stop()

    run(main())


def test_a_hung_backend_makes_the_batcher_unhealthy_until_it_returns():
    async def main():
        backend, batcher, futures = await held(stall_after_s=0.05)
        await until(lambda: not batcher.healthy, "the batch to count as stalled (0.05 s)")
        backend.gate.set()
        await asyncio.gather(*futures)
        assert batcher.healthy
        await batcher.stop()

    run(main())


def test_with_two_slots_a_second_batch_waits_up_to_max_delay_for_more():
    async def main():
        backend, batcher, first = await held(EchoBackend(max_concurrency=2), max_delay_ms=2_000)
        second = batcher.submit([tensor(1)], far())
        # The second batch has taken its image and waits for more (max_delay is 2 s): the third joins it.
        await until(lambda: batcher.depth == 0, "the second batch to take its image")
        third = batcher.submit([tensor(2)], far())
        await wait_started(backend)
        backend.gate.set()
        results = await asyncio.gather(*first, *second, *third)
        assert backend.calls == [1, 2]
        assert [r.batch_size for r in results] == [1, 2, 2]
        await batcher.stop()

    run(main())


def test_stop_finishes_queued_work_then_refuses_new_work():
    async def main():
        backend, batcher, futures = await held(values=range(3))
        stopping = asyncio.create_task(batcher.stop())
        await asyncio.sleep(0)  # one turn of the loop: stop() refuses new work before its first await
        with pytest.raises(NotReady):
            batcher.submit([tensor(9)], far())
        backend.gate.set()
        await stopping
        assert [(await f).logits[0] for f in futures] == [0, 1, 2]

    run(main())


def test_max_batch_size_above_the_backend_limit_is_refused():
    with pytest.raises(ValueError, match="exceeds"):
        Batcher(EchoBackend(max_batch_size=4), Metrics(), 8, 0.0, 16, 30)
