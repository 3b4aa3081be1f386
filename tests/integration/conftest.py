"""Integration fixtures: small synthetic ImageFolder sets (built once per session), the service's
settings for in-process servers, a server whose backend holds its batches, and a keyed server."""

from __future__ import annotations

import pytest

from model.synthetic import generate
from service.settings import Settings
from tests.conftest import start_server
from tests.fakes import install_gated_backend


def settings(onnx_model, **overrides) -> Settings:
    """The in-process servers' settings: ONNX Runtime on ``onnx_model``, and ``overrides``."""
    return Settings(onnx=onnx_model, backend="onnxruntime", **overrides)


@pytest.fixture
def gated_server(onnx_model, inprocess_server, monkeypatch):
    """``server, backend = gated_server(**overrides)``: an in-process server (``settings``) whose backend
    (a tests.fakes.GatedBackend) holds every batch until ``backend.gate.set()``; the gate starts closed."""

    def start(**overrides):
        holder = install_gated_backend(monkeypatch)
        server = inprocess_server(settings(onnx_model, **overrides))
        backend = holder["backend"]
        backend.gate.clear()
        return server, backend

    return start


@pytest.fixture(scope="session")
def synthetic4(tmp_path_factory):
    """4 classes, 48 train and 10 val images each, 72 px: enough for AlexNet to learn in ~70 CPU steps."""
    return generate(
        tmp_path_factory.mktemp("synthetic4"), classes=4, train_per_class=48, val_per_class=10, size=72, seed=0
    )


@pytest.fixture(scope="session")
def tiny4(tmp_path_factory):
    """4 classes, 8 train and 2 val images each: for runs that test mechanics, not learning."""
    return generate(tmp_path_factory.mktemp("tiny4"), classes=4, train_per_class=8, val_per_class=2, size=72, seed=1)


API_KEY = "k3y-for-tests"
KEYED_MAX_BODY_BYTES = 65536


@pytest.fixture(scope="module")
def keyed_server(onnx_model, tmp_path_factory):
    """``python -m service`` with ALEXNET_API_KEY=API_KEY, two front ends, --max-body-bytes
    KEYED_MAX_BODY_BYTES and --warmup false: auth, body limits, metrics across processes, the page."""
    server = start_server(
        tmp_path_factory.mktemp("keyed"),
        *("--onnx", str(onnx_model), "--backend", "onnxruntime", "--http-workers", "2"),
        *("--max-body-bytes", str(KEYED_MAX_BODY_BYTES), "--warmup", "false"),
        env={"ALEXNET_API_KEY": API_KEY},
    )
    yield server
    server.stop()
