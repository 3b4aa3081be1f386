"""Faults: a failing backend, a hung backend, SIGTERM under load, clients that vanish, auth, CORS."""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import make_image, wait_until
from tests.fakes import install_gated_backend, occupy
from tests.integration.conftest import settings
from tests.integration.test_service import classify, metric

pytestmark = pytest.mark.integration
IMAGE = make_image(120, 90, seed=3)
MODEL_READY = ("/v2/models/alexnet/ready", "/v2/models/alexnet/versions/1/ready")


def test_a_backend_fault_fails_its_batch_only_is_counted_and_later_requests_succeed(gated_server):
    server, backend = gated_server()
    with ThreadPoolExecutor(4) as pool:
        first, batch = occupy(pool, lambda: classify(server.url, IMAGE), backend, server.state.batcher, queued=3)
        backend.fail_next = 2  # the running batch and the next one (the three queued requests)
        backend.gate.set()
        responses = [first.result(), *(f.result() for f in batch)]
    assert [r.status_code for r in responses] == [500] * 4
    assert {r.json()["kind"] for r in responses} == {"backend_error"}
    assert backend.calls == [1, 3]
    assert classify(server.url, IMAGE).status_code == 200
    assert metric(server.url, 'alexnet_errors_total{kind="backend_error"}') == 4  # requests
    assert metric(server.url, "alexnet_backend_failures_total") == 2  # batches


def test_a_hung_backend_trips_the_deadline_and_readiness_then_recovers(gated_server):
    server, backend = gated_server(request_timeout_s=0.5)
    assert classify(server.url, IMAGE).status_code == 504
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 503 and "stalled" in ready.json()["reason"]
    backend.gate.set()
    wait_until(lambda: httpx.get(server.url + "/readyz").status_code == 200, 10, "readiness to come back")
    assert classify(server.url, IMAGE).status_code == 200


def _classify_counts(state) -> dict[str, float]:
    """Requests to /classify that reached the app, by the status they were answered with."""
    counts = {}
    for family in state.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "alexnet_request_duration_seconds_count" and sample.labels["route"] == "/classify":
                counts[sample.labels["status"]] = sample.value
    return counts


def test_shutdown_under_load_answers_every_request_that_reached_the_app(onnx_model, inprocess_server):
    """Shutdown (what SIGTERM triggers in uvicorn) while 6 clients keep sending.

    Every request that reached the app must have been answered 200 (a 499 would be one abandoned),
    and every such answer must have reached its client. Each request opens its own connection, so a
    client can also see its connection refused or reset: those were never accepted by the app (the
    kernel's backlog is reset when the listening socket closes) and are safe to retry.
    """
    server = inprocess_server(settings(onnx_model))
    outcomes: list[str] = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            try:
                r = httpx.post(server.url + "/classify", files={"file": ("a.jpg", IMAGE, "image/jpeg")}, timeout=30)
                outcomes.append(f"http {r.status_code}")
            except httpx.TransportError:
                outcomes.append("not accepted")
                return

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: outcomes.count("http 200") >= 12, 120, "12 answers before the shutdown")
        server.stop()
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not server.thread.is_alive() and not any(t.is_alive() for t in threads)
    answered = _classify_counts(server.state)
    assert set(answered) == {"200"}, f"requests that reached the app without a 200: {answered}"
    assert outcomes.count("http 200") == answered["200"]
    assert set(outcomes) <= {"http 200", "not accepted"}


def test_a_client_vanishing_mid_upload_costs_nothing(onnx_model, inprocess_server, monkeypatch):
    holder = install_gated_backend(monkeypatch)
    server = inprocess_server(settings(onnx_model))
    port = int(server.url.rsplit(":", 1)[1])
    part_header = (
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    )
    disconnected = 'alexnet_errors_total{kind="client_disconnected"}'
    for n, (content_type, start) in enumerate(
        (("image/jpeg", b""), ("multipart/form-data; boundary=xyz", part_header)), start=1
    ):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                "Content-Length: 100000\r\n\r\n".encode()
                + start
                + IMAGE[:500]
            )
            # Mid-upload: the app is running for this request (uvicorn's task set) and waits for the rest.
            wait_until(lambda: server.server.server_state.tasks, 10, "the app to start on the request")
        wait_until(
            lambda n=n: metric(server.url, disconnected) >= n and not server.server.server_state.tasks,
            10,
            f"disconnect {n} to be noticed and its request to end",
        )
    assert holder["backend"].calls == []
    assert classify(server.url, IMAGE).status_code == 200


def test_api_key_guards_everything_but_health_and_metrics(onnx_model, inprocess_server, monkeypatch):
    monkeypatch.setenv("ALEXNET_API_KEY", "k3y")
    server = inprocess_server(settings(onnx_model))
    assert classify(server.url, IMAGE).status_code == 401
    bad = httpx.post(
        server.url + "/classify",
        files={"file": ("a.jpg", IMAGE, "image/jpeg")},
        headers={"Authorization": "Bearer nope"},
    )
    assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
    good = httpx.post(
        server.url + "/classify",
        files={"file": ("a.jpg", IMAGE, "image/jpeg")},
        headers={"Authorization": "Bearer k3y"},
    )
    assert good.status_code == 200
    assert httpx.get(server.url + "/v1/models").status_code == 401
    for path in ("/healthz", "/readyz", "/metrics", "/v2/health/ready", *MODEL_READY):
        assert httpx.get(server.url + path).status_code == 200, path
    # Only the served model's readiness is a health check: its metadata, inference and other versions are not.
    for path in ("/v2/models/alexnet", "/v2/models/alexnet/versions/2/ready", "/v2/models/other/ready"):
        assert httpx.get(server.url + path).status_code == 401, path
    assert httpx.post(server.url + "/v2/models/alexnet/infer", json={"inputs": []}).status_code == 401


def test_health_can_be_closed_too_model_readiness_included(onnx_model, inprocess_server, monkeypatch):
    monkeypatch.setenv("ALEXNET_API_KEY", "k3y")
    server = inprocess_server(settings(onnx_model, open_health=False, warmup=False))
    for path in ("/readyz", "/v2/health/ready", *MODEL_READY):
        assert httpx.get(server.url + path).status_code == 401, path
        assert httpx.get(server.url + path, headers={"Authorization": "Bearer k3y"}).status_code == 200, path


def test_metrics_can_be_closed_too(onnx_model, inprocess_server, monkeypatch):
    monkeypatch.setenv("ALEXNET_API_KEY", "k3y")
    server = inprocess_server(settings(onnx_model, open_metrics=False))
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_cors_is_off_by_default_and_on_for_listed_origins(onnx_model, inprocess_server):
    preflight = {"Origin": "http://example.test", "Access-Control-Request-Method": "POST"}
    off = inprocess_server(settings(onnx_model))
    assert "access-control-allow-origin" not in httpx.options(off.url + "/classify", headers=preflight).headers
    on = inprocess_server(settings(onnx_model, cors_origins="http://example.test"))
    r = httpx.options(on.url + "/classify", headers=preflight)
    assert r.headers["access-control-allow-origin"] == "http://example.test"


def test_connection_limit_answers_503_beyond_it(onnx_model, server_factory):
    server = server_factory("--onnx", str(onnx_model), "--backend", "onnxruntime", "--max-connections", "2")
    port = int(server.url.rsplit(":", 1)[1])
    healthz = server.url + "/healthz"
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        # The server counts a connection once its event loop has accepted it: poll, do not guess a delay.
        wait_until(lambda: httpx.get(healthz).status_code == 503, 10, "a third connection to get 503")
    finally:
        for sock in idle:
            sock.close()
    wait_until(lambda: httpx.get(healthz).status_code == 200, 10, "the limit to free up once both are closed")
