"""export/to_trt.py without TensorRT: the exit-2 message, the TensorRT 10/11 precision plan, the
verification rules, and the build call sequence against a stand-in for the ``tensorrt`` module.

The stand-in only proves that our code calls the API names and signatures documented for TensorRT 10
and 11 in a sensible order; whether TensorRT accepts the network is checked in tests/gpu/.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from export import to_trt
from export.to_trt import BuildError, BuildPlan, MissingPrerequisite, load_tensorrt, plan_build
from tests.fake_tensorrt import FakeTensorRT
from tests.tiny_onnx import tiny_onnx

ROOT = Path(__file__).resolve().parents[2]


def test_main_without_tensorrt_exits_2_with_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    assert to_trt.main(["--onnx", "model.onnx", "--out", "model.plan"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "tensorrt is not installed" in err[0] and "nvcr.io/nvidia/tensorrt" in err[0]


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_cli_without_tensorrt_exits_2(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "export/to_trt.py"),
            "--onnx",
            str(tmp_path / "m.onnx"),
            "--out",
            str(tmp_path / "m.plan"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "tensorrt is not installed" in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "m.plan").exists()


def _importer(torch):
    return lambda name: SimpleNamespace(__version__="10.13") if name == "tensorrt" else torch


def test_bindings_without_their_libraries_are_a_missing_prerequisite():
    def bindings_only(name):
        raise ImportError("libnvinfer.so.11: cannot open shared object file: No such file or directory")

    with pytest.raises(MissingPrerequisite, match="cannot load its libraries.*libnvinfer"):
        load_tensorrt(bindings_only)


def test_no_cuda_is_a_missing_prerequisite():
    cpu_torch = SimpleNamespace(__version__="2.13.0+cpu", version=SimpleNamespace(cuda=None))
    with pytest.raises(MissingPrerequisite, match="CPU build"):
        load_tensorrt(_importer(cpu_torch))
    no_gpu = SimpleNamespace(
        __version__="2.13.0", version=SimpleNamespace(cuda="12.8"), cuda=SimpleNamespace(is_available=lambda: False)
    )
    with pytest.raises(MissingPrerequisite, match="no CUDA GPU"):
        load_tensorrt(_importer(no_gpu))
    gpu = SimpleNamespace(
        __version__="2.13.0", version=SimpleNamespace(cuda="12.8"), cuda=SimpleNamespace(is_available=lambda: True)
    )
    assert load_tensorrt(_importer(gpu)).__version__ == "10.13"


@pytest.mark.parametrize("has_fp16_flag", [True, False], ids=["trt10", "trt11"])
@pytest.mark.parametrize("onnx_precision", ["fp32", "fp16", "int8"])
def test_precision_of_the_onnx_builds_strongly_typed(onnx_precision, has_fp16_flag):
    for requested in (None, onnx_precision):
        assert plan_build(requested, onnx_precision, has_fp16_flag) == BuildPlan(onnx_precision, True, False)


def test_fp16_from_fp32_onnx_uses_the_flag_on_trt10_and_is_refused_on_trt11():
    assert plan_build("fp16", "fp32", has_fp16_flag=True) == BuildPlan("fp16", False, True)
    with pytest.raises(BuildError, match="to_onnx.py --precision fp16"):
        plan_build("fp16", "fp32", has_fp16_flag=False)


def test_int8_needs_a_qdq_onnx_and_precisions_do_not_mix():
    with pytest.raises(BuildError, match="quantize.py"):
        plan_build("int8", "fp32", has_fp16_flag=True)
    with pytest.raises(BuildError, match="not supported"):
        plan_build("fp32", "int8", has_fp16_flag=True)


def test_verification_rules():
    assert to_trt.verification_problems("fp32", False, 1.0, 1e-5) == []
    assert "fp32 max |diff|" in to_trt.verification_problems("fp32", False, 1.0, 1e-2)[0]
    assert "top-1 agreement" in to_trt.verification_problems("int8", False, 0.5, 0.3)[0]
    assert to_trt.verification_problems("int8", True, 0.5, 0.3) == []  # untrained: reported only
    assert "non-finite" in to_trt.verification_problems("fp16", True, 1.0, float("nan"))[0]


@pytest.mark.parametrize("version", [10, 11])
def test_build_call_sequence_with_a_stand_in(tmp_path, version):
    trt = FakeTensorRT(version)
    onnx_path, cache = tmp_path / "m.fp16.onnx", tmp_path / "cache" / "trt.cache"
    plan = plan_build(None, "fp16", hasattr(trt.BuilderFlag, "FP16"))
    engine = to_trt.build_engine(trt, onnx_path, plan, (3, 224, 224), (1, 32, 64), 1024, cache)
    assert engine == b"engine-bytes" and cache.read_bytes() == b"timing-cache"
    assert ("create_network", 1) in trt.calls  # 1 << STRONGLY_TYPED
    assert ("workspace", "WORKSPACE", 1024 << 20) in trt.calls
    assert ("profile", ("input", (1, 3, 224, 224), (32, 3, 224, 224), (64, 3, 224, 224))) in trt.calls
    assert not [c for c in trt.calls if c[0] == "set_flag"]
    to_trt.build_engine(trt, onnx_path, plan, (3, 224, 224), (1, 32, 64), 1024, cache)
    assert ("create_timing_cache", b"timing-cache") in trt.calls  # the second build reuses the cache


@pytest.mark.parametrize(
    "cache_error",
    [RuntimeError("Serialized timing cache is from another TensorRT version"), "none", "refused"],
    ids=["raises", "returns-none", "set-refused"],
)
def test_a_timing_cache_from_another_tensorrt_is_deleted_and_the_build_goes_on(tmp_path, capsys, cache_error):
    """After a TensorRT upgrade the saved cache no longer loads; the engine must still be built."""
    trt = FakeTensorRT(11, cache_error=cache_error)
    cache = tmp_path / "trt_timing.cache"
    cache.write_bytes(b"cache written by TensorRT 10")
    plan = plan_build(None, "fp16", False)
    engine = to_trt.build_engine(trt, tmp_path / "m.fp16.onnx", plan, (3, 224, 224), (1, 8, 16), 512, cache)
    assert engine == b"engine-bytes"
    assert ("set_timing_cache", b"", True) in trt.calls  # built with a new, empty cache
    assert cache.read_bytes() == b"timing-cache" and cache.stat().st_mode & 0o777 == 0o644  # saved afresh
    out = capsys.readouterr().out
    assert "timing cache" in out and "unusable here" in out and "deleted" in out
    assert "timing cache new" in out


def test_trt10_fp16_flag_path_with_a_stand_in(tmp_path):
    trt = FakeTensorRT(10)
    plan = plan_build("fp16", "fp32", True)
    to_trt.build_engine(trt, tmp_path / "m.onnx", plan, (3, 224, 224), (1, 8, 16), 512, None)
    assert ("create_network", 0) in trt.calls and ("set_flag", "FP16") in trt.calls


def test_fp32_clears_tf32(tmp_path):
    trt = FakeTensorRT(11)
    to_trt.build_engine(trt, tmp_path / "m.onnx", plan_build(None, "fp32", False), (3, 224, 224), (1, 8, 16), 512, None)
    assert ("clear_flag", "TF32") in trt.calls


@pytest.mark.parametrize("agreement, rc", [(1.0, 0), (0.5, 1)])
def test_main_writes_engine_and_sidecar_only_when_verified(tmp_path, monkeypatch, capsys, agreement, rc):
    """The whole CLI flow with the stand-in TensorRT; the GPU comparison is replaced by fixed numbers."""
    from export import trt_sidecar

    trt = FakeTensorRT(11)
    monkeypatch.setattr(to_trt, "load_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_sidecar, "current_device", lambda: trt_sidecar.DeviceInfo("Fake GPU", "9.0", "11.0.0"))
    monkeypatch.setattr(
        to_trt,
        "compare_with_onnxruntime",
        lambda *a: {"top1_agreement": agreement, "max_abs_diff": 1e-3, "relative_max_diff": 1e-4, "images": 97},
    )
    onnx_path, out = tiny_onnx(tmp_path / "m.int8.onnx", "int8"), tmp_path / "m.plan"
    assert to_trt.main(["--onnx", str(onnx_path), "--out", str(out), "--timing-cache", str(tmp_path / "c")]) == rc
    printed = capsys.readouterr()
    if rc:
        assert "not written" in printed.err and not out.exists() and not trt_sidecar.sidecar_path(out).exists()
        return
    assert out.read_bytes() == b"engine-bytes"
    for step in ("parsing", "building", "verifying", "done:"):
        assert f"[to_trt] {step}" in printed.out or f"[to_trt]   {step}" in printed.out, step
    sidecar = trt_sidecar.read_sidecar(out)
    assert (sidecar.precision, sidecar.strongly_typed, sidecar.gpu_name) == ("int8", True, "Fake GPU")
    assert sidecar.onnx_sha256 == trt_sidecar.file_sha256(onnx_path)
    assert sidecar.onnx_path == str(onnx_path.resolve())  # the service checks the engine against this file
    assert sidecar.model_metadata["weights_sha256"] == "c" * 64 and sidecar.verification["images"] == 97
    assert out.stat().st_mode & 0o777 == 0o644 and trt_sidecar.sidecar_path(out).stat().st_mode & 0o777 == 0o644
    trt_sidecar.check_engine_compatible(
        out, onnx_sha256=sidecar.onnx_sha256, device=trt_sidecar.DeviceInfo("Fake GPU", "9.0", "11.0.0")
    )
