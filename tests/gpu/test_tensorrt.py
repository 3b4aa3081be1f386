"""TensorRT engines from our ONNX files: fp32, fp16 (strongly typed, and TensorRT 10's flag), int8 Q/DQ.

Needs ``tensorrt`` (10 or 11) and a CUDA GPU; skipped otherwise, with the reason. Uses the synthetic
fitted-head model (tests/synthetic.py) so top-1 agreement is enforced, not just reported.

    python -m pytest tests/gpu -v      # on a GPU host, e.g. inside nvcr.io/nvidia/tensorrt
"""

import importlib.util

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def _skip_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed (pip install 'tensorrt>=10' on a CUDA host, or nvcr.io/nvidia/tensorrt)"
    import torch

    if not torch.cuda.is_available():
        return f"no CUDA GPU usable from torch {torch.__version__}"
    return None


if _skip_reason():
    pytest.skip(_skip_reason(), allow_module_level=True)

import tensorrt as trt  # noqa: E402

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
