"""export/image_folder.py (INT8 calibration, agreement checks) feeds the model what the service feeds it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from export.image_folder import ImageFolderError, iter_batches, list_images, preprocess
from export.onnx_metadata import ModelMetadata
from service.preprocess import PreprocessConfig
from service.preprocess import preprocess as service_preprocess
from tests.conftest import make_image

META = ModelMetadata(arch="torchvision", labels=[], input_size=224, resize_size=256, weights="", weights_sha256="")
# Calibration decodes every JPEG in full; the service's draft decoding of large JPEGs is its one liberty.
SERVED = PreprocessConfig(jpeg_draft=False)


def _rotated_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = Image.open(io.BytesIO(make_image(500, 300, seed=orientation)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def _rgba_png() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, size=(90, 120, 4), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


FILES = {
    "photo.jpg": make_image(500, 375, seed=1),
    "odd.jpg": make_image(300, 451, seed=2),  # resized to 256 x 384.85: 384 (torchvision truncates), not 385
    "shifted.png": make_image(343, 256, seed=3, fmt="PNG"),  # crop offset round(59.5) = 60, not floor = 59
    "wide.png": make_image(1000, 257, seed=4, fmt="PNG"),
    "rotated6.jpg": _rotated_jpeg(6),
    "rotated3.jpg": _rotated_jpeg(3),
    "alpha.png": _rgba_png(),  # transparent pixels over white, as the service shows them
    "grey.png": make_image(64, 48, seed=5, fmt="PNG", mode="L"),
    "tiny.bmp": make_image(3, 5, seed=6, fmt="BMP"),
}


@pytest.fixture
def folder(tmp_path):
    for name, data in FILES.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


def test_each_image_is_the_service_preprocessing_bit_for_bit(folder):
    for path in list_images(folder):
        np.testing.assert_array_equal(preprocess(path, META), service_preprocess(path.read_bytes(), SERVED), path.name)


def test_batches_are_the_images_in_order(folder):
    paths = list_images(folder)
    batches = list(iter_batches(paths, META, batch_size=4))
    assert [b.shape for b in batches] == [(4, 3, 224, 224), (4, 3, 224, 224), (1, 3, 224, 224)]
    np.testing.assert_array_equal(np.concatenate(batches), np.stack([preprocess(p, META) for p in paths]))


def test_an_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "cut.jpg").write_bytes(make_image(200, 150)[:600])
    with pytest.raises(ImageFolderError, match=r"cut\.jpg: cannot read image"):
        preprocess(tmp_path / "cut.jpg", META)


def test_a_limit_samples_every_class_folder_repeatably(tmp_path):
    """A training-set layout (<class>/<image>): the first N sorted files would be one class."""
    for c in range(4):
        for i in range(10):
            (tmp_path / f"class_{c}" / f"{i:02d}.jpg").parent.mkdir(exist_ok=True)
            (tmp_path / f"class_{c}" / f"{i:02d}.jpg").write_bytes(b"")  # listed by name, not read
    sample = list_images(tmp_path, limit=8)
    assert len(sample) == len(set(sample)) == 8 and sample == sorted(sample)
    assert sorted(p.parent.name for p in sample) == [f"class_{c}" for c in range(4) for _ in range(2)]
    assert list_images(tmp_path, limit=8) == sample
    assert len(list_images(tmp_path, limit=100)) == 40


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_below_one_is_refused(folder, limit):
    with pytest.raises(ValueError, match="at least 1"):
        list_images(folder, limit=limit)
