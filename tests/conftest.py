"""Shared fixtures: ONNX models exported once per session (untrained, and the fitted-head model for
correctness), sample images, real servers; and the suite's rules for waiting and for skipping."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from loadtest.servers import free_port

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require_or_skip(condition: object, reason: str) -> None:
    """Skip the test with ``reason`` unless ``condition`` holds; under ``CI=true``, fail instead.

    For tools the suite is contracted to run in CI (Chromium, hadolint, schemathesis, atheris,
    torchvision's presets): on a developer's machine their absence is a skip that says what to
    install, in CI it is a broken setup that must not pass as green. Not for GPU tests: CI has no GPU,
    and those skip (``skipif``) there too.
    """
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} [CI=true: this is required in CI, so it fails instead of skipping]", pytrace=False)
    pytest.skip(reason)


def import_or_skip(module: str, reason: str) -> Any:
    """``pytest.importorskip`` under the rule of ``require_or_skip``: the module, else skip (fail in CI)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        require_or_skip(False, f"{reason} ({exc})")


def select_onnxruntime_cuda(settings) -> Any:
    """``select_backend(settings)`` for ONNX Runtime on CUDA, or a skip saying why it cannot run on this
    GPU host: no onnxruntime-gpu, or one that lists its CUDA provider but cannot load it (its CUDA or
    cuDNN libraries beside torch's). A GPU test, so never a failure in CI, which has no GPU. Under
    ``REQUIRE_ORT_CUDA=1`` (gpu_check.sh sets it where onnxruntime-gpu is installed) a provider that
    does not load fails instead: a carried wheel that cannot start is a broken check, not a skip."""
    from service.backends import select_backend
    from service.errors import BackendUnavailable

    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    try:
        return select_backend(settings)
    except BackendUnavailable as exc:  # only the provider's own failure to start; our refusals still fail
        if not str(exc).startswith(("ONNX Runtime could not start its CUDA provider", "ONNX Runtime fell back to")):
            raise
        reason = f"ONNX Runtime's CUDA provider does not load here: {exc}"
        if os.environ.get("REQUIRE_ORT_CUDA") == "1":
            pytest.fail(f"{reason} [REQUIRE_ORT_CUDA=1: onnxruntime-gpu is installed, so it must]", pytrace=False)
        pytest.skip(reason)


def wait_until(condition: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy, and return that; fail after ``timeout_s``.

    Every wait in the suite goes through here or has its own deadline: a condition that never comes
    fails the test with ``what`` it was waiting for, instead of hanging until pytest-timeout.
    """
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)
    return value


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


@dataclass
class FittedModel:
    """tests/synthetic.py's AlexNet with a fitted head (8 classes) as checkpoint and ONNX, and its image sets.

    For correctness tests. Its logits are tens of units apart and follow the image, so a backend that
    answers zeros, another image's row or another model's logits is far off. An untrained AlexNet's
    logits are ~1e-2 and nearly the same for every image: a 5e-2 tolerance passes an all-zero output.
    """

    checkpoint: Path
    onnx: Path
    calibration: Path
    eval: Path  # held out: used neither to fit the head nor to calibrate

    def eval_images(self, per_class: int) -> list[tuple[bytes, int]]:
        """The first ``per_class`` held-out PNGs of each class, class by class, as (bytes, label)."""
        from tests.synthetic import NUM_CLASSES

        return [
            (path.read_bytes(), label)
            for label in range(NUM_CLASSES)
            for path in sorted((self.eval / f"class_{label}").glob("*.png"))[:per_class]
        ]

    @cached_property
    def _torch_model(self):
        from model.weights import load_model

        return load_model(self.checkpoint).model.eval()

    def reference_logits(self, images: list[bytes]):
        """(N, 8) float32: PyTorch's logits on the CPU after the service's preprocessing, the answer every
        backend must give."""
        import torch

        from service.preprocess import PreprocessConfig, preprocess

        batch = np.stack([preprocess(data, PreprocessConfig()) for data in images])  # (N, 3, 224, 224)
        with torch.inference_mode():
            return self._torch_model(torch.from_numpy(batch)).numpy()


@pytest.fixture(scope="session")
def fitted(tmp_path_factory) -> FittedModel:
    """The fitted-head model and its data, built once per session (~30 s on 2 cores, ~230 MB on disk)."""
    from export.to_onnx import export_and_verify
    from tests.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("fitted")
    data = make_synthetic(root / "data")
    onnx = export_and_verify(data["checkpoint"], root / "model.onnx")
    return FittedModel(data["checkpoint"], onnx, data["calibration"], data["eval"])


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
    """The real layout with threads for processes: the engine (its own event loop) and one front end
    (a real uvicorn on 127.0.0.1) in this process, talking over the same Unix socket and arena as in
    production, so tests can reach the engine's state (``state``: its batcher and metrics) and swap
    its backend (tests.fakes.install_gated_backend)."""

    def __init__(self, settings) -> None:
        import asyncio
        import secrets
        import threading

        import uvicorn

        from service.app import create_app
        from service.engine import EngineServer
        from service.frontend import uvicorn_config

        address = f"alexnet-serve-test-{os.getpid()}-{secrets.token_hex(6)}"
        self.engine = EngineServer(settings, address)
        self.state = self.engine  # .batcher, .metrics, .ready, .startup_error
        self._engine_loop = asyncio.new_event_loop()
        self._engine_stop = asyncio.Event()

        def run_engine() -> None:
            asyncio.set_event_loop(self._engine_loop)
            self._engine_loop.run_until_complete(self.engine.serve(self._engine_stop))

        self.engine_thread = threading.Thread(target=run_engine, daemon=True, name="engine")
        self.engine_thread.start()
        self.app = create_app(settings, engine_address=address)
        self.frontend = self.app.state.service
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(
            uvicorn_config(
                self.app, settings, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=30
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="frontend")
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("in-process server did not start")
            time.sleep(0.02)

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.frontend.ready:
            if self.engine.startup_error:
                raise RuntimeError(self.engine.startup_error)
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready in time: {self.frontend.not_ready_reason()}")
            time.sleep(0.02)

    def stop(self, timeout_s: float = 60) -> None:
        self.server.should_exit = True  # what uvicorn does on SIGTERM; then the engine, as the supervisor does
        self.thread.join(timeout_s)
        self._engine_loop.call_soon_threadsafe(self._engine_stop.set)
        self.engine_thread.join(timeout_s)


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
