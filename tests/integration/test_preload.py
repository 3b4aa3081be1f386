"""Host-path preloading in the engine: crops that arrive while a batch runs are normalised at once, all
of those waiting in one hop to the preload thread, and every request is answered whatever happens."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import make_image, wait_until
from tests.fakes import install_gated_backend
from tests.integration.conftest import settings
from tests.integration.test_service import classify

pytestmark = pytest.mark.integration
IMAGE = make_image(200, 150, seed=4)


def test_requests_arriving_during_a_batch_are_preloaded_together(onnx_model, inprocess_server, monkeypatch):
    holder = install_gated_backend(monkeypatch)
    server = inprocess_server(settings(onnx_model))
    engine, backend = server.engine, holder["backend"]
    hops: list[int] = []
    preload_each, preload = engine._preload_each, engine.runner.preload
    first_preload = threading.Event()

    def counted(work):
        hops.append(len(work))
        return preload_each(work)

    def held_once(images):
        if not first_preload.is_set():
            first_preload.set()
            wait_until(lambda: hops[0] + len(engine._preload_waiting) == 6, 30, "the other requests to wait for it")
        preload(images)

    monkeypatch.setattr(engine, "_preload_each", counted)
    monkeypatch.setattr(engine.runner, "preload", held_once)
    backend.gate.clear()
    with ThreadPoolExecutor(7) as pool:
        running = pool.submit(classify, server.url, IMAGE)
        backend.wait_started()  # the backend is busy: what comes now is preloaded
        later = [pool.submit(classify, server.url, IMAGE) for _ in range(6)]
        wait_until(lambda: sum(hops) == 6, 60, "the preloads")
        backend.gate.set()
        assert [f.result().status_code for f in [running, *later]] == [200] * 7
    # One hop to the preload thread for the first to arrive (and any that came with it), one for all
    # that waited behind it: not one per request.
    assert len(hops) == 2, hops


def test_a_request_whose_preload_fails_is_answered(onnx_model, inprocess_server, monkeypatch):
    holder = install_gated_backend(monkeypatch)
    server = inprocess_server(settings(onnx_model))
    backend = holder["backend"]

    def broken(images):
        raise RuntimeError("injected preload fault")

    monkeypatch.setattr(server.engine.runner, "preload", broken)
    backend.gate.clear()
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(classify, server.url, IMAGE)
        backend.wait_started()
        failed = classify(server.url, IMAGE)  # preloaded while the batch runs: the fault answers it
        assert failed.status_code == 500 and failed.json()["kind"] == "internal"
        backend.gate.set()
        assert running.result().status_code == 200
    assert server.frontend.pipeline.arena.used_slots == 0
