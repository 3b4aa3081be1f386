"""The load tester against real servers on 127.0.0.1: its reports must add up and be written."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from aiohttp import web

from loadtest.__main__ import build_payloads
from loadtest.payloads import Payload
from loadtest.runner import LoadClient, run_step, sweep
from loadtest.step import StepConfig
from tests.conftest import REPO

pytestmark = pytest.mark.integration
T = TypeVar("T")


def _loadtest(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loadtest", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def _check_ordered(latency: dict) -> None:
    chain = [latency[k] for k in ("min", "p50", "p90", "p95", "p99", "p99.9", "max")]
    assert chain == sorted(chain), latency


def test_closed_loop_sweep_report_and_files(onnx_server, tmp_path):
    out = tmp_path / "run"
    proc = _loadtest(
        "--url", onnx_server.url, "--concurrency", "1,4", "--duration-s", "2", "--warmup-s", "0.5", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    assert "req/s" in proc.stdout and "p99.9" in proc.stdout
    for name in ("report.json", "steps.csv"):
        assert (out / name).stat().st_size > 0
    for name in ("latency_vs_throughput.png", "latency_cdf.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "report.json").read_text())
    assert doc["server"]["models"][0]["name"] == "alexnet"
    assert [s["step"] for s in doc["steps"]] == ["c=1", "c=4"]
    for step in doc["steps"]:
        assert step["requests"] > 0
        assert step["requests"] == step["ok"] + step["errors"]
        assert step["errors"] == sum(step["errors_by_status"].values())
        assert step["images_ok"] == step["ok"]  # one image per request
        _check_ordered(step["latency_ms"])
        server = step["server"]
        assert server["batches"] >= 1 and server["batch_size_mean"] >= 1
        assert server["images"] >= step["ok"]  # the server also answered the in-flight tail
        assert server["queue_wait_mean_ms"] >= 0
    csv_lines = (out / "steps.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("step,")


def test_open_loop_sends_every_scheduled_request(onnx_server, tmp_path):
    out = tmp_path / "open"
    proc = _loadtest(
        "--url",
        onnx_server.url,
        "--mode",
        "open",
        "--rate",
        "8",
        "--duration-s",
        "2.5",
        "--warmup-s",
        "0",
        "--out",
        str(out),
        "--no-plots",
    )
    assert proc.returncode == 0, proc.stderr
    (step,) = json.loads((out / "report.json").read_text())["steps"]
    assert step["scheduled"] == 20  # 8/s for 2.5 s, constant
    assert step["requests"] == 20  # every scheduled request counted, however late it finished
    assert step["elapsed_s"] >= 2.5
    _check_ordered(step["latency_ms"])
    assert step["schedule_lag_ms"]["max"] >= 0


@pytest.mark.parametrize("kind,per_request", [("raw", 1), ("multipart", 3)])
def test_request_kinds_against_the_service(onnx_server, kind, per_request):
    payloads = build_payloads(kind, "photos", per_request)

    async def go():
        async with LoadClient(onnx_server.url, kind) as client:
            return await run_step(
                client, payloads, StepConfig("closed", concurrency=2, duration_s=None, requests=6, warmup_s=0)
            )

    r = asyncio.run(go())
    assert r.counted == r.ok == 6, r.errors
    assert r.images_ok == 6 * per_request
    assert r.server["images"] == 6 * per_request


def test_server_errors_are_classified_by_status_and_kind(onnx_server):
    bad = [Payload("/classify", {"Content-Type": "image/jpeg"}, b"this is not a jpeg", 1)]

    async def go():
        async with LoadClient(onnx_server.url, "raw") as client:
            return await run_step(
                client, bad, StepConfig("closed", concurrency=1, duration_s=None, requests=5, warmup_s=0)
            )

    r = asyncio.run(go())
    assert r.counted == 5 and r.ok == 0
    assert r.errors == {"400": 5} and r.error_kinds == {"not_an_image": 5}
    assert r.server["errors"] == {"not_an_image": 5}  # the server counted them too


def test_oip_v2_kinds(onnx_server):
    for kind in ("oip-json", "oip-binary", "oip-fp32"):
        payloads = build_payloads(kind, "photos", 2)

        async def go(kind=kind, payloads=payloads):
            async with LoadClient(onnx_server.url, kind) as client:
                return await run_step(
                    client, payloads, StepConfig("closed", concurrency=2, duration_s=None, requests=4, warmup_s=0)
                )

        r = asyncio.run(go())
        assert r.counted == r.ok == 4, (kind, r.errors, r.error_kinds)
        assert r.images_ok == 8


# -- against a scripted server: behaviour that a real one cannot be made to show on demand -------------


RAW = [Payload("/classify", {"Content-Type": "image/jpeg"}, b"x", 1)]


def against_scripted_server(handler, measure: Callable[[LoadClient], Awaitable[T]], **client_options) -> T:
    """Serve every path with ``handler`` (aiohttp) on 127.0.0.1 and run ``measure`` with a raw client to it."""

    async def go() -> T:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]
            async with LoadClient(f"http://127.0.0.1:{port}", "raw", **client_options) as client:
                return await measure(client)
        finally:
            await runner.cleanup()

    return asyncio.run(go())


def test_open_loop_does_not_wait_for_answers_and_charges_the_stall():
    """A server that takes 300 ms: the open loop keeps its schedule (requests overlap at the server) and
    latency counts from the scheduled time."""
    state = {"now": 0, "peak": 0}

    async def slow(request):
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.3)  # the behaviour under test: a server slower than the schedule
        state["now"] -= 1
        return web.json_response({"results": [{"predictions": [{"label": "x"}]}]})

    r = against_scripted_server(
        slow, lambda client: run_step(client, RAW, StepConfig("open", rate=20, duration_s=1.0, warmup_s=0))
    )
    assert r.scheduled == 20 and r.counted == r.ok == 20
    assert state["peak"] >= 3  # a closed loop of one client could never overlap requests
    assert r.latency.percentile_ms(0) >= 300  # each answer took at least the server's time


def test_errors_stop_the_sweep():
    calls = {"n": 0}

    async def flaky(request):
        calls["n"] += 1
        if calls["n"] % 2:
            return web.json_response({"error": "busy", "kind": "queue_full"}, status=503, headers={"Retry-After": "1"})
        if calls["n"] % 4 == 0:
            return web.Response(body=b"{broken", content_type="application/json")
        return web.json_response({"results": [{"predictions": [{"label": "x"}]}]})

    configs = [StepConfig("closed", concurrency=1, duration_s=None, requests=40, warmup_s=0) for _ in range(3)]
    results = against_scripted_server(flaky, lambda client: sweep(client, RAW, configs, max_error_rate=0.1))
    assert len(results) == 1 and "error rate" in results[0].stopped  # steps 2 and 3 never ran
    r = results[0]
    assert r.counted == r.ok + sum(r.errors.values())
    assert r.errors["503"] == r.error_kinds["queue_full"] > 0
    assert r.errors["bad_response"] > 0


def test_idle_keepalive_connections_are_not_reused():
    """A connection idle longer than the client's keep-alive is replaced, not reused (a server closing
    it at that moment would fail the request); one used again at once is reused."""
    ports: list[int] = []

    async def record(request):
        ports.append(request.transport.get_extra_info("peername")[1])
        return web.json_response({"results": [{"predictions": [{"label": "x"}]}]})

    async def three_requests(client: LoadClient) -> None:
        for pause_s in (0, 0, 0.6):
            await asyncio.sleep(pause_s)
            assert (await client.send(RAW[0])).outcome == "ok"

    against_scripted_server(record, three_requests, keepalive_s=0.4)
    assert ports[0] == ports[1] != ports[2]


def test_client_keepalive_is_under_the_service_idle_close():
    from loadtest.runner import KEEPALIVE_S
    from service.frontend import uvicorn_config
    from service.settings import Settings

    assert uvicorn_config(None, Settings()).timeout_keep_alive > KEEPALIVE_S
