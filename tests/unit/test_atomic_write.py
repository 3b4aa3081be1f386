"""model/atomic_write.py, the one way artifacts are written: whole or not at all, and readable (0644)
by a service running as another user; and the writers that use it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from export.trt_sidecar import EngineSidecar, read_sidecar, sidecar_path, write_sidecar
from model.atomic_write import (
    OutputPathError,
    atomic_output,
    check_output_file,
    check_output_folder,
    write_bytes_atomic,
    write_text_atomic,
)
from model.weights import CheckpointError, download_torchvision_weights, save_checkpoint, untrained_model


def mode(path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture
def strict_umask():
    """umask 077, as on hardened hosts: files still end 0644 (mkstemp alone gives 0600)."""
    old = os.umask(0o077)
    yield
    os.umask(old)


def test_a_written_file_appears_whole_and_0644(tmp_path, strict_umask):
    path = tmp_path / "sub" / "model.bin"
    with atomic_output(path) as tmp:
        assert tmp.parent == path.parent and tmp != path
        tmp.write_bytes(b"half")
        assert not path.exists()  # nothing under the name until the block has succeeded
        tmp.write_bytes(b"whole")
    assert path.read_bytes() == b"whole" and mode(path) == 0o644
    assert write_text_atomic(tmp_path / "t.json", "{}\n").read_text() == "{}\n" and mode(tmp_path / "t.json") == 0o644
    assert os.listdir(path.parent) == ["model.bin"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_bytes_atomic(tmp_path / "model.bin", b"old")
    with pytest.raises(RuntimeError, match="check failed"):
        with atomic_output(path) as tmp:
            tmp.write_bytes(b"new but unchecked")
            raise RuntimeError("check failed")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.bin"]
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "never.bin"):
            raise RuntimeError
    assert not (tmp_path / "never.bin").exists() and os.listdir(tmp_path) == ["model.bin"]


def test_checkpoints_and_engine_sidecars_end_0644(tmp_path, strict_umask):
    loaded = untrained_model()
    checkpoint = save_checkpoint(tmp_path / "alexnet.pt", loaded.model, loaded.arch, loaded.labels, {"source": "x"})
    assert mode(checkpoint) == 0o644
    sidecar = EngineSidecar(
        "11.0", "GPU", "9.0", "fp16", True, "input", "logits", [3, 224, 224], 1, 32, 64, 1024, "a", "b", 1.0, "now"
    )
    write_sidecar(tmp_path / "alexnet.plan", sidecar)
    assert mode(sidecar_path(tmp_path / "alexnet.plan")) == 0o644  # was 0600 before
    assert read_sidecar(tmp_path / "alexnet.plan") == sidecar


def test_an_onnx_export_ends_0644(onnx_model):
    assert mode(onnx_model) == 0o644


def _served(tmp_path) -> tuple[Path, bytes, Path]:
    """(folder, bytes, file): a weights file served from a folder under the name its hash gives."""
    source = tmp_path / "served"
    source.mkdir()
    data = b"weights"
    good = source / f"alexnet-owt-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    good.write_bytes(data)
    return source, data, good


def test_a_download_is_kept_only_when_its_hash_matches(tmp_path, strict_umask):
    source, data, good = _served(tmp_path)
    bad = source / "alexnet-owt-00000000.pth"
    bad.write_bytes(data)
    dest = tmp_path / "models"
    with pytest.raises(CheckpointError, match=r"SHA-256 is [0-9a-f]{64}, not 00000000\.\.\.") as err:
        download_torchvision_weights(dest, bad.as_uri())
    assert hashlib.sha256(data).hexdigest() in str(err.value)
    assert os.listdir(dest) == []  # neither the file nor a partial one
    got = download_torchvision_weights(dest, good.as_uri())
    assert got.read_bytes() == data and mode(got) == 0o644 and os.listdir(dest) == [good.name]
    with pytest.raises(CheckpointError, match="cannot download"):
        download_torchvision_weights(dest, (source / "alexnet-owt-12345678.pth").as_uri())


def test_torch_save_to_the_temporary_path_round_trips(tmp_path):
    with atomic_output(tmp_path / "t.pt") as tmp:
        torch.save({"x": torch.ones(2)}, tmp)
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["x"], torch.ones(2))


def test_a_damaged_file_at_the_download_name_is_downloaded_again(tmp_path, capsys):
    _source, data, good = _served(tmp_path)
    dest = tmp_path / "models"
    dest.mkdir()
    (dest / good.name).write_bytes(b"weig")  # an interrupted earlier download
    got = download_torchvision_weights(dest, good.as_uri())
    assert got.read_bytes() == data and os.listdir(dest) == [good.name]
    assert "damaged" in capsys.readouterr().err

    # Offline: the damaged file is named with both hashes and what to do, not reused.
    (dest / good.name).write_bytes(b"weig")
    good.unlink()
    with pytest.raises(CheckpointError, match="cannot download") as err:
        download_torchvision_weights(dest, good.as_uri())
    message = str(err.value)
    assert str(dest / good.name) in message and hashlib.sha256(b"weig").hexdigest() in message
    assert f"{good.name[12:20]}..." in message and "delete it" in message


def test_output_checks_pass_a_writable_place_and_leave_nothing_behind(tmp_path):
    assert check_output_folder(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"
    assert check_output_file(tmp_path / "c" / "x.onnx", "--out", "x.onnx") == tmp_path / "c" / "x.onnx"
    assert check_output_file(tmp_path / "x.onnx", "--out", "x.onnx") == tmp_path / "x.onnx"
    assert list(tmp_path.iterdir()) == []  # no folder made, no probe file left


def test_output_checks_name_the_flag_and_what_is_wrong(tmp_path):
    notes = tmp_path / "notes"
    notes.write_text("a file")
    with pytest.raises(OutputPathError, match=rf"^--out {tmp_path} is a folder; pass a file name, e\.g\. "):
        check_output_file(tmp_path, "--out", "x.onnx")
    with pytest.raises(OutputPathError) as refused:
        check_output_file(notes / "run" / "x.onnx", "--out", "x.onnx")
    assert str(refused.value) == f"--out {notes / 'run' / 'x.onnx'}: {notes} is a file, not a folder"
    with pytest.raises(OutputPathError) as refused:
        check_output_folder(notes, "--output-dir")
    assert str(refused.value) == f"--output-dir {notes}: {notes} is a file, not a folder"


def test_a_folder_that_takes_no_files_is_refused(tmp_path, monkeypatch):
    """As a read-only mount would (root ignores mode bits, so the refusal is simulated)."""
    import model.atomic_write as atomic_write

    def refuse(**kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic_write.tempfile, "mkstemp", refuse)
    with pytest.raises(OutputPathError) as refused:
        check_output_folder(tmp_path / "run", "--out")
    assert str(refused.value) == f"--out {tmp_path / 'run'}: cannot write in {tmp_path} (Permission denied)"


def test_a_path_the_system_will_not_look_at_is_refused_not_raised(tmp_path):
    """exists() and is_dir() raise on what is not "no such file" (here a name over NAME_MAX): refused,
    naming the flag, never a traceback."""
    too_long = tmp_path / ("a" * 300)
    with pytest.raises(OutputPathError, match=r"^--out .*: cannot look at .* \(File name too long\)$"):
        check_output_folder(too_long / "run", "--out")
    with pytest.raises(OutputPathError, match=r"^--out .*: cannot look at it \(File name too long\)$"):
        check_output_file(too_long, "--out", "x.onnx")
