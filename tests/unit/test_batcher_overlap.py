"""Where ``--max-delay-ms`` applies: the straggler wait of service.batcher.Batcher.

A batch being formed waits for more images only while another batch runs, and only where batches
overlap: a runner that prepares the next batch during the current one (``prepare_ahead``, as the
engine's runner does when it decodes JPEGs on the GPU). An idle backend never waits, and on the CPU
path (no prepare-ahead, one batch at a time) the setting has no effect. Proven with a small runner
that implements the BatchRunner protocol and holds its batches at a gate.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.batcher import Batcher
from service.metrics import Metrics

HOLD_S = 60  # the longest the gate holds a batch; past it the test has forgotten to open it
PROMPT_S = 5  # "at once" on 2 busy cores: far below every max_delay used here that must not elapse


class GatedRunner:
    """A BatchRunner whose payloads are ints and outputs echo them; ``run`` waits at ``gate``. A batch of
    negative payloads only (as a batch whose JPEGs the engine all declined) needs no backend: its
    outputs are the payloads, without ``run``."""

    name = "gated"
    max_batch_size = 8
    max_concurrency = 1

    def __init__(self, prepare_ahead: bool) -> None:
        self.prepare_ahead = prepare_ahead
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)
        self.prepared: list[tuple[float, list[int]]] = []  # (time.monotonic(), payloads) of each batch
        self.ran: list[list[int]] = []  # the batches run() was given

    def prepare(self, payloads: list[int]) -> list[int]:
        self.prepared.append((time.monotonic(), list(payloads)))
        return list(payloads)

    def outputs_without_backend(self, prepared: list[int]) -> list[int] | None:
        return prepared if all(value < 0 for value in prepared) else None

    def run(self, prepared: list[int]) -> list[int]:
        self.ran.append(prepared)
        self.started.release()
        if not self.gate.wait(HOLD_S):
            raise RuntimeError("the test never opened the gate")
        return prepared


def start(runner: GatedRunner, max_delay_ms: float, metrics: Metrics | None = None) -> Batcher:
    batcher = Batcher(runner, metrics or Metrics(), 8, max_delay_ms, queue_capacity=64, stall_after_s=HOLD_S)
    batcher.start()
    return batcher


def far() -> float:
    return time.monotonic() + HOLD_S


async def until(condition, what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        await asyncio.sleep(0.005)


async def first_batch_running(runner: GatedRunner, batcher: Batcher) -> list[asyncio.Future]:
    """Submit image 0 and return once its batch is inside ``run``, held at the closed gate."""
    futures = batcher.submit([0], far())
    assert await asyncio.to_thread(runner.started.acquire, True, 10), "the first batch never ran"
    return futures


def test_while_a_batch_runs_the_next_waits_up_to_max_delay_and_stragglers_join_it():
    async def main():
        runner = GatedRunner(prepare_ahead=True)
        batcher = start(runner, max_delay_ms=300)
        first = await first_batch_running(runner, batcher)
        submitted = time.monotonic()
        second = batcher.submit([1], far())
        await until(lambda: batcher.depth == 0, "the next batch to take image 1")
        await asyncio.sleep(0.05)
        third = batcher.submit([2], far())  # a straggler, 50 ms later: it joins the waiting batch
        await until(lambda: len(runner.prepared) == 2, "the next batch to be prepared")
        prepared_at, payloads = runner.prepared[1]
        assert payloads == [1, 2]
        assert not runner.gate.is_set()  # the first batch still runs: the wait ended by max_delay
        assert 0.29 <= prepared_at - submitted < PROMPT_S, prepared_at - submitted
        runner.gate.set()
        results = await asyncio.gather(*first, *second, *third)
        assert [r.output for r in results] == [0, 1, 2]
        assert [r.batch_size for r in results] == [1, 2, 2]
        await batcher.stop()

    asyncio.run(main())


def test_the_wait_ends_as_soon_as_the_backend_is_free():
    async def main():
        runner = GatedRunner(prepare_ahead=True)
        batcher = start(runner, max_delay_ms=60_000)
        first = await first_batch_running(runner, batcher)
        second = batcher.submit([1], far())
        await until(lambda: batcher.depth == 0, "the next batch to take image 1 and wait")
        opened = time.monotonic()
        runner.gate.set()
        (result,) = await asyncio.wait_for(asyncio.gather(*second), PROMPT_S)  # not 60 s
        assert result.output == 1 and result.batch_size == 1
        assert runner.prepared[1][0] >= opened  # it was not prepared before the backend was free
        await asyncio.gather(*first)
        await batcher.stop()

    asyncio.run(main())


def test_an_idle_backend_never_waits():
    async def main():
        runner = GatedRunner(prepare_ahead=True)
        runner.gate.set()
        batcher = start(runner, max_delay_ms=60_000)
        for value in range(3):  # one at a time, each to an idle backend
            (result,) = await asyncio.wait_for(asyncio.gather(*batcher.submit([value], far())), PROMPT_S)
            assert result.output == value and result.batch_size == 1
        assert [payloads for _, payloads in runner.prepared] == [[0], [1], [2]]
        await batcher.stop()

    asyncio.run(main())


def test_without_overlap_max_delay_has_no_effect():
    """The CPU path: images that arrive during a batch wait in the queue and all go in the next batch,
    formed only once the backend is free and sent at once, however long max_delay is."""

    async def main():
        runner = GatedRunner(prepare_ahead=False)
        batcher = start(runner, max_delay_ms=60_000)
        first = await first_batch_running(runner, batcher)
        rest = batcher.submit([1], far()) + batcher.submit([2], far())
        await asyncio.sleep(0.2)
        assert batcher.depth == 2 and len(runner.prepared) == 1  # queued, no batch formed while one runs
        runner.gate.set()
        results = await asyncio.wait_for(asyncio.gather(*rest), PROMPT_S)  # not 60 s
        assert [r.output for r in results] == [1, 2] and {r.batch_size for r in results} == {2}
        await asyncio.gather(*first)
        await batcher.stop()

    asyncio.run(main())


def batches_counted(metrics: Metrics) -> tuple[float, float, float]:
    """(batches in the batch-size histogram, in the inference-time one, images counted)"""
    sample = metrics.registry.get_sample_value
    return (
        sample("alexnet_batch_size_count") or 0,
        sample("alexnet_inference_duration_seconds_count") or 0,
        sample("alexnet_images_total") or 0,
    )


@pytest.mark.parametrize("prepare_ahead", [True, False])
def test_a_batch_with_nothing_for_the_backend_is_answered_without_running_and_not_counted(prepare_ahead):
    """Where batches overlap, it is answered while another batch still runs (not after it); on either
    path it is not counted as one of the backend's batches."""

    async def main():
        runner = GatedRunner(prepare_ahead)
        metrics = Metrics()
        batcher = start(runner, max_delay_ms=0, metrics=metrics)
        first = await first_batch_running(runner, batcher)
        if prepare_ahead:
            (declined,) = await asyncio.wait_for(asyncio.gather(*batcher.submit([-1], far())), PROMPT_S)
            assert not runner.gate.is_set() and not first[0].done()  # the first batch still runs
            runner.gate.set()
        else:  # one batch at a time: it forms once the first is done
            pending = batcher.submit([-1], far())
            runner.gate.set()
            (declined,) = await asyncio.wait_for(asyncio.gather(*pending), PROMPT_S)
        assert declined.output == -1 and declined.batch_size == 1
        (result,) = await asyncio.gather(*first)
        assert result.output == 0
        assert runner.ran == [[0]]
        assert batches_counted(metrics) == (1, 1, 1)
        await batcher.stop()

    asyncio.run(main())


@pytest.mark.parametrize("prepare_ahead", [True, False])
def test_preparing_and_running_a_batch_are_timed_apart(monkeypatch, prepare_ahead):
    """alexnet_batch_prepare_duration_seconds times the prepare stage, alexnet_inference_duration_seconds
    the run stage only (on the GPU path a prepared batch may wait for the one before it in between)."""
    now = [0.0]
    monkeypatch.setattr("service.batcher.stage_clock", lambda: now[0])

    class Timed(GatedRunner):
        def prepare(self, payloads):
            now[0] += 5.0
            return super().prepare(payloads)

        def run(self, prepared):
            now[0] += 2.0
            return super().run(prepared)

    async def main():
        runner = Timed(prepare_ahead)
        runner.gate.set()
        metrics = Metrics()
        batcher = start(runner, max_delay_ms=0, metrics=metrics)
        await asyncio.wait_for(asyncio.gather(*batcher.submit([0], far())), PROMPT_S)
        await batcher.stop()
        sample = metrics.registry.get_sample_value
        assert sample("alexnet_batch_prepare_duration_seconds_sum") == 5.0
        assert sample("alexnet_inference_duration_seconds_sum") == 2.0

    asyncio.run(main())
