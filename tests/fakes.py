"""Test doubles that wrap a real backend so tests can pause, fail or count its calls."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from service.backends.base import Backend


class GatedBackend(Backend):
    """Delegates to ``inner``; ``gate`` pauses inference, ``fail_next`` injects faults, ``calls`` counts rows."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name, self.device, self.precision = inner.name, inner.device, inner.precision
        self.max_batch_size, self.batch_sizes = inner.max_batch_size, inner.batch_sizes
        self.max_concurrency = inner.max_concurrency
        self.gate = threading.Event()
        self.gate.set()
        self.warmup_gate = threading.Event()
        self.warmup_gate.set()
        self.started = threading.Semaphore(0)
        self.calls: list[int] = []
        self.fail_next = 0
        self._warming = False

    def warmup(self, input_size: int) -> None:
        self.warmup_gate.wait(60)
        self._warming = True
        try:
            self.inner.warmup(input_size)
        finally:
            self._warming = False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self._warming:
            return self.inner.infer(batch)
        self.calls.append(batch.shape[0])
        self.started.release()
        self.gate.wait(60)
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("injected backend fault")
        return self.inner.infer(batch)

    def wait_started(self, timeout_s: float = 30) -> None:
        assert self.started.acquire(timeout=timeout_s), "the backend was never called"


def install_gated_backend(monkeypatch) -> dict:
    """Make the next app's backend a GatedBackend; the returned dict gets it under "backend"."""
    import service.app
    from service.backends import select_backend

    holder: dict = {}
    warmup_gate = threading.Event()
    warmup_gate.set()
    holder["warmup_gate"] = warmup_gate

    def gated_select(settings):
        selection = select_backend(settings)
        gated = GatedBackend(selection.backend)
        gated.warmup_gate = warmup_gate
        selection.backend = gated
        holder["backend"] = gated
        return selection

    monkeypatch.setattr(service.app, "select_backend", gated_select)
    return holder


def occupy(
    pool: ThreadPoolExecutor, send: Callable[[], object], backend: GatedBackend, batcher, queued: int
) -> tuple[Future, list[Future]]:
    """One request running (held at the closed gate) and ``queued`` more waiting in the queue behind it."""
    running = pool.submit(send)
    backend.wait_started()
    waiting = [pool.submit(send) for _ in range(queued)]
    while batcher.depth < queued:
        time.sleep(0.01)
    return running, waiting
