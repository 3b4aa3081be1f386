"""The process layout through ``python -m service``: front ends that share the port, one engine, and
what happens when any of them dies or the server is told to stop."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from loadtest.servers import free_port
from tests.conftest import REPO, make_image, wait_until
from tests.integration.test_service import classify, metric

pytestmark = pytest.mark.integration
IMAGE = make_image(120, 90, seed=5)


def children(pid: int, module: str) -> list[int]:
    """PIDs of ``pid``'s children running ``python -m <module>``."""
    out = subprocess.run(["pgrep", "-P", str(pid), "-f", f"python -m {module} "], capture_output=True, text=True)
    return sorted(int(p) for p in out.stdout.split())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.fixture
def two_workers(onnx_model, server_factory):
    return server_factory("--onnx", str(onnx_model), "--backend", "onnxruntime", "--http-workers", "2")


def test_front_ends_share_the_port_and_metrics_add_up_over_all_of_them(two_workers):
    server = two_workers
    assert len(children(server.process.pid, "service.frontend")) == 2
    assert len(children(server.process.pid, "service.engine")) == 1
    assert metric(server.url, "alexnet_frontends_connected") == 2
    before = metric(server.url, 'alexnet_request_duration_seconds_count{route="/classify",status="200"}')
    with ThreadPoolExecutor(8) as pool:  # fresh connections: the kernel spreads them over both
        statuses = list(pool.map(lambda _: classify(server.url, IMAGE).status_code, range(24)))
    assert statuses == [200] * 24
    # Whichever front end answered each and whichever one is scraped: the scraped one sends its own
    # events first; the other's arrive within its flush interval (0.1 s).
    count = 'alexnet_request_duration_seconds_count{route="/classify",status="200"}'
    wait_until(lambda: metric(server.url, count) - before == 24, 5, "all 24 requests in /metrics")
    time.sleep(0.5)  # and no more than 24, later
    assert metric(server.url, count) - before == 24


def test_a_killed_front_end_is_replaced_while_the_other_keeps_serving(two_workers):
    server = two_workers
    first, second = children(server.process.pid, "service.frontend")
    os.kill(first, signal.SIGKILL)
    assert classify(server.url, IMAGE).status_code == 200  # the survivor took it
    replaced = wait_until(
        lambda: [p for p in children(server.process.pid, "service.frontend") if p not in (first, second)],
        30,
        "a new front end",
    )
    assert len(replaced) == 1
    wait_until(lambda: metric(server.url, "alexnet_frontends_connected") == 2, 30, "the new front end to connect")
    assert "http front end 0" in server.log() and "died (signal SIGKILL); restarting it" in server.log()


def test_a_killed_engine_gives_503_at_once_then_comes_back(two_workers):
    server = two_workers
    (engine,) = children(server.process.pid, "service.engine")
    os.kill(engine, signal.SIGKILL)
    wait_until(lambda: not alive(engine), 10, "the engine to die")
    start = time.monotonic()
    response = classify(server.url, IMAGE)
    assert response.status_code == 503 and response.json()["kind"] == "not_ready"
    assert time.monotonic() - start < 2, "a request waited for an engine that is not there"
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 503 and "engine" in ready.json()["reason"]
    wait_until(lambda: httpx.get(server.url + "/readyz").status_code == 200, 90, "the restarted engine")
    assert classify(server.url, IMAGE).status_code == 200
    assert "engine (pid" in server.log() and "died (signal SIGKILL); restarting it" in server.log()


def test_sigterm_drains_every_process_and_exits_zero(two_workers):
    server = two_workers
    pids = children(server.process.pid, "service.frontend") + children(server.process.pid, "service.engine")
    decoded_before = metric(server.url, "alexnet_preprocess_duration_seconds_count")
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(classify, server.url, make_image(1500, 1125, seed=i)) for i in range(6)]
        # Stop only once all six are inside (decoded by a front end): a connection the server has
        # accepted but not yet read a request from may be closed, and that one is safe to retry.
        wait_until(
            lambda: metric(server.url, "alexnet_preprocess_duration_seconds_count") - decoded_before >= 6,
            30,
            "the requests to reach the server",
        )
        server.process.send_signal(signal.SIGTERM)
        statuses = [f.result().status_code for f in futures]
    assert server.process.wait(60) == 0
    assert statuses == [200] * 6
    assert not [p for p in pids if alive(p)]


def slow_png(width: int = 4000, height: int = 3000) -> bytes:
    """Small to send (a smooth gradient: ~0.35 MB) and slow to decode (12 MP: ~0.25 s on one core)."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_ctrl_c_to_every_process_at_once_still_answers_the_requests_in_flight(onnx_model, server_factory):
    """A terminal's Ctrl-C signals its whole process group; systemd signals a whole control group.
    The children have groups of their own (so Ctrl-C reaches the supervisor only); where every process
    is signalled anyway, the engine serves the front ends until they have finished and left."""
    server = server_factory(
        *("--onnx", str(onnx_model), "--backend", "onnxruntime", "--http-workers", "2", "--request-timeout-s", "60")
    )
    pids = children(server.process.pid, "service.frontend") + children(server.process.pid, "service.engine")
    assert os.getpgid(server.process.pid) not in {os.getpgid(p) for p in pids}
    files = [("file", (f"{i}.png", slow_png(), "image/png")) for i in range(12)]
    with ThreadPoolExecutor(1) as pool:
        request = pool.submit(httpx.post, server.url + "/classify", files=files, timeout=120)
        time.sleep(1.0)  # its body is in (4 MB over loopback); most of its 12 images are still to decode
        for pid in (*reversed(pids), server.process.pid):  # the engine first: the least kind order
            os.kill(pid, signal.SIGINT)
        response = request.result()
    assert server.process.wait(90) == 0
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 12
    assert not [p for p in pids if alive(p)]


def test_a_killed_supervisor_takes_its_children_along_and_leaves_no_shared_memory(two_workers):
    server = two_workers
    shm_before = set(os.listdir("/dev/shm"))
    pids = children(server.process.pid, "service.frontend") + children(server.process.pid, "service.engine")
    assert len(pids) == 3
    server.process.kill()
    server.process.wait()
    wait_until(lambda: not [p for p in pids if alive(p)], 30, "the children to exit")
    assert set(os.listdir("/dev/shm")) <= shm_before  # the arenas were anonymous (memfd)


def test_an_engine_that_keeps_dying_stops_the_server_saying_which(onnx_model, server_factory):
    server = server_factory("--onnx", str(onnx_model), "--backend", "onnxruntime", "--http-workers", "1")
    killed: set[int] = set()
    deadline = time.monotonic() + 120
    while server.process.poll() is None:
        assert time.monotonic() < deadline, "the supervisor never gave up"
        for pid in children(server.process.pid, "service.engine"):
            if pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.05)
    assert server.process.returncode == 1
    assert "engine died 6 times in 60 s" in server.log() and "giving up" in server.log()


def test_a_model_that_cannot_load_stops_the_server_with_exit_status_3(tmp_path):
    """Not up forever and never ready: the engine says why once, the supervisor stops the front ends
    and exits 3, instead of restarting an engine that would fail the same way."""
    missing = tmp_path / "missing.onnx"
    shm_before = set(os.listdir("/dev/shm"))
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(free_port())),
                *("--onnx", str(missing), "--backend", "onnxruntime", "--http-workers", "2"),
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    seen: set[int] = set()
    deadline = time.monotonic() + 180
    try:
        while process.poll() is None:
            assert time.monotonic() < deadline, "the server is still up with a model that cannot load"
            seen.update(children(process.pid, "service.frontend") + children(process.pid, "service.engine"))
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = log_path.read_text(errors="replace")
    assert process.returncode == 3, log
    assert log.count(f"the model could not be loaded: BackendUnavailable: {missing}: no ONNX model") == 1, log
    assert "the engine could not load the model" in log and "restarting" not in log
    wait_until(lambda: not [p for p in seen if alive(p)], 30, "the front ends and the engine to exit")
    assert set(os.listdir("/dev/shm")) <= shm_before
