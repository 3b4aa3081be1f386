"""loadtest.ceilings: the in-process pipeline ceiling (b) the bench holds the service to."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

import loadtest.ceilings
import service.settings
from export.onnx_metadata import ModelMetadata
from loadtest.ceilings import pipeline_ceiling
from service.settings import Settings
from tests.fakes import EchoBackend


class TenClasses(EchoBackend):
    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.held(batch)
        return np.zeros((batch.shape[0], 10), np.float32)


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 90)).save(out, "JPEG")
    return out.getvalue()


@pytest.mark.parametrize(("decode_threads", "expected"), [(0, 6), (3, 3)])
def test_the_pipeline_decodes_on_every_usable_cpu_not_on_one_front_ends_share(decode_threads, expected, monkeypatch):
    """With 5 front ends on 6 CPUs a front end decodes on 6 // 5 = 1 thread; the in-process ceiling is
    one process with all of them (it ran on that 1 thread on the H200 host: ~230 img/s at batch 1.0)."""
    for module in (loadtest.ceilings, service.settings):
        monkeypatch.setattr(module, "usable_cpus", lambda: 6)
    made: list[int] = []

    class Recording(ThreadPoolExecutor):
        def __init__(self, max_workers: int, **kwargs) -> None:
            made.append(max_workers)
            super().__init__(max_workers, **kwargs)

    monkeypatch.setattr(loadtest.ceilings, "ThreadPoolExecutor", Recording)
    settings = Settings(http_workers=5, decode_threads=decode_threads, max_batch_size=8)
    assert settings.decoder_threads == (1 if decode_threads == 0 else decode_threads)  # a front end's
    meta = ModelMetadata("torchvision", [f"class {i}" for i in range(10)], 32, 36, "test", "c" * 64)
    r = pipeline_ceiling(TenClasses(), meta, settings, [_jpeg()], concurrency=2, duration_s=0.3, warmup_s=0.1)
    assert made == [expected]
    assert r["images"] > 0 and r["batch_size_mean"] >= 1
