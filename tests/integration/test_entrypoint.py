"""The container entrypoint run here, without Docker or a GPU: export, skip TensorRT, serve."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import REPO, LiveServer, free_port, make_image

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def run_entrypoint(model_dir, log_path, *args: str, timeout_s: float = 240) -> LiveServer:
    """``python -m service.entrypoint`` on 127.0.0.1; returns once /readyz answers 200."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ALEXNET_MODEL_DIR": str(model_dir)}
    for name in ("ALEXNET_ONNX", "ALEXNET_ENGINE", "ALEXNET_CHECKPOINT"):
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "service.entrypoint", "--host", "127.0.0.1", "--port", str(port), *args],
        cwd=REPO, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    server = LiveServer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"entrypoint exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"not ready after {timeout_s} s:\n{server.log()}")


def test_entrypoint_exports_skips_tensorrt_serves_and_reuses_the_export(tmp_path):
    model_dir = tmp_path / "models"
    server = run_entrypoint(model_dir, tmp_path / "first.log", "--max-batch-size", "8")
    try:
        response = httpx.post(server.url + "/classify", files={"file": ("a.jpg", make_image(), "image/jpeg")},
                              timeout=60)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["results"][0]["predictions"]) == 5
        assert body["backend"]["name"] == "onnxruntime" and body["model"]["weights"] == "untrained"
        models = httpx.get(server.url + "/v1/models").json()["models"][0]
        assert models["batching"]["max_batch_size"] == 8  # flags pass through to the service
    finally:
        # SIGTERM reaches uvicorn itself (exec, no wrapper process); it shuts down gracefully and
        # re-raises the signal, so -15 is a clean exit too.
        assert server.stop() in (0, -15)
    log = server.log()
    assert "Finished server process" in log
    assert (model_dir / "alexnet.onnx").is_file()
    assert "exporting: " in log and "alexnet.onnx is missing" in log
    assert "UNTRAINED" in log
    assert "TensorRT skipped: " in log  # with the reason after it
    assert "step 2/4: ONNX model: done in" in log and "step 4/4: exec" in log

    # Second start: the export is current, so it is reused.
    onnx_mtime = (model_dir / "alexnet.onnx").stat().st_mtime
    server = run_entrypoint(model_dir, tmp_path / "second.log", "--backend", "onnxruntime")
    server.stop()
    log = server.log()
    assert "present and current; not exporting" in log
    assert "skipped: backend=onnxruntime was asked for" in log
    assert (model_dir / "alexnet.onnx").stat().st_mtime == onnx_mtime


def test_entrypoint_refuses_bad_flags_before_any_work(tmp_path):
    result = subprocess.run([sys.executable, "-m", "service.entrypoint", "--max-batch-size", "0"],
                            cwd=REPO, env={**os.environ, "ALEXNET_MODEL_DIR": str(tmp_path)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "max_batch_size" in result.stderr
    assert not (tmp_path / "alexnet.onnx").exists()
