"""``--procs``: load spread over processes against servers on 127.0.0.1, the merged counts checked against
what the server itself counted. Every step is bounded by a duration or a request count."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import pytest
from aiohttp import web

from loadtest.client_ceiling import start_server
from loadtest.histogram import LatencyHistogram
from loadtest.multiproc import healthz_ceiling, load_pool, run_sweep
from loadtest.payloads import Payload
from loadtest.step import StepConfig
from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def healthz_server():
    process, url = start_server()
    yield url
    process.terminate()
    process.wait(10)


def _served(url: str) -> int:
    with urllib.request.urlopen(url + "/stats", timeout=5) as r:
        return json.loads(r.read()).get("/healthz", 0)


def _loadtest(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loadtest", "--kind", "healthz", "--no-plots", "--warmup-s", "0", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("procs", ["1", "2"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_keeps_the_steps_that_finished(healthz_server, tmp_path, sig, procs):
    """Ctrl-C, or SIGTERM to the loadtest process alone (``kill PID``), after the first of five 6 s
    steps: exit 130 well within the step, not after it (load processes stop theirs at once), and the report
    holds the steps that finished, marked interrupted (it used to be lost with them)."""
    out = tmp_path / "run"
    argv = ["--url", healthz_server, "--concurrency", "2,2,2,2,2", "--duration-s", "6", "--quiet", "--out", str(out)]
    argv += ["--procs", procs]
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtest", "--kind", "healthz", "--no-plots", "--warmup-s", "0", *argv],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    signalled = None
    for line in proc.stderr:  # bounded: the run ends by itself within ~30 s
        if line.startswith("  c=2:"):
            proc.send_signal(sig)
            signalled = time.monotonic()
            break
    err = proc.stderr.read()
    assert proc.wait(60) == 130, err
    assert signalled is not None, err
    assert time.monotonic() - signalled < 4, "the step running at the signal was waited for"
    assert "loadtest: interrupted; wrote the" in err, err
    doc = json.loads((out / "report.json").read_text())
    assert doc["interrupted"].startswith("stopped by a signal")
    assert 1 <= len(doc["steps"]) < 5


def test_procs_2_counts_what_the_server_served(healthz_server, tmp_path):
    out = tmp_path / "run"
    proc = _loadtest(
        "--url", healthz_server, "--concurrency", "5", "--duration-s", "2", "--procs", "2", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 load processes, 3+2 clients" in proc.stdout  # the split, stated
    (step,) = json.loads((out / "report.json").read_text())["steps"]
    # Every request the server answered was counted in the window or, finishing after it, as abandoned.
    assert step["requests"] + step["abandoned"] == _served(healthz_server) > 0
    assert step["requests"] == step["ok"] and step["errors"] == 0
    assert LatencyHistogram.decode(step["latency_hdr"]).count == step["ok"]
    assert step["procs"] == 2 and step["split"] == "3+2 clients"
    assert [p["process"] for p in step["processes"]] == [0, 1]
    assert sum(p["requests"] for p in step["processes"]) == step["requests"]
    assert all(p["requests"] > 0 for p in step["processes"])  # both processes sent load
    assert step["elapsed_s"] == pytest.approx(2.0, abs=0.01)  # one shared 2 s window
    assert step["start_lag_ms"] >= 0


def test_procs_2_by_count_sends_exactly_that_many(healthz_server, tmp_path):
    before = _served(healthz_server)
    out = tmp_path / "count"
    proc = _loadtest(
        "--url", healthz_server, "--concurrency", "3", "--requests", "301", "--procs", "2", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    (step,) = json.loads((out / "report.json").read_text())["steps"]
    assert step["requests"] == step["ok"] == 301 == _served(healthz_server) - before
    assert [p["requests"] for p in step["processes"]] == [201, 100]  # 2+1 clients: in proportion
    assert step["split"] == "2+1 clients, 201+100 requests"


async def _counting_server(handler):
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


def _ok_counting(served: Counter):
    """A handler answering 200 to every request, counting them by path in ``served``."""

    async def ok(request):
        served[request.path] += 1
        return web.json_response({"status": "ok"})

    return ok


def test_errors_by_status_and_kind_and_images_are_summed_over_processes():
    served: Counter = Counter()

    async def mixed(request):
        if request.path != "/classify":  # the parent's /metrics scrapes
            return web.Response(status=404)
        served["total"] += 1
        n = served["total"]
        if n % 3 == 0:
            served["503 queue_full"] += 1
            return web.json_response({"error": "busy", "kind": "queue_full"}, status=503)
        if n % 7 == 0:
            served["400 not_an_image"] += 1
            return web.json_response({"error": "bad", "kind": "not_an_image"}, status=400)
        served["200"] += 1
        return web.json_response({"results": [{"predictions": []}] * 3})

    async def go():
        runner, url = await _counting_server(mixed)
        try:
            payloads = [Payload("/classify", {"Content-Type": "multipart/form-data"}, b"x", 3)]
            config = StepConfig("closed", concurrency=5, duration_s=None, requests=210, warmup_s=0)
            return await run_sweep(url, "multipart", payloads, [config], 2, validate=False)
        finally:
            await runner.cleanup()

    (r,) = asyncio.run(go())
    assert r.procs == 2 and r.counted == served["total"] == 210
    assert r.ok == served["200"] and r.images_ok == 3 * served["200"]
    assert r.errors == {"503": served["503 queue_full"], "400": served["400 not_an_image"]}
    assert r.error_kinds == {"queue_full": served["503 queue_full"], "not_an_image": served["400 not_an_image"]}
    assert r.latency.count == r.ok and r.error_latency.count == r.counted - r.ok
    assert [p["requests"] for p in r.parts] == [126, 84]  # 3+2 clients


def test_warm_up_runs_before_the_window_and_is_not_counted():
    served: Counter = Counter()

    async def go():
        runner, url = await _counting_server(_ok_counting(served))
        try:
            config = StepConfig("closed", concurrency=4, duration_s=None, requests=100, warmup_s=0.5)
            return await run_sweep(url, "healthz", [Payload("/healthz", {}, b"", 0, "GET")], [config], 2)
        finally:
            await runner.cleanup()

    (r,) = asyncio.run(go())
    assert r.counted == r.ok == 100
    assert served["/healthz"] > 100  # the warm-up's requests reached the server, outside the count
    assert served["/metrics"] == 2  # scraped once before the shared window and once after, by the parent


def test_open_loop_over_two_processes_sends_the_one_schedule():
    served: Counter = Counter()

    async def go():
        runner, url = await _counting_server(_ok_counting(served))
        try:
            config = StepConfig("open", rate=40, duration_s=1.5, warmup_s=0)
            return await run_sweep(url, "healthz", [Payload("/healthz", {}, b"", 0, "GET")], [config], 2)
        finally:
            await runner.cleanup()

    (r,) = asyncio.run(go())
    assert r.scheduled == r.counted == r.ok == 60 == served["/healthz"]  # 40/s for 1.5 s, constant
    assert r.schedule_lag.count == 60
    assert r.split == "20+20/s (the arrivals dealt in turn)"
    assert [p["requests"] for p in r.parts] == [30, 30]


def test_a_dead_server_stops_the_step_early():
    async def dead(request):
        return web.json_response({"error": "down", "kind": "not_ready"}, status=503)

    async def go():
        runner, url = await _counting_server(dead)
        try:
            config = StepConfig("closed", concurrency=4, duration_s=30.0, warmup_s=0, max_error_rate=0.5)
            return await run_sweep(url, "healthz", [Payload("/healthz", {}, b"", 0, "GET")], [config], 2)
        finally:
            await runner.cleanup()

    (r,) = asyncio.run(go())
    assert r.stopped and "error rate" in r.stopped
    assert r.elapsed_s < 30.0 and r.ok == 0 and r.errors["503"] == r.counted == r.error_kinds["not_ready"]


def test_progress_callback_gets_merged_partial_results(healthz_server):
    seen = []

    def progress(result, elapsed_s, planned_s):
        seen.append((result.config.label, result.counted, result.latency.count, planned_s))

    async def go():
        config = StepConfig("closed", concurrency=4, duration_s=2.0, warmup_s=0)
        return await run_sweep(
            healthz_server, "healthz", [Payload("/healthz", {}, b"", 0, "GET")], [config], 2, progress=progress
        )

    (r,) = asyncio.run(go())
    assert seen and all(label == "c=4" and planned == 2.0 for label, _, _, planned in seen)
    assert any(counted > 0 and hist == counted for _, counted, hist, _ in seen)  # ok answers only, all ok here
    assert max(counted for _, counted, _, _ in seen) <= r.counted


def test_healthz_ceiling_for_the_bench(healthz_server):
    c = asyncio.run(healthz_ceiling(healthz_server, concurrency=3, duration_s=1.0, warmup_s=0.2, procs=2))
    assert c["procs"] == 2 and c["split"] == "2+1 clients" and c["errors"] == 0
    assert c["req_per_s"] > 0 and c["p50_ms"] > 0 and c["client_cpu_pct"] > 0


def _keyed(seen: Counter, key: str):
    """A server that, like service/middleware.py's BearerAuth, answers 401 without 'Bearer <key>'."""

    async def handler(request):
        ok = request.headers.get("Authorization") == f"Bearer {key}"
        seen[(request.path, ok)] += 1
        if not ok:
            error = "missing or wrong API key: send 'Authorization: Bearer <key>'"
            return web.json_response({"error": error, "kind": "unauthorized"}, status=401)
        return web.json_response({"status": "ok"})

    return handler


def _keyed_sweep(seen: Counter, api_key: str | None):
    async def go():
        runner, url = await _counting_server(_keyed(seen, "k3y"))
        try:
            config = StepConfig("closed", concurrency=4, duration_s=None, requests=40, warmup_s=0.2)
            payloads = [Payload("/healthz", {}, b"", 0, "GET")]
            return await run_sweep(url, "healthz", payloads, [config], 2, api_key=api_key)
        finally:
            await runner.cleanup()

    (r,) = asyncio.run(go())
    return r


@pytest.mark.parametrize("given", ["argument", "environment"])
def test_every_load_process_and_every_scrape_sends_the_api_key(given, monkeypatch):
    """Given to run_sweep, the key reaches the spawned processes over their pipe (not the environment,
    which they would otherwise inherit); from ALEXNET_API_KEY when not given."""
    if given == "argument":
        monkeypatch.delenv("ALEXNET_API_KEY", raising=False)
    else:
        monkeypatch.setenv("ALEXNET_API_KEY", "k3y")
    seen: Counter = Counter()
    r = _keyed_sweep(seen, "k3y" if given == "argument" else None)
    assert r.procs == 2 and r.counted == r.ok == 40 and not r.errors
    assert {ok for _, ok in seen} == {True}  # the warm-up, the window and the parent's scrapes
    assert seen[("/metrics", True)] == 2 and seen[("/healthz", True)] > 40


def test_without_the_key_every_request_is_a_401_with_the_servers_words(monkeypatch):
    monkeypatch.delenv("ALEXNET_API_KEY", raising=False)
    r = _keyed_sweep(Counter(), None)
    assert r.ok == 0 and r.errors == {"401": r.counted} and r.error_kinds == {"unauthorized": r.counted}
    assert r.error_examples == {"401": "401 Unauthorized: missing or wrong API key: send 'Authorization: Bearer <key>'"}


@pytest.mark.parametrize("procs", [1, 2])
def test_one_pool_runs_step_after_step_with_the_same_processes(procs):
    """loadtest.bench keeps each server's pool for all its steps: the processes are started once, and
    each step's counts are its own (nothing carried over from the step before)."""
    served: Counter = Counter()

    async def go():
        runner, url = await _counting_server(_ok_counting(served))
        try:
            payloads = [Payload("/healthz", {}, b"", 0, "GET")]
            async with load_pool(url, "healthz", payloads, procs) as pool:
                pids = [p.pid for p in getattr(pool, "_processes", [])]
                results = []
                for n in (30, 50):
                    served.clear()
                    config = StepConfig("closed", concurrency=4, duration_s=None, requests=n, warmup_s=0)
                    results.append((await pool.run_step(config), served["/healthz"]))
                assert [p.pid for p in getattr(pool, "_processes", [])] == pids
                assert all(p.is_alive() for p in getattr(pool, "_processes", []))
            assert not any(p.is_alive() for p in getattr(pool, "_processes", []))  # closed with the pool
            return pool.procs, len(pids), results
        finally:
            await runner.cleanup()

    n_procs, started, results = asyncio.run(go())
    assert n_procs == procs and started == (procs if procs > 1 else 0)
    assert [(r.counted, r.ok, sent) for r, sent in results] == [(30, 30, 30), (50, 50, 50)]
    assert all(r.procs == procs for r, _ in results)


_RECORDS_ITS_IMPORTS = """
import os, sys, time
with open(os.environ["IMPORTS_LOG"], "a") as f:
    f.write(__name__ + "\\n")
if __name__ == "__main__":
    import multiprocessing
    from loadtest.spawn import without_main_module
    main = sys.modules["__main__"]
    before = (main.__spec__, main.__file__)
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=time.sleep, args=(0,))
    if sys.argv[1] == "hidden":
        with without_main_module():
            child.start()
    else:
        child.start()
    child.join(60)
    assert child.exitcode == 0, child.exitcode
    assert (main.__spec__, main.__file__) == before  # put back after the start
"""


@pytest.mark.parametrize("how", ["hidden", "plain"])
def test_a_load_process_is_spawned_without_importing_the_parents_main_module(how, tmp_path):
    """Under python -m loadtest.bench every spawned child imported the bench's torch and ONNX Runtime
    first (multiprocessing re-runs __main__ as __mp_main__); within without_main_module it does not."""
    (tmp_path / "records_its_imports.py").write_text(_RECORDS_ITS_IMPORTS)
    log = tmp_path / "imports.log"
    env = {**os.environ, "IMPORTS_LOG": str(log), "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    proc = subprocess.run(
        [sys.executable, "-m", "records_its_imports", how],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = ["__main__"] if how == "hidden" else ["__main__", "__mp_main__"]
    assert log.read_text().split() == expected
