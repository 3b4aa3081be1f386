"""The dynamic batcher: the one place where single images become backend batches.

Policy (the only one in the service):
- A batch starts with the oldest waiting image and takes every image already waiting, up to
  ``max_batch_size``.
- When the backend is idle the batch goes at once: batching never adds latency to a quiet server.
- While another batch keeps the backend busy, a batch that is being formed may wait for more images,
  but never more than ``max_delay_ms`` after its oldest image arrived, and not at all once the
  backend is free again. That happens where batches overlap: runners that prepare the next batch
  while the current one runs (``prepare_ahead``: JPEG decoding on the GPU) or backends that run
  several at once (``max_concurrency`` > 1).
- Otherwise images that arrive during a batch wait for it in the queue and all go in the next batch,
  so preprocessing (on the decode threads) overlaps inference.
- Images whose request has gone (client disconnected, deadline passed) are dropped before they
  take a batch slot. The queue is bounded in images: a request that does not fit is refused whole.
  Only images still wanted count, towards that bound and the queue-depth gauge: one whose request
  has gone leaves the count at once, though it stays in the deque until the loop reaches it.
- Batches are padded up to the next size the backend supports, and the padding is sliced off.

Each batch goes through two stages of a *runner*: ``prepare`` (assemble the backend's input: stack,
normalise, decode) on one thread and ``run`` (inference and what follows it) on the inference
threads. A prepared batch with nothing left for the backend (``outputs_without_backend``: the engine
declined every image) is not counted as one of its batches and, where batches overlap
(``prepare_ahead``), is answered at once instead of after the batch running meanwhile. A plain
Backend is wrapped in ``BackendRunner``: float32 tensors in, logits rows out.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from service.backends.base import Backend, bucket_for
from service.errors import BackendFailure, DeadlineExceeded, NotReady, QueueFull
from service.metrics import Metrics

log = logging.getLogger(__name__)
FAILURES_BEFORE_UNHEALTHY = 3
stage_clock = time.perf_counter  # what a batch's prepare and run stages are timed by (a test's clock in tests)


@dataclass
class InferenceResult:
    output: Any  # the runner's answer for this image: for BackendRunner, its (num_classes,) logits
    queue_ms: float
    inference_ms: float
    batch_size: int

    @property
    def logits(self) -> np.ndarray:
        return self.output


class BatchRunner(Protocol):
    """Two stages per batch; ``prepare`` of the next batch may overlap ``run`` of this one."""

    name: str
    max_batch_size: int
    max_concurrency: int
    prepare_ahead: bool  # True where prepare is costly enough to run during the previous batch

    def prepare(self, payloads: list[Any]) -> Any: ...

    def outputs_without_backend(self, prepared: Any) -> list[Any] | None: ...  # see BackendRunner

    def run(self, prepared: Any) -> list[Any]: ...  # one output per payload


class BackendRunner:
    """A Backend as a runner: payloads are (3, H, W) float32 tensors, outputs their logits rows."""

    prepare_ahead = False

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.name = backend.name
        self.max_batch_size = backend.max_batch_size
        self.max_concurrency = backend.max_concurrency

    def prepare(self, payloads: list[np.ndarray]) -> tuple[np.ndarray, int]:
        stacked = np.stack(payloads)  # (n, 3, H, W)
        n = len(payloads)
        padded = bucket_for(n, self.backend.batch_sizes)
        if padded > n:
            stacked = np.concatenate([stacked, np.zeros((padded - n, *stacked.shape[1:]), stacked.dtype)])
        return stacked, n

    def outputs_without_backend(self, prepared: tuple[np.ndarray, int]) -> None:
        """The outputs of a prepared batch with nothing for the backend to do (the engine's runner: every
        image went back to its front end), or None: it has to run. A plain backend's batch always runs."""
        return None

    def run(self, prepared: tuple[np.ndarray, int]) -> list[np.ndarray]:
        batch, n = prepared
        logits = self.backend.infer(batch)
        if logits.shape[0] != batch.shape[0]:
            raise RuntimeError(f"backend returned {logits.shape[0]} rows for a batch of {batch.shape[0]}")
        return list(logits[:n])


@dataclass
class _Item:
    payload: Any  # what the runner prepares: a (3, H, W) float32 tensor for BackendRunner
    future: asyncio.Future
    enqueued: float  # time.monotonic()
    deadline: float  # time.monotonic()
    waiting: bool = True  # counted in Batcher.depth: in the queue and still wanted


@dataclass
class _Stats:
    batches: int = 0
    consecutive_failures: int = 0
    running_since: dict[int, float] = field(default_factory=dict)  # batch id -> start time


class Batcher:
    def __init__(
        self,
        runner: BatchRunner | Backend,
        metrics: Metrics,
        max_batch_size: int,
        max_delay_ms: float,
        queue_capacity: int,
        stall_after_s: float,
    ) -> None:
        if isinstance(runner, Backend):
            runner = BackendRunner(runner)
        if max_batch_size > runner.max_batch_size:
            raise ValueError(f"max_batch_size {max_batch_size} exceeds the backend's {runner.max_batch_size}")
        self.runner = runner
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1000
        self.queue_capacity = queue_capacity
        self.stall_after_s = stall_after_s
        self._metrics = metrics
        self._queue: deque[_Item] = deque()  # may hold items already done (cancelled); see depth
        self._waiting = 0  # the items of _queue still wanted
        self._arrived = asyncio.Event()
        # Batches in flight: one more than run at once where the next is prepared during the current.
        self._slots = asyncio.Semaphore(runner.max_concurrency + (1 if runner.prepare_ahead else 0))
        self._running = asyncio.Semaphore(runner.max_concurrency)
        self._preparer = ThreadPoolExecutor(1, thread_name_prefix="prepare")
        self._executor = ThreadPoolExecutor(runner.max_concurrency, thread_name_prefix="infer")
        self._stats = _Stats()
        # Read when scraped, not set per image: two lock-taking sets per image were ~8% of the engine
        # loop's time with an instant backend (loadtest.engine_wire, py-spy).
        metrics.queue_depth.set_function(lambda: self._waiting)
        self._tasks: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._accepting = True
        self._loop = asyncio.get_running_loop()  # once: on Python 3.11 each get_running_loop() is a getpid()
        self._loop_task = self._loop.create_task(self._run(), name="batcher")

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Refuse new work, finish what is queued and running (up to the timeout), then stop."""
        self._accepting = False
        deadline = time.monotonic() + drain_timeout_s
        while (self._waiting or self._tasks) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._loop_task:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for task in list(self._tasks):  # batches still running past the drain timeout (a hung backend)
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for item in self._queue:
            self._stop_waiting(item)
            if not item.future.done():
                item.future.set_exception(NotReady("the server is shutting down; retry elsewhere"))
        self._queue.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._preparer.shutdown(wait=False, cancel_futures=True)

    # -- health ----------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Images waiting that are still wanted (not those whose request was cancelled or expired)."""
        return self._waiting

    @property
    def busy(self) -> bool:
        """A batch is being prepared or run, or images wait: a new image will not start at once."""
        return bool(self._waiting or self._stats.running_since)

    @property
    def healthy(self) -> bool:
        """False after repeated backend failures, or while a batch has run longer than ``stall_after_s``."""
        now = time.monotonic()
        stalled = any(now - start > self.stall_after_s for start in self._stats.running_since.values())
        return self._accepting and not stalled and self._stats.consecutive_failures < FAILURES_BEFORE_UNHEALTHY

    # -- submission ------------------------------------------------------------------------------
    def submit(self, payloads: list[Any], deadline: float) -> list[asyncio.Future]:
        """Enqueue the images of one request, all or none; each future yields an InferenceResult."""
        if not self._accepting:
            raise NotReady("the server is not accepting work (starting or shutting down)")
        if self._waiting + len(payloads) > self.queue_capacity:
            raise QueueFull(f"queue full ({self._waiting}/{self.queue_capacity} images waiting); retry after a moment")
        loop = self._loop
        assert loop is not None  # accepting: started
        now = time.monotonic()
        futures = []
        for payload in payloads:
            item = _Item(payload, loop.create_future(), now, deadline)
            item.future.add_done_callback(functools.partial(self._left_queue, item))
            self._queue.append(item)
            futures.append(item.future)
        self._waiting += len(payloads)
        if len(self._queue) > 2 * self.queue_capacity:  # cancelled items pile up behind a slow batch
            self._queue = deque(item for item in self._queue if item.waiting)
        self._arrived.set()
        return futures

    # -- the loop --------------------------------------------------------------------------------
    def _stop_waiting(self, item: _Item) -> None:
        """``item`` no longer counts as waiting: taken into a batch, or its future done (cancelled)."""
        if item.waiting:
            item.waiting = False
            self._waiting -= 1

    def _left_queue(self, item: _Item, _future: asyncio.Future) -> None:
        self._stop_waiting(item)

    def _pop_live(self) -> _Item | None:
        """The oldest item still wanted, dropping those whose request has gone or expired."""
        now = time.monotonic()
        while self._queue:
            item = self._queue.popleft()
            self._stop_waiting(item)
            if item.future.done():  # cancelled: the client went away or its deadline fired
                continue
            if now >= item.deadline:
                item.future.set_exception(DeadlineExceeded("the request's deadline passed while it was queued"))
                continue
            return item
        return None

    def _fill(self, batch: list[_Item]) -> None:
        while len(batch) < self.max_batch_size and (item := self._pop_live()) is not None:
            batch.append(item)

    async def _wait_for_arrival(self, timeout: float | None) -> bool:
        self._arrived.clear()
        if self._queue:
            return True
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _run(self) -> None:
        while True:
            if not self._queue:
                await self._wait_for_arrival(None)
                continue
            # Take the slot first, then the images: whatever expired or left meanwhile is dropped.
            await self._slots.acquire()
            batch: list[_Item] = []
            self._fill(batch)
            # Wait for stragglers only while another batch keeps the backend busy (a finishing batch
            # sets _arrived, so the wait ends as soon as the backend is free).
            while batch and len(batch) < self.max_batch_size and self._backend_busy:
                remaining = batch[0].enqueued + self.max_delay_s - time.monotonic()
                if remaining <= 0 or not await self._wait_for_arrival(remaining):
                    break
                self._fill(batch)
            batch = [item for item in batch if not item.future.done()]
            if not batch:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._dispatch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _prepare_and_run(self, payloads: list[Any]) -> tuple[list[Any], float, float | None]:
        """The batch's outputs, the seconds it took to prepare and to run (None: the backend did not)."""
        prepared, prepare_s = _timed(self.runner.prepare, payloads)
        outputs = self.runner.outputs_without_backend(prepared)
        if outputs is not None:
            return outputs, prepare_s, None
        outputs, run_s = _timed(self.runner.run, prepared)
        return outputs, prepare_s, run_s

    @property
    def _backend_busy(self) -> bool:
        return self._running.locked() or (not self.runner.prepare_ahead and bool(self._stats.running_since))

    async def _dispatch(self, batch: list[_Item]) -> None:
        batch_id = self._stats.batches
        self._stats.batches += 1
        started = time.monotonic()
        self._stats.running_since[batch_id] = started
        n = len(batch)
        loop = asyncio.get_running_loop()
        try:
            for item in batch:
                self._metrics.queue_wait.observe(started - item.enqueued)
            payloads = [i.payload for i in batch]
            run_s: float | None = None  # stays None for a batch the backend did not run
            if self.runner.prepare_ahead:  # prepare on its own thread, so it overlaps the running batch
                prepared, prepare_s = await loop.run_in_executor(self._preparer, _timed, self.runner.prepare, payloads)
                answered = self.runner.outputs_without_backend(prepared)
                if answered is None:
                    async with self._running:
                        outputs, run_s = await loop.run_in_executor(self._executor, _timed, self.runner.run, prepared)
                else:  # now, not after the batch that may be running meanwhile
                    outputs = answered
            else:  # one hop to the inference thread for both stages: less latency per batch
                async with self._running:
                    outputs, prepare_s, run_s = await loop.run_in_executor(
                        self._executor, self._prepare_and_run, payloads
                    )
            if len(outputs) != n:
                raise RuntimeError(f"runner returned {len(outputs)} outputs for a batch of {n}")
            elapsed = time.monotonic() - started
            self._metrics.prepare_time.observe(prepare_s)
            if run_s is not None:  # one the backend did not run is not counted among its batches
                self._metrics.batch_size.observe(n)
                self._metrics.inference_time.observe(run_s)
                self._metrics.images.inc(n)
                self._stats.consecutive_failures = 0
            for item, output in zip(batch, outputs, strict=True):
                if item.future.done():
                    continue
                item.future.set_result(InferenceResult(output, (started - item.enqueued) * 1000, elapsed * 1000, n))
        except Exception as exc:
            self._metrics.batch_size.observe(n)
            self._stats.consecutive_failures += 1
            self._metrics.backend_failures.inc()
            log.exception("backend %s failed on a batch of %d", self.runner.name, n)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(BackendFailure(f"inference failed ({type(exc).__name__}); retry"))
        finally:
            del self._stats.running_since[batch_id]
            self._slots.release()
            self._arrived.set()  # a waiting batch re-checks whether the backend is free


def _timed(function: Callable[[Any], Any], argument: Any) -> tuple[Any, float]:
    """``function(argument)`` and the seconds it took (on the thread that calls it)."""
    start = stage_clock()
    result = function(argument)
    return result, stage_clock() - start
