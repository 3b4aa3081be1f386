"""export/to_onnx.py: it writes the preprocessing the checkpoint was trained with into the ONNX metadata
(where the service takes its resize/crop sizes and mean/std from), and refuses a file that is not a
checkpoint in one line. Without ONNX Runtime: tests/unit/test_onnxruntime_extra.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from export.to_onnx import ExportError, main, model_metadata
from model.alexnet import build
from model.weights import LoadedModel, save_checkpoint
from service.backends import select_backend
from service.preprocess import PreprocessConfig
from service.settings import Settings

LABELS = ["a", "b"]
# As model/train.py records them for docs/training.md's CPU recipe (--resize-size 72 --crop-size 64).
TRAINED_AT = {"source": "trained", "resize_size": 72, "crop_size": 64}


def _loaded(arch: str = "torchvision", **provenance) -> LoadedModel:
    """What model_metadata reads (arch, labels, weights, provenance), without building AlexNet."""
    return LoadedModel(torch.nn.Identity(), arch, LABELS, "0" * 64, dict(provenance))


@pytest.mark.slow  # ~25 s on 2 cores: the export of a full-size AlexNet (2 classes)
def test_the_service_preprocesses_an_export_as_the_checkpoint_was_trained(tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = save_checkpoint(
        tmp_path / "best.pt", build("torchvision", num_classes=2), "torchvision", LABELS, TRAINED_AT
    )
    out = tmp_path / "alexnet.onnx"
    assert main(["--checkpoint", str(checkpoint), "--out", str(out), "--verify-batch-sizes", "1"]) == 0
    assert "resize 72, crop 64" in capsys.readouterr().out

    selection = select_backend(Settings(onnx=out, backend="onnxruntime", max_batch_size=1, warmup=False))
    try:
        config = PreprocessConfig.for_model(selection.metadata, max_pixels=10**6, jpeg_draft=False)
        assert (config.resize_size, config.crop_size) == (72, 64)
        logits = selection.backend.infer(np.zeros((1, 3, 64, 64), np.float32))  # the graph takes the 64 crop
        assert logits.shape == (1, 2)
    finally:
        selection.backend.close()
    dims = onnx.load(str(out), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 64, 64]


@pytest.mark.parametrize("arch, sizes", [("torchvision", (256, 224)), ("alexnet2012", (256, 227))])
def test_weights_that_record_no_preprocessing_get_the_arch_defaults(arch, sizes):
    metadata, source = model_metadata(_loaded(arch, source="imported:alexnet-owt-7be5be79.pth"))
    assert (metadata.resize_size, metadata.input_size) == sizes
    assert "defaults" in source


def test_recorded_mean_and_std_are_carried_too():
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    metadata, source = model_metadata(_loaded(**TRAINED_AT, mean=mean, std=std), precision="fp16")
    assert (metadata.resize_size, metadata.input_size) == (72, 64)
    assert (metadata.mean, metadata.std, metadata.precision) == (tuple(mean), tuple(std), "fp16")
    assert source == "recorded in the checkpoint"


@pytest.mark.parametrize(
    "recorded, message",
    [
        ({"resize_size": 72, "crop_size": 32}, "63 <= crop_size"),  # torchvision's smallest input is 63
        ({"resize_size": 72, "crop_size": 80}, "crop_size <= resize_size"),
        ({"resize_size": 72, "crop_size": 64, "mean": [0.5, 0.5]}, "unusable preprocessing"),
    ],
)
def test_recorded_preprocessing_the_model_cannot_take_is_refused(recorded, message):
    with pytest.raises(ExportError, match=message):
        model_metadata(_loaded(**recorded))


def test_a_file_that_is_not_a_checkpoint_is_one_error_line(tmp_path, capsys):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(photo)
    assert main(["--checkpoint", str(photo), "--out", str(tmp_path / "alexnet.onnx")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"[to_onnx] error: {photo}: not a PyTorch checkpoint"), lines
    assert "weights_only" not in lines[0]  # torch's advice to unpickle it anyway is not for this file
    assert not (tmp_path / "alexnet.onnx").exists()


@pytest.mark.parametrize(
    "argv, out",
    [
        (["--precision", "fp16"], "artifacts/alexnet.fp16.onnx"),  # never over the fp32 file the service reads
        ([], "artifacts/alexnet.onnx"),
        (["--precision", "fp16", "--out", "x.onnx"], "x.onnx"),
    ],
)
def test_out_defaults_by_precision(argv, out, monkeypatch):
    import export.to_onnx as to_onnx

    written = []
    monkeypatch.setattr(to_onnx, "export_and_verify", lambda checkpoint, out, *a, **kw: written.append(out))
    assert main(argv) == 0
    assert written == [Path(out)]


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--opset", "17"], "--opset"),  # torch would write 18 anyway
        (["--opset", "25"], "--opset"),  # outside the tested 18-20
        (["--verify-batch-sizes", "1", "0"], "--verify-batch-sizes"),
        (["--arch", "resnet"], "--arch"),
        (["--tolerance", "-1"], "--tolerance"),  # no export could pass it
        (["--tolerance", "nan"], "--tolerance"),
    ],
)
def test_flags_outside_what_the_export_takes_are_usage_errors(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_an_out_folder_is_refused_before_the_export(tmp_path, capsys, monkeypatch):
    import export.to_onnx as to_onnx

    monkeypatch.setattr(to_onnx, "load_model", lambda *a: pytest.fail("loaded before checking --out"))
    assert main(["--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"[to_onnx] error: --out {tmp_path} is a folder; pass a file name, e.g. {tmp_path / 'alexnet.onnx'}"
    )


def test_an_out_that_cannot_be_written_is_refused_before_the_export(tmp_path, capsys, monkeypatch):
    import export.to_onnx as to_onnx

    monkeypatch.setattr(to_onnx, "load_model", lambda *a: pytest.fail("loaded before checking --out"))
    (tmp_path / "notes").write_text("a file where a folder would go")
    out = tmp_path / "notes" / "alexnet.onnx"
    assert main(["--out", str(out)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"[to_onnx] error: --out {out}: {tmp_path / 'notes'} is a file, not a folder"
    )


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import export.to_onnx as to_onnx

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(to_onnx, "load_model", interrupted)
    assert main(["--out", str(tmp_path / "alexnet.onnx")]) == 130
    assert capsys.readouterr().err == "[to_onnx] interrupted; no file is left half-written\n"
    assert list(tmp_path.iterdir()) == []


def test_an_arch_other_than_the_checkpoints_is_refused(tmp_path, capsys, monkeypatch):
    import export.to_onnx as to_onnx

    monkeypatch.setattr(to_onnx, "load_model", lambda path, arch: _loaded("torchvision"))
    monkeypatch.setattr(to_onnx, "export_model", lambda *a: pytest.fail("exported a model of another arch"))
    out = tmp_path / "alexnet.onnx"
    assert main(["--checkpoint", "best.pt", "--arch", "alexnet2012", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "best.pt holds a 'torchvision' model, not 'alexnet2012'" in err and "--arch torchvision" in err
    assert not out.exists()
