"""Image folders as model input batches, for INT8 calibration and for evaluating agreement.

Preprocessing is the service's own (``model/preprocessing.py``: EXIF orientation, every mode to RGB,
the shorter side resized to ``resize_size`` as torchvision computes it, center crop ``input_size`` at
torchvision's offsets, normalized with ``mean``/``std``), with the sizes and mean/std the ONNX file's
metadata carries, so a calibrated model sees the same pixels the service feeds it. One difference
remains: the service may decode large JPEGs at a reduced DCT size (``--jpeg-draft``), within ~1/255.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from export.onnx_metadata import ModelMetadata
from model.preprocessing import normalize, normalize_batch, resize_crop_uint8, to_rgb, upright

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")


class ImageFolderError(ValueError):
    """A folder that gives no usable images; the message says what to pass instead."""


def list_images(folder: str | Path, limit: int | None = None) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted so runs are repeatable; at most ``limit``.

    ``limit`` takes evenly spaced files across the sorted list, not its head: in a training-set layout
    (``<class>/<image>``) the head is the first class or two, and every class should shape the
    calibration ranges. The same folder and limit give the same files.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 image, got {limit}")
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageFolderError(f"{folder}: not a folder; pass a folder of JPEG/PNG images")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ImageFolderError(
            f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}); pass a folder of a few hundred "
            "representative images, e.g. a sample of the training set"
        )
    if limit is None or limit >= len(paths):
        return paths
    return [paths[(2 * i + 1) * len(paths) // (2 * limit)] for i in range(limit)]  # the middle of each 1/limit


def crop_uint8(path: Path, meta: ModelMetadata) -> np.ndarray:
    """One image file as the service's (input_size, input_size, 3) uint8 crop, before normalisation."""
    try:
        with Image.open(path) as opened:
            opened.load()
            image = to_rgb(upright(opened))
    except (OSError, SyntaxError) as exc:  # what PIL raises on unreadable, truncated or damaged files
        raise ImageFolderError(f"{path}: cannot read image ({exc}); remove it from the folder") from exc
    return resize_crop_uint8(image, meta.resize_size, meta.input_size)


def preprocess(path: Path, meta: ModelMetadata) -> np.ndarray:
    """One image as a normalized float32 array (3, input_size, input_size), as the service makes it."""
    return normalize(crop_uint8(path, meta), meta.mean, meta.std)


def iter_batches(paths: list[Path], meta: ModelMetadata, batch_size: int) -> Iterator[np.ndarray]:
    """Batches (N, 3, input_size, input_size) float32 of at most ``batch_size`` images."""
    for start in range(0, len(paths), batch_size):
        crops = np.stack([crop_uint8(p, meta) for p in paths[start : start + batch_size]])  # (N, S, S, 3)
        yield normalize_batch(crops, mean=meta.mean, std=meta.std)
