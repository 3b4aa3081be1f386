"""ModelMetadata <-> ONNX metadata_props, without exporting a model."""

import pytest

from export.onnx_metadata import PREFIX, ModelMetadata, fp16_sibling, fp16_sibling_mismatch
from tests.tiny_onnx import tiny_onnx


def test_untrained_flag_and_round_trip():
    meta = ModelMetadata(
        arch="alexnet2012",
        labels=["a", "b"],
        input_size=227,
        resize_size=256,
        weights="untrained",
        weights_sha256="0" * 64,
        precision="fp16",
    )
    props = meta.to_props()
    assert all(key.startswith(PREFIX) for key in props)
    back = ModelMetadata.from_props({**props, PREFIX + "quantization": "{}", "other": "kept"})
    assert back == meta and back.untrained


def test_missing_keys_name_the_fix():
    with pytest.raises(ValueError, match="to_onnx.py"):
        ModelMetadata.from_props({PREFIX + "arch": '"torchvision"'}, source="m.onnx")


def test_why_the_fp16_sibling_cannot_stand_in_for_its_fp32_export(tmp_path):
    fp32 = tiny_onnx(tmp_path / "alexnet.onnx")
    fp16 = fp16_sibling(fp32)
    assert "missing" in fp16_sibling_mismatch(fp32)
    tiny_onnx(fp16, "fp32")
    assert "is fp32, not fp16" in fp16_sibling_mismatch(fp32)
    tiny_onnx(fp16, "fp16", weights_sha256="d" * 64)
    assert "holds weights" in fp16_sibling_mismatch(fp32)
    tiny_onnx(fp16, "fp16", input_size=227)
    assert "preprocesses as" in fp16_sibling_mismatch(fp32)
    tiny_onnx(fp16, "fp16")
    assert fp16_sibling_mismatch(fp32) is None
    fp16.write_bytes(b"not onnx")
    assert "no usable metadata" in fp16_sibling_mismatch(fp32)
