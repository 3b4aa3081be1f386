"""service.engine_load: what the engine builds before it says ready, and what it gives back on failure;
and that the engine closes its backend exactly once however it stops."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

import service.engine_load
from export.onnx_metadata import ModelMetadata
from service.backends import Selection
from service.engine import EngineServer
from service.engine_load import load_model
from service.errors import BackendUnavailable, NotReady
from service.settings import Settings
from tests.fakes import EchoBackend, GatedBackend


class ClosingBackend(GatedBackend):
    """An EchoBackend behind the shared warm-up gate (``warmup_gate``) that says when its warm-up
    begins, can fail it, and counts its closes."""

    def __init__(self) -> None:
        super().__init__(EchoBackend())
        self.warming = threading.Event()
        self.fail_warmup = False
        self.closed = 0

    def warmup(self, input_size: int, stop: threading.Event | None = None) -> None:
        self.warming.set()
        super().warmup(input_size, stop)  # waits at warmup_gate
        if self.fail_warmup:
            raise RuntimeError("injected warm-up fault")

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def backend(monkeypatch) -> ClosingBackend:
    made = ClosingBackend()
    meta = ModelMetadata("torchvision", [f"class {i}" for i in range(4)], 32, 36, "test", "c" * 64)
    monkeypatch.setattr(service.engine_load, "select_backend", lambda settings: Selection(made, meta, "test"))
    return made


def test_a_loaded_model_carries_its_facts_for_the_front_ends(backend):
    loaded = load_model(Settings(warmup=True))
    assert loaded.selection.backend is backend and backend.closed == 0
    model = loaded.model
    assert (model.input_size, model.resize_size, model.labels[3]) == (32, 36, "class 3")
    assert model.decode == "cpu" and model.decode_reason.startswith("auto: on the CPU in the front ends")
    assert model.backend == backend.describe()


def test_a_failing_warm_up_closes_the_backend_before_the_error_goes_up(backend):
    backend.fail_warmup = True
    with pytest.raises(RuntimeError, match="injected warm-up fault"):
        load_model(Settings(warmup=True))
    assert backend.closed == 1


def test_gpu_decoding_refused_on_a_cpu_backend_closes_it_too(backend):
    with pytest.raises(NotReady, match="decode=gpu was asked for"):
        load_model(Settings(decode="gpu"))
    assert backend.closed == 1


def serve_until(backend: ClosingBackend, stop_when, max_batch_size: int = 8, when_loaded=None) -> EngineServer:
    """Run an engine, set its stop once ``stop_when(engine)`` (awaited) returns, and let asyncio.run end
    as the engine process does (waiting for the loading thread)."""
    settings = Settings(warmup=True, max_batch_size=max_batch_size)
    engine = EngineServer(settings, f"alexnet-test-close-{os.getpid()}-{id(backend)}", when_loaded=when_loaded)

    async def main() -> None:
        stop = asyncio.Event()
        serving = asyncio.create_task(engine.serve(stop))
        await stop_when(engine)
        stop.set()
        await serving
        backend.warmup_gate.set()  # a load still running finishes after serve() returned

    asyncio.run(main())
    return engine


def test_the_engine_closes_its_backend_once_when_it_stops(backend):
    async def ready(engine: EngineServer) -> None:
        while not engine.ready:
            await asyncio.sleep(0.01)

    serve_until(backend, ready)
    assert backend.closed == 1


def test_the_engine_calls_when_loaded_once_after_the_warm_up_and_before_it_is_ready(backend):
    seen: list[tuple[bool, bool]] = []  # (warm-up done, ready) at each call
    engine_box: list[EngineServer] = []

    def when_loaded() -> None:
        seen.append((backend.warming.is_set() and backend.inner.calls != [], engine_box[0].ready))

    async def ready(engine: EngineServer) -> None:
        engine_box.append(engine)
        while not engine.ready:
            await asyncio.sleep(0.01)

    serve_until(backend, ready, when_loaded=when_loaded)
    assert seen == [(True, False)]


def test_an_engine_stopped_while_it_warms_up_closes_the_backend_once_the_load_ends(backend):
    backend.warmup_gate.clear()

    async def warming(engine: EngineServer) -> None:
        assert await asyncio.to_thread(backend.warming.wait, 30)

    engine = serve_until(backend, warming)
    assert backend.closed == 1 and not engine.ready
    assert backend.inner.calls == []  # the warm-up ran none of its batches once the gate let it go
    assert engine.startup_error is None  # a stop, not a failure to load: the process exits 0


def test_a_stop_while_the_backend_is_built_ends_the_load_before_its_warm_up(backend, monkeypatch):
    building, built = threading.Event(), threading.Event()
    meta = ModelMetadata("torchvision", [f"class {i}" for i in range(4)], 32, 36, "test", "c" * 64)

    def slow_select(settings):
        building.set()
        assert built.wait(30), "the test never let the backend build end"
        return Selection(backend, meta, "test")

    monkeypatch.setattr(service.engine_load, "select_backend", slow_select)
    engine = EngineServer(Settings(warmup=True), f"alexnet-test-stop-{os.getpid()}-{id(backend)}")

    async def main() -> None:
        stop = asyncio.Event()
        serving = asyncio.create_task(engine.serve(stop))
        assert await asyncio.to_thread(building.wait, 30)
        stop.set()  # SIGTERM while the backend is being built
        await serving
        built.set()  # the build ends after the engine stopped serving

    asyncio.run(main())  # as the engine process ends: waits for the loading thread
    assert not backend.warming.is_set() and backend.inner.calls == []  # no warm-up at all
    assert backend.closed == 1 and engine.startup_error is None and not engine.ready


def test_the_warm_up_stops_between_its_batches():
    stop = threading.Event()

    class StopsAfterOne(EchoBackend):
        def infer(self, batch):
            stop.set()  # as if SIGTERM came during the first batch
            return super().infer(batch)

    backend = StopsAfterOne(max_batch_size=8)
    backend.warmup(4, stop)
    assert backend.calls == [1]
    backend.warmup(4)  # no stop given: every shape
    assert backend.calls == [1, 1, 2, 4, 8]


def test_a_max_batch_size_over_the_backends_is_a_startup_error_not_a_silent_hang(backend):
    reasons = []

    async def failed(engine: EngineServer) -> None:
        while engine.startup_error is None:
            await asyncio.sleep(0.01)
        reasons.append(engine.status().reason)  # what the front ends hear before the engine exits
        assert backend.closed == 1  # at once: the engine stops, and takes no GPU memory meanwhile

    engine = serve_until(backend, failed, max_batch_size=backend.max_batch_size + 1)
    assert engine.startup_error == "ValueError: max_batch_size 9 exceeds the backend's 8"
    assert reasons == ["the model failed to load: ValueError: max_batch_size 9 exceeds the backend's 8"]
    assert backend.closed == 1


@pytest.mark.parametrize("failure", ["backend unavailable", "load raises", "warm-up raises"])
def test_an_engine_whose_model_fails_to_load_stops_by_itself(backend, monkeypatch, failure):
    """Nobody sets its stop: serve() returns on its own (the process then exits 3, see
    test_processes.py), where it used to stay up not ready until SIGTERM."""
    if failure == "backend unavailable":

        def unavailable(settings):
            raise BackendUnavailable("TensorRT needs a CUDA GPU")

        monkeypatch.setattr(service.engine_load, "select_backend", unavailable)
    elif failure == "load raises":
        monkeypatch.setattr(service.engine_load, "choose_decode", lambda *a: 1 / 0)
    else:
        backend.fail_warmup = True
    engine = EngineServer(Settings(warmup=True), f"alexnet-test-fail-{os.getpid()}-{id(backend)}")

    async def main() -> None:
        never = asyncio.Event()
        await asyncio.wait_for(engine.serve(never), 60)  # a bound, not a measurement: it never came back

    asyncio.run(main())
    assert engine.startup_error is not None and not engine.ready
    assert engine.status().reason.startswith("the model failed to load: ")
    assert backend.closed == (0 if failure == "backend unavailable" else 1)
