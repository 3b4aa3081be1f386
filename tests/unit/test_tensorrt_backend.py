"""service/backends/tensorrt.py on a CPU host, with the stand-in TensorRT (tests/fake_tensorrt.py).

The engine and its sidecar are written by export/to_trt.py's own CLI (the GPU comparison replaced by
fixed numbers); the backend then meets a host that, as far as it can tell, has TensorRT 11 and a GPU.
What runs on a real GPU is in tests/gpu/.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from export import to_trt, trt_sidecar
from export.onnx_metadata import fp16_sibling
from export.trt_runner import EngineRunError
from service.backends import select_backend
from service.backends.tensorrt import TensorRTBackend, engine_batch_sizes
from service.errors import BackendUnavailable
from service.settings import Settings
from tests.fake_tensorrt import FakeTensorRT
from tests.fakes import FakeStream, install_fake_cuda_streams
from tests.tiny_onnx import WEIGHTS_SHA256, tiny_onnx

DEVICE = trt_sidecar.DeviceInfo("Fake GPU", "9.0", "11.0.0")


@pytest.fixture
def gpu_host(monkeypatch):
    """TensorRT 11 (the stand-in) and a CUDA GPU, as far as our code can tell."""
    trt = FakeTensorRT(11)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    install_fake_cuda_streams(monkeypatch)  # TrtEngineRunner's stream and the caller's
    monkeypatch.setattr(trt_sidecar, "current_device", lambda gpu_index=0: DEVICE)
    monkeypatch.setattr(to_trt, "load_tensorrt", lambda: trt)
    monkeypatch.setattr(
        to_trt,
        "compare_with_onnxruntime",
        lambda *a: {"top1_agreement": 1.0, "max_abs_diff": 1e-3, "relative_max_diff": 1e-4, "images": 3},
    )
    return trt


def build(tmp_path, source, *flags: str):
    engine = tmp_path / "alexnet.plan"
    argv = ["--onnx", str(source), "--out", str(engine), "--timing-cache", str(tmp_path / "c"), *flags]
    assert to_trt.main(argv) == 0
    return engine


@pytest.fixture
def models(tmp_path):
    """alexnet.onnx (fp32) and alexnet.fp16.onnx beside it, the same weights, as the entrypoint leaves them."""
    fp32 = tiny_onnx(tmp_path / "alexnet.onnx")
    return fp32, tiny_onnx(fp16_sibling(fp32), "fp16")


def test_auto_picks_tensorrt_with_the_fp16_engine_built_from_the_fp16_onnx(gpu_host, models, tmp_path):
    fp32, fp16 = models
    engine = build(tmp_path, fp16)  # what the entrypoint does on TensorRT 10 and 11 alike
    assert trt_sidecar.read_sidecar(engine).onnx_path == str(fp16.resolve())
    selection = select_backend(Settings(onnx=fp32, engine=engine, max_batch_size=32))
    backend = selection.backend
    assert (backend.name, backend.device, backend.precision) == ("tensorrt", "cuda:0", "fp16")
    assert selection.reason.startswith("auto on cuda") and not selection.skipped
    assert backend.batch_sizes == (1, 2, 4, 8, 16, 32)  # warmed up and padded to; the profile is 1..64
    assert backend.describe()["batch_sizes"] == [1, 2, 4, 8, 16, 32]


def test_a_tensor_batch_is_read_and_answered_in_place_on_the_runners_stream_after_its_producer(
    gpu_host, models, tmp_path
):
    _, fp16 = models
    backend = TensorRTBackend(build(tmp_path, fp16), 32, WEIGHTS_SHA256)
    assert backend.takes_tensors and backend.input_dtype == torch.float32 and not backend.channels_last
    x = torch.rand(4, 3, 224, 224)  # CPU memory standing in for the GPU's: the stand-in reads its pointer
    ready = object()  # the event the engine's prepare stream recorded after writing x
    with backend.stream_context():
        logits = backend.infer_tensor(x, ready)
    torch.testing.assert_close(logits, x.mean(dim=(2, 3)))  # the network's answer, in the tensor returned
    assert backend._runner.stream.waited == [ready]
    assert gpu_host.calls[-1] == ("execute", FakeStream.cuda_stream, (4, 3, 224, 224))
    backend.infer_tensor(x)  # without an event: after the caller's stream, the one current now
    assert backend._runner.stream.waited == [ready, torch.cuda.current_stream()]
    with pytest.raises(ValueError, match="contiguous torch.float32 batch"):
        backend.infer_tensor(x.contiguous(memory_format=torch.channels_last), ready)  # its pointer would lie
    with pytest.raises(ValueError, match="not torch.float16"):
        backend.infer_tensor(x.half(), ready)
    with pytest.raises(EngineRunError, match="outside the engine's optimization profile"):
        backend.infer_tensor(torch.zeros(65, 3, 1, 1), ready)  # the profile is 1..64
    gpu_host.refused_addresses.add(x.data_ptr())
    with pytest.raises(EngineRunError, match="refused the address of 'input'"):
        backend.infer_tensor(x, ready)


def test_precision_comes_from_the_sidecar_and_an_explicit_one_must_match(gpu_host, models, tmp_path):
    fp32, _ = models
    engine = build(tmp_path, fp32)
    backend = select_backend(Settings(onnx=fp32, engine=engine, backend="tensorrt", precision="auto")).backend
    assert backend.precision == "fp32"
    assert select_backend(Settings(onnx=fp32, engine=engine, backend="tensorrt", precision="fp32")).backend
    with pytest.raises(BackendUnavailable, match="fp32 engine and precision fp16 was asked for"):
        select_backend(Settings(onnx=fp32, engine=engine, backend="tensorrt", precision="fp16"))


@pytest.mark.parametrize(
    "profile, max_batch_size, sizes",
    [((1, 32, 64), 32, (1, 2, 4, 8, 16, 32)), ((1, 8, 48), 48, (1, 2, 4, 8, 16, 32, 48)), ((3, 8, 16), 16, (4, 8, 16))],
)
def test_batch_sizes_stay_within_the_engines_profile(gpu_host, models, tmp_path, profile, max_batch_size, sizes):
    _, fp16 = models
    lo, opt, hi = profile
    engine = build(tmp_path, fp16, "--min-batch", str(lo), "--opt-batch", str(opt), "--max-batch", str(hi))
    gpu_host.Runtime = FakeTensorRT(11, profile=profile).Runtime  # the engine's profile, as TensorRT reads it
    assert TensorRTBackend(engine, max_batch_size, WEIGHTS_SHA256).batch_sizes == sizes


def test_a_max_batch_size_outside_the_profile_is_refused_with_what_to_do(gpu_host, models, tmp_path):
    _, fp16 = models
    engine = build(tmp_path, fp16, "--max-batch", "16", "--opt-batch", "8")
    gpu_host.Runtime = FakeTensorRT(11, profile=(1, 8, 16)).Runtime
    with pytest.raises(BackendUnavailable, match=r"max_batch_size 32 is outside the engine's profile \(1..16\)"):
        TensorRTBackend(engine, 32, WEIGHTS_SHA256)
    assert engine_batch_sizes(16, 1, 16) == (1, 2, 4, 8, 16)
    with pytest.raises(BackendUnavailable, match="--max-batch 2"):
        engine_batch_sizes(2, 4, 16)  # below the profile's minimum


def test_an_engine_is_refused_when_its_onnx_changed_or_holds_other_weights(gpu_host, models, tmp_path):
    fp32, fp16 = models
    engine = build(tmp_path, fp16)
    with pytest.raises(BackendUnavailable, match="holds weights 'test', not those of the ONNX model being served"):
        TensorRTBackend(engine, 32, "d" * 64)
    tiny_onnx(fp16, "fp16", features=5)  # re-exported since the build
    with pytest.raises(BackendUnavailable, match="onnx_sha256"):
        select_backend(Settings(onnx=fp32, engine=engine, backend="tensorrt"))
    fp16.unlink()
    with pytest.raises(BackendUnavailable, match="the ONNX it was built from .* is gone"):
        TensorRTBackend(engine, 32, WEIGHTS_SHA256)


def test_an_engine_built_for_another_gpu_is_skipped_under_auto_with_the_reason(gpu_host, models, tmp_path, monkeypatch):
    fp32, fp16 = models
    engine = build(tmp_path, fp16)
    monkeypatch.setattr(
        trt_sidecar, "current_device", lambda gpu_index=0: DEVICE.__class__("Other GPU", "8.0", "11.0.0")
    )
    with pytest.raises(BackendUnavailable, match="gpu_name 'Fake GPU' in the sidecar, 'Other GPU' here"):
        select_backend(Settings(onnx=fp32, engine=engine, backend="tensorrt"))


def test_the_bindings_without_their_libraries_are_unavailable_not_a_crash(monkeypatch, tmp_path, models):
    package = tmp_path / "site" / "tensorrt"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        textwrap.dedent("""
        raise ImportError("libnvinfer.so.11: cannot open shared object file: No such file or directory")
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    with pytest.raises(BackendUnavailable, match="tensorrt is installed but cannot load its libraries.*libnvinfer"):
        TensorRTBackend(tmp_path / "alexnet.plan", 32, WEIGHTS_SHA256)


@pytest.mark.parametrize("backend", ["tensorrt", "auto"])
def test_a_checkpoint_is_served_only_by_an_engine_whose_onnx_holds_its_weights(gpu_host, models, tmp_path, backend):
    from service.errors import WrongWeights
    from tests.fakes import fake_checkpoint

    fp32, fp16 = models
    engine = build(tmp_path, fp16)
    same = fake_checkpoint(tmp_path / "same.pt", WEIGHTS_SHA256)
    selection = select_backend(Settings(onnx=fp32, engine=engine, backend=backend, checkpoint=same))
    assert selection.backend.name == "tensorrt"
    other = fake_checkpoint(tmp_path / "other.pt", "d" * 64)
    with pytest.raises(WrongWeights, match="--backend torch"):  # not auto's next backend either
        select_backend(Settings(onnx=fp32, engine=engine, backend=backend, checkpoint=other))
