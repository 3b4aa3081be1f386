"""model/weights.py: our checkpoint round trip and its refusals, torchvision-layout import, untrained."""

from __future__ import annotations

import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from model.alexnet import build
from model.weights import (
    TORCHVISION_WEIGHTS_URL,
    UNTRAINED,
    CheckpointError,
    checkpoint_weights_sha256,
    file_sha256,
    import_torchvision_weights,
    load_checkpoint,
    load_model,
    load_training_checkpoint,
    save_checkpoint,
    state_dict_sha256,
    untrained_model,
)
from model.weights import main as weights_main

CLASSES = 10
LABELS = [f"class_{i}" for i in range(CLASSES)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A seeded torchvision-layout model with 10 classes and its checkpoint file (written once: ~230 MB)."""
    torch.manual_seed(1)
    model = build("torchvision", num_classes=CLASSES).eval()
    path = tmp_path_factory.mktemp("ckpt") / "alexnet.pt"
    save_checkpoint(
        path,
        model,
        "torchvision",
        LABELS,
        {"source": "trained", "dataset": "unit"},
        epoch=3,
        step=42,
        args={"lr": 0.01},
    )
    return model, path


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(123)
    with torch.inference_mode():
        return model.eval()(torch.randn(2, 3, 224, 224))


def test_round_trip_preserves_outputs_exactly(trained):
    model, path = trained
    loaded = load_checkpoint(path)
    assert loaded.arch == "torchvision" and loaded.labels == LABELS
    assert loaded.provenance["source"] == "trained" and "saved" in loaded.provenance
    assert loaded.weights_sha256 == state_dict_sha256(model.state_dict())
    assert torch.equal(_outputs(loaded.model), _outputs(model))


def test_training_state_comes_back(trained):
    _, path = trained
    loaded, state = load_training_checkpoint(path)
    assert state == {"epoch": 3, "step": 42, "args": {"lr": 0.01}}
    assert not loaded.untrained


def _tensor_record_offset(path: Path) -> tuple[int, int]:
    """(offset, size) in the file of the largest stored tensor's bytes (torch.save's zip stores them raw)."""
    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def test_truncated_file_is_refused(trained, tmp_path):
    _, path = trained
    bad = tmp_path / "truncated.pt"
    data = path.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted") as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value)


def test_bit_flip_in_tensor_data_is_refused(trained, tmp_path):
    _, path = trained
    bad = tmp_path / "flipped.pt"
    shutil.copyfile(path, bad)
    offset, size = _tensor_record_offset(bad)
    with open(bad, "r+b") as f:
        f.seek(offset + size // 2)
        byte = f.read(1)[0]
        f.seek(offset + size // 2)
        f.write(bytes([byte ^ 0x10]))
    # Either torch's zip reader notices (CRC) or our weights hash does; both say "corrupted".
    with pytest.raises(CheckpointError, match="corrupted") as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value)


def test_weights_changed_after_hashing_are_refused(trained, tmp_path):
    _, path = trained
    payload = torch.load(path, weights_only=True)
    payload["model"]["classifier.6.bias"][0] += 1.0
    bad = tmp_path / "tampered.pt"
    torch.save(payload, bad)
    with pytest.raises(CheckpointError, match="weights hash mismatch"):
        load_checkpoint(bad)


def test_wrong_arch_is_refused(trained, tmp_path):
    model, _ = trained
    bad = save_checkpoint(tmp_path / "wrong_arch.pt", model, "alexnet2012", LABELS, {"source": "trained"})
    with pytest.raises(CheckpointError, match="alexnet2012"):
        load_checkpoint(bad)


def test_wrong_shape_is_refused(trained, tmp_path):
    _, path = trained
    payload = torch.load(path, weights_only=True)
    payload["model"]["classifier.1.weight"] = torch.zeros(4096, 100)
    payload["weights_sha256"] = state_dict_sha256(payload["model"])  # a consistent but wrong file
    bad = tmp_path / "wrong_shape.pt"
    torch.save(payload, bad)
    with pytest.raises(CheckpointError, match=r"classifier\.1\.weight has shape \(4096, 100\)"):
        load_checkpoint(bad)


def test_labels_must_match_classes(tmp_path):
    with pytest.raises(CheckpointError, match="3 labels"):
        save_checkpoint(tmp_path / "x.pt", build("torchvision", num_classes=2), "torchvision", ["a", "b", "c"], {})


def test_torchvision_state_dict_with_hash_in_name_loads(trained, tmp_path):
    model, _ = trained
    raw = tmp_path / "raw.pth"
    torch.save(model.state_dict(), raw)  # exactly torchvision's published file layout
    named = tmp_path / f"alexnet-owt-{file_sha256(raw)[:8]}.pth"
    raw.rename(named)
    loaded = import_torchvision_weights(named)
    assert loaded.provenance["source"] == f"imported:{named.name}"
    assert len(loaded.labels) == CLASSES
    assert torch.equal(_outputs(loaded.model), _outputs(model))
    assert load_model(named).weights_sha256 == loaded.weights_sha256  # load_model falls back to import

    wrong = tmp_path / (
        "alexnet-owt-00000000.pth" if not file_sha256(named).startswith("00000000") else "alexnet-owt-11111111.pth"
    )
    named.rename(wrong)
    with pytest.raises(CheckpointError, match="SHA-256 mismatch") as err:
        import_torchvision_weights(wrong)
    # which file, the hash its name promises, the hash it has, and what to do
    expected = wrong.name.split("-")[-1].removesuffix(".pth")
    assert str(wrong) in str(err.value) and f"{expected}..." in str(err.value)
    assert file_sha256(wrong) in str(err.value) and "delete it" in str(err.value)


def test_a_damaged_published_file_says_how_to_get_it_again(tmp_path):
    damaged = tmp_path / Path(TORCHVISION_WEIGHTS_URL).name  # e.g. an interrupted download
    damaged.write_bytes(b"\x80\x02 truncated")
    with pytest.raises(CheckpointError, match="SHA-256 mismatch") as err:
        load_model(damaged)  # as the service's entrypoint loads an alexnet-owt-*.pth it finds
    message = str(err.value)
    assert str(damaged) in message and file_sha256(damaged) in message
    assert "python -m model.weights --download" in message and TORCHVISION_WEIGHTS_URL in message


def test_the_cli_reports_errors_on_stderr_with_exit_2(tmp_path, capsys):
    missing = tmp_path / "alexnet-owt-12345678.pth"
    assert weights_main(["--import-file", str(missing), "--out", str(tmp_path / "alexnet.pt")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and "no such checkpoint file" in err
    assert not (tmp_path / "alexnet.pt").exists()


def test_untrained_model_says_so():
    first, second = untrained_model("torchvision", seed=5), untrained_model("torchvision", seed=5)
    assert first.provenance["source"] == UNTRAINED and first.untrained
    assert first.weights_sha256 == second.weights_sha256  # seeded: the same random weights every time
    assert load_model(None).provenance["source"] == UNTRAINED


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")


def test_non_tensor_in_state_dict_is_refused(tmp_path):
    payload = {
        "format": "alexnet-serve-checkpoint",
        "version": 1,
        "arch": "torchvision",
        "num_classes": 1,
        "labels": ["a"],
        "model": {"features.0.weight": 3},
        "weights_sha256": "0" * 64,
    }
    bad = tmp_path / "non_tensor.pt"
    torch.save(payload, bad)
    with pytest.raises(CheckpointError, match="features.0.weight is a int, not a tensor"):
        load_checkpoint(bad)


def test_hash_covers_zero_dim_tensors():
    a, b = state_dict_sha256({"x": torch.tensor(1.0)}), state_dict_sha256({"x": torch.tensor(2.0)})
    assert a != b and len(a) == 64


@pytest.mark.parametrize(
    "content", [b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b"a text file\n", b""], ids=["jpeg", "text", "empty"]
)
def test_a_file_that_is_not_a_checkpoint_is_named_so_in_one_line(tmp_path, content):
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"photo\.jpg: not a PyTorch checkpoint") as err:
        load_model(path)
    assert "\n" not in str(err.value) and "weights_only" not in str(err.value)


def test_a_pickled_module_is_refused_without_torchs_advice_to_unpickle_it(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Linear(1, 1), path)  # the module object, not its state_dict
    with pytest.raises(CheckpointError, match=r"objects other than tensors.*state_dict\(\)") as err:
        load_model(path)
    assert "\n" not in str(err.value) and "file an issue" not in str(err.value)


@pytest.mark.parametrize("layout", ["ours", "torchvision zip", "torchvision legacy pickle"])
def test_the_weights_hash_of_a_checkpoint_is_the_one_load_model_reports(trained, tmp_path, layout):
    """What the service compares with an ONNX file's weights_sha256 before serving that file."""
    model, path = trained
    if layout != "ours":
        path = tmp_path / "state.pth"
        torch.save(model.state_dict(), path, _use_new_zipfile_serialization=layout == "torchvision zip")
    assert checkpoint_weights_sha256(path) == load_model(path).weights_sha256 == state_dict_sha256(model.state_dict())


def test_the_weights_hash_of_a_missing_or_foreign_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        checkpoint_weights_sha256(tmp_path / "typo.pt")
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match=r"run is a folder; pass a checkpoint file, e\.g\. .*run/checkpoint\.pt$"):
        load_model(tmp_path / "run")  # a training run's --output-dir
    (tmp_path / "run" / "best.pt").write_bytes(b"")  # only its name counts here
    with pytest.raises(CheckpointError, match=r"e\.g\. .*run/best\.pt$"):  # the one that is there
        checkpoint_weights_sha256(tmp_path / "run")
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        checkpoint_weights_sha256(tmp_path / "notes.txt")


def test_importing_our_own_checkpoint_is_refused_as_a_copy(trained, tmp_path, capsys):
    _, path = trained
    out = tmp_path / "alexnet.pt"
    assert weights_main(["--import-file", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: already an alexnet-serve checkpoint (arch 'torchvision', {CLASSES} labels): copy it" in err
    assert not out.exists()  # an import would have written class_0.. labels and lost the provenance


def test_weights_of_the_other_arch_name_the_arch_to_pass(trained, tmp_path, capsys):
    model, _ = trained
    raw = tmp_path / "raw.pth"
    torch.save(model.state_dict(), raw)
    assert weights_main(["--import-file", str(raw), "--arch", "alexnet2012", "--out", str(tmp_path / "a.pt")]) == 2
    err = capsys.readouterr().err
    assert "do not fit arch 'alexnet2012'" in err and err.rstrip().endswith(
        "they are 'torchvision' weights: pass --arch torchvision"
    )
