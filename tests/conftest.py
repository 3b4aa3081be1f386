"""Shared fixtures: a small ONNX model exported once per session, sample images, a real server."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from loadtest.servers import free_port

REPO = Path(__file__).resolve().parents[1]


def make_image(width: int = 500, height: int = 375, seed: int = 0, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    """A deterministic photo-like test image (smooth gradients plus noise) encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / max(width, 1), y / max(height, 1), (x + y) / max(width + height, 1)], axis=-1)
    pixels = np.clip(base * 200 + rng.normal(0, 20, (height, width, 3)) + rng.uniform(0, 55, 3), 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory) -> Path:
    """The untrained torchvision AlexNet exported to ONNX (seed 0), once per test session."""
    from export.to_onnx import export_and_verify

    out = tmp_path_factory.mktemp("onnx") / "alexnet.onnx"
    export_and_verify(None, out, verify_batch_sizes=(1,))
    return out


@pytest.fixture
def sample_jpeg() -> bytes:
    return make_image()


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(
    log_dir: Path,
    *args: str,
    env: dict[str, str | None] | None = None,
    wait_ready: bool = True,
    timeout_s: float = 120,
    module: str = "service",
) -> LiveServer:
    """Start ``python -m <module>`` on 127.0.0.1 and a free port; wait for /readyz unless told not to.

    ``env`` entries override the environment; a None value removes the variable.
    """
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    with open(log_path, "wb") as log_file:  # the child keeps its own descriptor; ours closes here
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=REPO,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{module} exited with {process.returncode}:\n{server.log()}")
        try:
            r = httpx.get(server.url + ("/readyz" if wait_ready else "/healthz"), timeout=2)
            if r.status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{module} not ready after {timeout_s} s:\n{server.log()}")


@pytest.fixture
def server_factory(tmp_path):
    """Call with extra CLI flags; every server started is stopped at teardown."""
    servers: list[LiveServer] = []

    def factory(*args: str, **kwargs) -> LiveServer:
        server = start_server(tmp_path, *args, **kwargs)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def onnx_server(onnx_model, tmp_path_factory):
    """One ONNX Runtime CPU server shared by a module's tests."""
    server = start_server(tmp_path_factory.mktemp("server"), "--onnx", str(onnx_model), "--backend", "onnxruntime")
    yield server
    server.stop()


class InProcessServer:
    """The real app under a real uvicorn on 127.0.0.1, in a thread, so tests can reach its state."""

    def __init__(self, settings) -> None:
        import threading

        import uvicorn

        from service.app import create_app

        self.app = create_app(settings)
        self.state = self.app.state.service
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=30)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("in-process server did not start")
            time.sleep(0.02)

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.state.ready:
            if self.state.startup_error:
                raise RuntimeError(self.state.startup_error)
            if time.monotonic() > deadline:
                raise RuntimeError("not ready in time")
            time.sleep(0.02)

    def stop(self, timeout_s: float = 60) -> None:
        self.server.should_exit = True  # what uvicorn does on SIGTERM
        self.thread.join(timeout_s)


@pytest.fixture
def inprocess_server():
    """Call with a Settings; each server is stopped at teardown."""
    servers: list[InProcessServer] = []

    def factory(settings, wait_ready: bool = True) -> InProcessServer:
        server = InProcessServer(settings)
        servers.append(server)
        if wait_ready:
            server.wait_ready()
        return server

    yield factory
    for server in servers:
        server.stop()
