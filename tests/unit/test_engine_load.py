"""service.engine_load: what the engine builds before it says ready, and what it gives back on failure."""

from __future__ import annotations

import pytest

import service.engine_load
from export.onnx_metadata import ModelMetadata
from service.backends import Selection
from service.engine_load import load_model
from service.errors import NotReady
from service.settings import Settings
from tests.fakes import EchoBackend


class ClosingBackend(EchoBackend):
    closed = 0
    fail_warmup = False

    def warmup(self, input_size: int) -> None:
        if self.fail_warmup:
            raise RuntimeError("injected warm-up fault")
        super().warmup(input_size)

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def backend(monkeypatch) -> ClosingBackend:
    made = ClosingBackend()
    meta = ModelMetadata("torchvision", [f"class {i}" for i in range(4)], 32, 36, "test", "c" * 64)
    monkeypatch.setattr(service.engine_load, "select_backend", lambda settings: Selection(made, meta, "test"))
    return made


def test_a_loaded_model_carries_its_facts_for_the_front_ends(backend):
    loaded = load_model(Settings(warmup=True))
    assert loaded.selection.backend is backend and backend.closed == 0
    model = loaded.model
    assert (model.input_size, model.resize_size, model.labels[3]) == (32, 36, "class 3")
    assert model.decode == "cpu" and model.decode_reason.startswith("auto: on the CPU in the front ends")
    assert model.backend == backend.describe()


def test_a_failing_warm_up_closes_the_backend_before_the_error_goes_up(backend):
    backend.fail_warmup = True
    with pytest.raises(RuntimeError, match="injected warm-up fault"):
        load_model(Settings(warmup=True))
    assert backend.closed == 1


def test_gpu_decoding_refused_on_a_cpu_backend_closes_it_too(backend):
    with pytest.raises(NotReady, match="decode=gpu was asked for"):
        load_model(Settings(decode="gpu"))
    assert backend.closed == 1
