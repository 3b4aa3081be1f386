"""TensorRT engines from our ONNX files: fp32, fp16 (strongly typed, and TensorRT 10's flag), int8 Q/DQ.

Needs ``tensorrt`` (10 or 11) and a CUDA GPU; skipped otherwise, with the reason. Uses the synthetic
fitted-head model (tests/synthetic.py) so top-1 agreement is enforced, not just reported.

    python -m pytest tests/gpu -v      # on a GPU host, e.g. inside nvcr.io/nvidia/tensorrt
"""

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def _skip_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ModuleNotFoundError:
        return "tensorrt is not installed (pip install 'tensorrt>=10' on a CUDA host, or nvcr.io/nvidia/tensorrt)"
    except (ImportError, OSError) as exc:  # the bindings' wheel without the libraries it loads
        return f"tensorrt is installed but cannot load its libraries: {type(exc).__name__}: {exc}"
    import torch

    if not torch.cuda.is_available():
        return f"no CUDA GPU usable from torch {torch.__version__}"
    return None


SKIP_REASON = _skip_reason()
if SKIP_REASON:
    pytest.skip(SKIP_REASON, allow_module_level=True)

import tensorrt as trt  # noqa: E402
import torch  # noqa: E402

from export import quantize, to_trt  # noqa: E402
from export.to_onnx import export_and_verify  # noqa: E402
from export.trt_runner import EngineRunError, TrtEngineRunner  # noqa: E402
from export.trt_sidecar import check_engine_compatible, file_sha256, read_sidecar  # noqa: E402
from tests.synthetic import make_synthetic  # noqa: E402

HAS_FP16_FLAG = hasattr(trt.BuilderFlag, "FP16")  # TensorRT 10 yes, 11 no


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("trt")
    data = make_synthetic(root / "data")
    fp32 = export_and_verify(data["checkpoint"], root / "model.onnx", verify_batch_sizes=(1,))
    fp16 = export_and_verify(data["checkpoint"], root / "model.fp16.onnx", verify_batch_sizes=(1,), precision="fp16")
    int8 = root / "model.int8.onnx"
    quantize.run(fp32, data["calibration"], int8, data["eval"], bench_rounds=0)
    return {"fp32": fp32, "fp16": fp16, "int8": int8, "cache": root / "timing.cache"}


def _build(onnx_path, out, cache, *extra):
    return to_trt.main(
        [
            "--onnx",
            str(onnx_path),
            "--out",
            str(out),
            "--timing-cache",
            str(cache),
            "--opt-batch",
            "8",
            "--max-batch",
            "16",
            *extra,
        ]
    )


@pytest.mark.parametrize("kind", ["fp32", "fp16", "int8"])
def test_engine_from_the_onnx_precision(onnx_files, tmp_path, kind):
    out = tmp_path / f"model.{kind}.plan"
    assert _build(onnx_files[kind], out, onnx_files["cache"]) == 0
    sidecar = read_sidecar(out)
    assert (sidecar.precision, sidecar.strongly_typed) == (kind, True)
    assert (sidecar.min_batch, sidecar.opt_batch, sidecar.max_batch) == (1, 8, 16)
    assert sidecar.tensorrt_version == trt.__version__
    assert sidecar.verification["top1_agreement"] >= to_trt.MIN_TOP1_AGREEMENT[kind]
    check_engine_compatible(out, onnx_sha256=file_sha256(onnx_files[kind]))
    assert onnx_files["cache"].stat().st_size > 0


def test_fp16_from_fp32_onnx_uses_trt10_flag_or_is_refused_on_trt11(onnx_files, tmp_path, capsys):
    out = tmp_path / "model.flag.plan"
    rc = _build(onnx_files["fp32"], out, onnx_files["cache"], "--precision", "fp16")
    if HAS_FP16_FLAG:
        assert rc == 0 and read_sidecar(out).strongly_typed is False
    else:
        assert rc == 1 and "to_onnx.py --precision fp16" in capsys.readouterr().err and not out.exists()


def test_runner_respects_the_profile(onnx_files, tmp_path):
    out = tmp_path / "model.plan"
    assert _build(onnx_files["fp32"], out, onnx_files["cache"]) == 0
    runner = TrtEngineRunner(trt, out.read_bytes())
    for n in (1, 16):
        logits = runner.infer(np.zeros((n, 3, 224, 224), np.float32))
        assert logits.shape == (n, 8) and logits.dtype == np.float32
    with pytest.raises(EngineRunError, match="profile"):
        runner.infer(np.zeros((17, 3, 224, 224), np.float32))


def test_the_service_backend_serves_the_fp16_engine_built_from_the_fp16_onnx(onnx_files, tmp_path):
    """What the entrypoint builds on TensorRT 10 and 11 alike, loaded as the service loads it."""
    from export.onnx_metadata import read_metadata
    from service.backends.tensorrt import TensorRTBackend

    out = tmp_path / "alexnet.plan"
    assert _build(onnx_files["fp16"], out, onnx_files["cache"]) == 0
    backend = TensorRTBackend(out, 16, read_metadata(onnx_files["fp32"]).weights_sha256)
    assert (backend.precision, backend.batch_sizes) == ("fp16", (1, 2, 4, 8, 16))
    backend.warmup(224)
    batch = np.random.default_rng(0).standard_normal((4, 3, 224, 224), dtype=np.float32)
    logits = backend.infer(batch)
    assert logits.shape == (4, 8) and np.isfinite(logits).all()
    assert backend.takes_tensors and backend.input_dtype == torch.float32
    x = torch.from_numpy(batch).cuda()  # the engine's tensor path: the batch stays on the GPU
    on_device = backend.infer_tensor(x)
    with backend.stream_context():
        np.testing.assert_array_equal(on_device.float().cpu().numpy(), logits)


def test_a_damaged_timing_cache_does_not_stop_the_build(onnx_files, tmp_path):
    cache = tmp_path / "trt_timing.cache"
    cache.write_bytes(b"written by another TensorRT" * 64)
    assert _build(onnx_files["fp32"], tmp_path / "model.plan", cache) == 0
    assert cache.read_bytes() != b"written by another TensorRT" * 64  # a fresh cache replaced it
