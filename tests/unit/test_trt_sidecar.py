"""The engine sidecar: round trip, and refusing engines built for another GPU / TensorRT / ONNX.

Runs without tensorrt or a GPU: the "current device" is injected.
"""

import json
import sys

import pytest

from export.trt_sidecar import (
    DeviceInfo,
    EngineMismatch,
    EngineSidecar,
    SidecarError,
    check_engine_compatible,
    file_sha256,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)

H100 = DeviceInfo(gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0", tensorrt_version="10.13.3.9")


@pytest.fixture
def engine(tmp_path):
    path = tmp_path / "model.plan"
    path.write_bytes(b"not really an engine, but hashed like one")
    sidecar = EngineSidecar(
        tensorrt_version=H100.tensorrt_version,
        gpu_name=H100.gpu_name,
        compute_capability=H100.compute_capability,
        precision="fp16",
        strongly_typed=True,
        input_name="input",
        output_name="logits",
        input_shape=[3, 224, 224],
        min_batch=1,
        opt_batch=32,
        max_batch=64,
        workspace_mib=2048,
        onnx_sha256="a" * 64,
        engine_sha256=file_sha256(path),
        build_time_s=12.5,
        built_at="2026-01-01T00:00:00+00:00",
        verification={"top1_agreement": 1.0},
        model_metadata={"labels": ["cat", "dog"], "input_size": 224},
    )
    write_sidecar(path, sidecar)
    return path, sidecar


def test_sidecar_path_convention():
    assert sidecar_path("artifacts/model.plan").as_posix() == "artifacts/model.plan.json"


def test_round_trip(engine):
    path, sidecar = engine
    assert read_sidecar(path) == sidecar
    assert read_sidecar(path).profile_shapes() == {
        "min": [1, 3, 224, 224],
        "opt": [32, 3, 224, 224],
        "max": [64, 3, 224, 224],
    }


def test_same_host_passes(engine):
    path, sidecar = engine
    check_engine_compatible(path, onnx_sha256=sidecar.onnx_sha256, device=H100)


@pytest.mark.parametrize(
    "field, other",
    [
        ("gpu_name", "NVIDIA A100-SXM4-80GB"),
        ("compute_capability", "8.0"),
        ("tensorrt_version", "11.0.0.5"),
    ],
)
def test_other_device_is_refused_and_named(engine, field, other):
    path, _ = engine
    device = DeviceInfo(**{**H100.__dict__, field: other})
    with pytest.raises(EngineMismatch) as info:
        check_engine_compatible(path, device=device)
    assert set(info.value.differences) == {field}
    assert field in str(info.value) and other in str(info.value) and "to_trt.py" in str(info.value)


def test_other_onnx_is_refused(engine):
    path, _ = engine
    with pytest.raises(EngineMismatch) as info:
        check_engine_compatible(path, onnx_sha256="b" * 64, device=H100)
    assert set(info.value.differences) == {"onnx_sha256"}


def test_stale_sidecar_is_refused(engine):
    path, _ = engine
    path.write_bytes(b"an engine rebuilt without its sidecar")
    with pytest.raises(EngineMismatch) as info:
        check_engine_compatible(path, device=H100)
    assert set(info.value.differences) == {"engine_sha256"}
    check_engine_compatible(path, device=H100, verify_engine_hash=False)


def test_missing_or_foreign_sidecar(tmp_path):
    path = tmp_path / "model.plan"
    path.write_bytes(b"x")
    with pytest.raises(SidecarError, match="no sidecar"):
        check_engine_compatible(path, device=H100)
    sidecar_path(path).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(SidecarError, match="not an alexnet-serve"):
        read_sidecar(path)
    sidecar_path(path).write_text("{broken")
    with pytest.raises(SidecarError, match="unreadable"):
        read_sidecar(path)


def test_importable_without_tensorrt(monkeypatch):
    """The service imports this module on CPU hosts; current_device() then names what is missing."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    from export.trt_sidecar import current_device

    with pytest.raises(SidecarError, match="tensorrt is not installed"):
        current_device()
