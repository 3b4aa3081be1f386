"""ModelMetadata <-> ONNX metadata_props, without exporting a model."""

import pytest

from export.onnx_metadata import PREFIX, ModelMetadata


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
