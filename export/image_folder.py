"""Image folders as model input batches, for INT8 calibration and for evaluating agreement.

Preprocessing is the one the ONNX file's metadata describes (resize the shorter side to
``resize_size``, center-crop ``input_size``, scale to [0, 1], normalize with ``mean``/``std``), so a
calibrated model sees the same distribution the service feeds it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from export.onnx_metadata import ModelMetadata

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")


class ImageFolderError(ValueError):
    """A folder that gives no usable images; the message says what to pass instead."""


def list_images(folder: str | Path, limit: int | None = None) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted so runs are repeatable; at most ``limit``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageFolderError(f"{folder}: not a folder; pass a folder of JPEG/PNG images")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ImageFolderError(
            f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}); pass a folder of a few hundred "
            "representative images, e.g. a sample of the training set"
        )
    return paths[:limit] if limit else paths


def preprocess(path: Path, meta: ModelMetadata) -> np.ndarray:
    """One image as a normalized float32 array (3, input_size, input_size)."""
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
            w, h = image.size
            scale = meta.resize_size / min(w, h)
            image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
            w, h = image.size
            left, top = (w - meta.input_size) // 2, (h - meta.input_size) // 2
            image = image.crop((left, top, left + meta.input_size, top + meta.input_size))
            array = np.asarray(image, dtype=np.float32) / np.float32(255.0)  # (H, W, 3)
    except OSError as exc:
        raise ImageFolderError(f"{path}: cannot read image ({exc}); remove it from the folder") from exc
    array = np.subtract(array, np.asarray(meta.mean, np.float32)) / np.asarray(meta.std, np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))  # (3, H, W)


def iter_batches(paths: list[Path], meta: ModelMetadata, batch_size: int) -> Iterator[np.ndarray]:
    """Batches (N, 3, input_size, input_size) float32 of at most ``batch_size`` images."""
    for start in range(0, len(paths), batch_size):
        yield np.stack([preprocess(p, meta) for p in paths[start : start + batch_size]])
