"""The container entrypoint run here, without Docker or a GPU: export, skip TensorRT, serve."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import REPO, LiveServer, make_image, start_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def run_entrypoint(model_dir, log_dir, *args: str, timeout_s: float = 240) -> LiveServer:
    """``python -m service.entrypoint`` on 127.0.0.1; returns once /readyz answers 200."""
    env = {
        "ALEXNET_MODEL_DIR": str(model_dir),
        "ALEXNET_ONNX": None,
        "ALEXNET_ENGINE": None,
        "ALEXNET_CHECKPOINT": None,
    }
    return start_server(log_dir, *args, env=env, timeout_s=timeout_s, module="service.entrypoint")


def test_entrypoint_exports_skips_tensorrt_serves_and_reuses_the_export(tmp_path):
    model_dir = tmp_path / "models"
    server = run_entrypoint(model_dir, tmp_path, "--max-batch-size", "8")
    try:
        response = httpx.post(
            server.url + "/classify", files={"file": ("a.jpg", make_image(), "image/jpeg")}, timeout=60
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["results"][0]["predictions"]) == 5
        assert body["backend"]["name"] == "onnxruntime" and body["model"]["weights"] == "untrained"
        models = httpx.get(server.url + "/v1/models").json()["models"][0]
        assert models["batching"]["max_batch_size"] == 8  # flags pass through to the service
    finally:
        # SIGTERM reaches the supervisor itself (exec, no wrapper process), which stops the front
        # ends, then the engine, and exits 0; -15 (death by the signal) counts as clean too.
        assert server.stop() in (0, -15)
    log = server.log()
    assert "Finished server process" in log
    assert (model_dir / "alexnet.onnx").is_file()
    assert "exporting: " in log and "alexnet.onnx is missing" in log
    assert "UNTRAINED" in log
    assert "skipped: no CUDA GPU here" in log and "TensorRT skipped" not in log  # no warning on a CPU host
    assert "step 2/4: ONNX model: done in" in log and "step 4/4: exec" in log

    # Second start: the export is current, so it is reused.
    onnx_mtime = (model_dir / "alexnet.onnx").stat().st_mtime
    server = run_entrypoint(model_dir, tmp_path, "--backend", "onnxruntime")
    server.stop()
    log = server.log()
    assert "present and current; not exporting" in log
    assert "skipped: backend=onnxruntime was asked for" in log
    assert (model_dir / "alexnet.onnx").stat().st_mtime == onnx_mtime


def test_entrypoint_refuses_bad_flags_before_any_work(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "service.entrypoint", "--max-batch-size", "0"],
        cwd=REPO,
        env={**os.environ, "ALEXNET_MODEL_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2  # as python -m service: invalid settings
    assert "--max-batch-size / ALEXNET_MAX_BATCH_SIZE: Input should be greater than or equal to 1" in result.stderr
    assert not (tmp_path / "alexnet.onnx").exists()


def test_entrypoint_serves_the_checkpoint_it_finds_through_the_onnx_it_exports(tmp_path):
    """The checkpoint reaches the service as ALEXNET_CHECKPOINT; the service serves the ONNX only
    because the export holds the checkpoint's weights (service.backends refuses one that does not)."""
    from model.weights import save_checkpoint, untrained_model

    model_dir = tmp_path / "models"
    model_dir.mkdir()
    loaded = untrained_model(seed=1)
    save_checkpoint(model_dir / "alexnet.pt", loaded.model, loaded.arch, loaded.labels, {"source": "seed-1"})
    server = run_entrypoint(model_dir, tmp_path, "--backend", "onnxruntime", "--max-batch-size", "4")
    try:
        model = httpx.get(server.url + "/v1/models").json()["models"][0]
        assert model["weights"] == "seed-1" and model["backend"]["name"] == "onnxruntime"
    finally:
        assert server.stop() in (0, -15)


def test_sigterm_during_the_export_stops_the_entrypoint_at_once_leaving_no_model(tmp_path):
    """As ``docker stop`` on a first start: exit 143 within seconds (not the SIGKILL after the grace
    period), and no alexnet.onnx (the export writes atomically, so none half-written either)."""
    env = {**os.environ, "ALEXNET_MODEL_DIR": str(tmp_path)}
    for name in ("ALEXNET_ONNX", "ALEXNET_ENGINE", "ALEXNET_CHECKPOINT"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.entrypoint", "--port", "0"],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        log = []
        for line in proc.stderr:  # until the export has begun
            log.append(line)
            if "exporting: " in line:
                break
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, rest = proc.communicate(timeout=60)
        log.append(rest)
        assert proc.returncode == 143, "".join(log)
        assert time.monotonic() - started < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "stopped by SIGTERM while making the artifacts" in "".join(log)
    assert not list(tmp_path.glob("alexnet*.onnx*"))
