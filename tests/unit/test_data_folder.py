"""model/data.py's ImageFolder: which entries become classes and samples, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from model import train
from model.data import ImageFolder
from model.transforms import EvalTransform


def _image(path: Path, fmt: str, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 36), (200, 30, 30)).convert(mode).save(path, format=fmt)


def _split(root: Path) -> Path:
    _image(root / "a" / "0.png", "PNG")
    _image(root / "a" / "1.gif", "GIF", "P")  # palette: the transform converts to RGB
    _image(root / "b" / "0.tif", "TIFF")
    _image(root / "b" / "1.jpg", "JPEG")
    _image(root / ".ipynb_checkpoints" / "0.png", "PNG")  # hidden: not a class
    (root / "a" / ".DS_Store").write_bytes(b"\0")
    (root / "a" / "notes.txt").write_text("x")
    (root / "b" / "scan.xcf").write_bytes(b"x")
    (root / "b" / "more.txt").write_text("x")
    return root


def test_hidden_entries_are_ignored_and_skipped_files_counted(tmp_path):
    folder = ImageFolder(_split(tmp_path / "train"), EvalTransform(36, 32))
    assert folder.classes == ["a", "b"]
    assert [(Path(p).name, k) for p, k in folder.samples] == [("0.png", 0), ("1.gif", 0), ("0.tif", 1), ("1.jpg", 1)]
    assert folder.skipped_note() == f"{tmp_path / 'train'}: skipped 3 files it does not read: .txt (2), .xcf (1)"
    for index in range(len(folder)):
        image, _ = folder[index]
        assert tuple(image.shape) == (3, 32, 32)


def test_a_class_folder_without_images_is_refused(tmp_path, capsys):
    root = tmp_path / "data"
    _split(root / "train")
    _split(root / "val")
    (root / "train" / "c").mkdir()
    (root / "train" / "c" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="class folder with no images"):
        ImageFolder(root / "train", EvalTransform(36, 32))
    argv = ["--data-path", str(root), "--output-dir", str(tmp_path / "run"), "--device", "cpu", "--workers", "0"]
    assert train.cli([*argv, "--resize-size", "72", "--crop-size", "64"]) == 2
    assert capsys.readouterr().err == (
        f"error: {root / 'train' / 'c'}: class folder with no images (extensions .jpeg, .jpg, .png, .ppm, .bmp, "
        ".webp, .gif, .tif, .tiff); add images or remove the folder\n"
    )
