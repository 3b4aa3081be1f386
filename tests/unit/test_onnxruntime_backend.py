"""service/backends/onnxruntime.py: the precision it reports, which ONNX it serves on CUDA, the shapes
it pads to there, the tensors it takes there (bound by pointer; shown with the CPU build on CPU
tensors), and what it says when its CUDA provider does not load."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.onnx_metadata import fp16_sibling, read_metadata
from service.backends import onnxruntime_model
from service.backends.onnxruntime import OnnxRuntimeBackend, onnx_precision
from service.errors import BackendUnavailable
from service.settings import Settings
from tests.fakes import install_fake_cuda_streams
from tests.tiny_onnx import tiny_onnx


def test_an_fp16_export_is_reported_as_fp16_and_runs(tmp_path):
    fp16 = tiny_onnx(tmp_path / "m.fp16.onnx", "fp16")  # float32 input and logits, float16 inside
    assert onnx_precision(fp16) == "fp16" and onnx_precision(tiny_onnx(tmp_path / "m.onnx")) == "fp32"
    backend = OnnxRuntimeBackend(fp16, "cpu", 8, 1)
    assert backend.precision == "fp16" and backend.describe()["precision"] == "fp16"
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(backend.infer(x), 2 * x)


def test_on_the_cpu_any_batch_size_runs_unpadded(tmp_path):
    # There a first run at a new size costs no more than the next (module docstring); padding would.
    assert OnnxRuntimeBackend(tiny_onnx(tmp_path / "m.onnx"), "cpu", 32, 1).batch_sizes is None


class FakeCudaSession:
    """An InferenceSession whose CUDA provider loaded."""

    def __init__(self, path, sess_options=None, providers=None):
        self.providers = providers

    def get_providers(self):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def get_inputs(self):
        return [SimpleNamespace(name="input", type="tensor(float)")]

    def get_outputs(self):
        return [SimpleNamespace(name="logits", type="tensor(float)", shape=["N", 1000])]


def test_on_cuda_batches_are_padded_to_the_warmed_powers_of_two_and_dlls_preloaded_first(tmp_path, monkeypatch):
    order: list[str] = []
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "preload_dlls", lambda: order.append("preload_dlls"), raising=False)

    def session(*args, **kwargs):
        order.append("InferenceSession")
        return FakeCudaSession(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", session)
    backend = OnnxRuntimeBackend(tiny_onnx(tmp_path / "m.onnx"), "cuda", 48, 1)
    assert backend.device == "cuda:0"
    assert backend.batch_sizes == (1, 2, 4, 8, 16, 32, 48)  # what Backend.warmup runs and the batcher pads to
    assert order == ["preload_dlls", "InferenceSession"]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_tensor_batch_is_bound_by_its_pointer_and_answered_in_a_tensor(tmp_path, precision):
    backend = OnnxRuntimeBackend(tiny_onnx(tmp_path / "m.onnx", precision), "cpu", 8, 1)
    assert not backend.takes_tensors  # on the CPU the engine gives it host batches (service/batch_runner.py)
    assert backend.input_dtype == torch.float32  # the fp16 export keeps a float32 input
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    with backend.stream_context():
        logits = backend.infer_tensor(x)
    assert logits.dtype == torch.float32 and logits.device == x.device
    torch.testing.assert_close(logits, 2 * x)  # ONNX Runtime wrote into the tensor it was given
    np.testing.assert_array_equal(logits.numpy(), backend.infer(x.numpy()))
    with pytest.raises(ValueError, match=r"contiguous torch.float32 batch, not torch.float32"):
        backend.infer_tensor(torch.zeros(4, 3).t())  # a view in another layout: its pointer would lie
    with pytest.raises(ValueError, match="not torch.float16"):
        backend.infer_tensor(x.half())


def test_on_cuda_it_runs_on_its_own_stream_takes_tensors_and_drains_it_before_copying_back(tmp_path, monkeypatch):
    made: list[dict] = []

    class Session(FakeCudaSession):
        def __init__(self, path, sess_options=None, providers=None):
            made.append(dict(providers[0][1]))

    class Stream:
        cuda_stream = 0x7F00  # a handle; ONNX Runtime reads 0 as none

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", Session)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: Stream())
    backend = OnnxRuntimeBackend(tiny_onnx(tmp_path / "m.onnx"), "cuda", 8, 1)
    assert made == [{"device_id": 0, "user_compute_stream": str(0x7F00)}]
    assert backend.takes_tensors and backend.input_dtype == torch.float32

    class Uint8Input(Session):
        def get_inputs(self):
            return [SimpleNamespace(name="input", type="tensor(uint8)")]

    # The host path (warm-up, the bench's engine ceiling): ORT leaves the stream it was handed running
    # when run_with_iobinding returns, so the logits are read only after that stream is drained.
    order: list[str] = []

    class Binding:
        def bind_cpu_input(self, name, batch):
            order.append("bind input")

        def bind_output(self, name, device):
            order.append(f"bind output on {device}")

        def copy_outputs_to_cpu(self):
            order.append("copy to host")
            return [np.zeros((2, 1000), np.float32)]

    backend._session = SimpleNamespace(io_binding=Binding, run_with_iobinding=lambda b: order.append("run"))
    backend._stream = SimpleNamespace(synchronize=lambda: order.append("drain the stream"))
    assert backend.infer(np.zeros((2, 4), np.float32)).shape == (2, 1000)
    assert order == ["bind input", "bind output on cuda", "run", "drain the stream", "copy to host"]

    monkeypatch.setattr(ort, "InferenceSession", Uint8Input)
    with pytest.raises(BackendUnavailable, match=r"must be float or float16, not tensor\(uint8\)"):
        OnnxRuntimeBackend(tiny_onnx(tmp_path / "m.onnx"), "cuda", 8, 1)


@pytest.mark.parametrize("ready", [None, object()], ids=["ready=None", "ready=event"])
def test_on_cuda_a_tensor_batch_is_read_on_its_own_stream_after_its_producer(tmp_path, monkeypatch, ready):
    """With ``ready`` (the event the producer recorded after writing x) the backend's stream waits for
    it; without, for the stream current when infer_tensor was called, the caller's: not for itself,
    which would order nothing. ONNX Runtime, which works on that stream (user_compute_stream), runs after."""
    streams = install_fake_cuda_streams(monkeypatch)

    class Binding:
        def bind_input(self, name, device_type, index, dtype, shape, pointer):
            streams.log.append(("bind input", shape, pointer))

        def bind_output(self, name, device_type, index, dtype, shape, pointer):
            streams.log.append(("bind output", shape))

    class Session(FakeCudaSession):
        def io_binding(self):
            return Binding()

        def run_with_iobinding(self, binding):
            streams.log.append(("run",))

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", Session)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    backend = OnnxRuntimeBackend(tiny_onnx(tmp_path / "m.onnx"), "cuda", 8, 1)
    (ours,) = streams.made
    x = torch.rand(4, 3, 2, 2)
    logits = backend.infer_tensor(x, ready)
    producer = streams.caller if ready is None else ready
    assert streams.log == [
        ("wait", ours, producer),
        ("record_stream", ours),  # x's memory is kept until our stream has read it
        ("bind input", (4, 3, 2, 2), x.data_ptr()),
        ("bind output", (4, 1000)),
        ("run",),
    ]
    assert logits.shape == (4, 1000) and torch.cuda.current_stream() is streams.caller


def test_a_silent_fallback_to_the_cpu_is_refused_with_onnx_runtimes_reason(tmp_path, monkeypatch):
    # The CPU build has no CUDA provider: asked for it anyway, ORT warns and falls back to the CPU, as
    # onnxruntime-gpu does when libcudnn or the CUDA runtime does not load.
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(BackendUnavailable) as refused:
        OnnxRuntimeBackend(tiny_onnx(tmp_path / "m.onnx"), "cuda", 8, 1)
    message = str(refused.value)
    assert "fell back to ['CPUExecutionProvider']" in message
    assert "CUDAExecutionProvider" in message.split("did not load:")[1]  # ORT's own words, not just ours


def test_an_exception_from_the_cuda_session_is_refused_with_its_text(tmp_path, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])

    def failing(*args, **kwargs):
        raise RuntimeError("CUDA failure 35: CUDA driver version is insufficient for CUDA runtime version")

    monkeypatch.setattr(ort, "InferenceSession", failing)
    with pytest.raises(BackendUnavailable, match="could not start its CUDA provider: RuntimeError: CUDA failure 35"):
        OnnxRuntimeBackend(tiny_onnx(tmp_path / "m.onnx"), "cuda", 8, 1)


@pytest.fixture
def models(tmp_path):
    fp32 = tiny_onnx(tmp_path / "alexnet.onnx")
    return fp32, read_metadata(fp32)


@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_on_cuda_auto_and_fp16_serve_the_fp16_export(models, precision):
    fp32, meta = models
    fp16 = tiny_onnx(fp16_sibling(fp32), "fp16")
    assert onnxruntime_model(Settings(onnx=fp32, precision=precision), "cuda", meta) == fp16
    assert onnxruntime_model(Settings(onnx=fp32, precision="fp32"), "cuda", meta) == fp32


def test_on_the_cpu_auto_serves_fp32_and_an_explicit_fp16_is_refused_not_served_in_fp32(models):
    fp32, meta = models
    tiny_onnx(fp16_sibling(fp32), "fp16")  # beside it, as on a CUDA host: still not for the CPU provider
    assert onnxruntime_model(Settings(onnx=fp32), "cpu", meta) == fp32
    assert onnxruntime_model(Settings(onnx=fp32, precision="fp32"), "cpu", meta) == fp32
    with pytest.raises(BackendUnavailable, match="precision fp16 was asked for, but ONNX Runtime on the CPU"):
        onnxruntime_model(Settings(onnx=fp32, precision="fp16"), "cpu", meta)
    fp16 = fp16_sibling(fp32)  # given as --onnx, an fp16 export is served as it is, in fp16
    assert onnxruntime_model(Settings(onnx=fp16, precision="fp16"), "cpu", read_metadata(fp16)) == fp16


def test_without_the_fp16_export_auto_serves_fp32_and_an_explicit_fp16_is_refused(models, caplog):
    fp32, meta = models
    assert onnxruntime_model(Settings(onnx=fp32), "cuda", meta) == fp32
    assert "serves" in caplog.text and "in fp32" in caplog.text and "--precision fp16" in caplog.text
    with pytest.raises(BackendUnavailable, match="needs the fp16 ONNX.*is missing"):
        onnxruntime_model(Settings(onnx=fp32, precision="fp16"), "cuda", meta)
    tiny_onnx(fp16_sibling(fp32), "fp16", weights_sha256="d" * 64)  # stale: other weights
    with pytest.raises(BackendUnavailable, match="holds weights"):
        onnxruntime_model(Settings(onnx=fp32, precision="fp16"), "cuda", meta)
    tiny_onnx(fp16_sibling(fp32), "fp16", input_size=227)  # stale: the same weights at other sizes
    with pytest.raises(BackendUnavailable, match="preprocesses as"):
        onnxruntime_model(Settings(onnx=fp32, precision="fp16"), "cuda", meta)
    assert onnxruntime_model(Settings(onnx=fp32), "cuda", meta) == fp32  # auto: the fp32 file, said why


def test_an_onnx_given_in_another_precision_is_served_as_it_is(tmp_path):
    int8 = tiny_onnx(tmp_path / "alexnet.int8.onnx", "int8")
    assert onnxruntime_model(Settings(onnx=int8), "cuda", read_metadata(int8)) == int8
