"""GPU code paths: PyTorch CUDA graphs, ONNX Runtime's CUDA provider, TensorRT. Skipped without them."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this host"),
]

from service.backends import select_backend  # noqa: E402
from service.settings import Settings  # noqa: E402


def reference(onnx_model, batch):
    return select_backend(Settings(onnx=onnx_model, backend="onnxruntime", device="cpu")).backend.infer(batch)


def test_torch_cuda_graphs_match_the_cpu_reference(onnx_model):
    backend = select_backend(Settings(onnx=onnx_model, backend="torch", device="cuda", max_batch_size=8)).backend
    assert backend.batch_sizes == (1, 2, 4, 8)
    batch = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
    got = backend.infer(batch)
    np.testing.assert_allclose(got, reference(onnx_model, batch), atol=5e-2)  # fp16
    np.testing.assert_array_equal(got, backend.infer(batch))  # graph replay is deterministic


def test_onnxruntime_cuda_provider_matches_the_cpu_reference(onnx_model):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    backend = select_backend(Settings(onnx=onnx_model, backend="onnxruntime", device="cuda")).backend
    batch = np.random.default_rng(1).standard_normal((3, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(backend.infer(batch), reference(onnx_model, batch), atol=1e-3)
