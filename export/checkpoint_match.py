"""Whether an ONNX export serves a checkpoint as it was trained: the same weights, the same preprocessing.

One decision for its two readers: the container entrypoint exports again on a mismatch
(service/entrypoint.py), the service refuses to serve the export (service/backends, WrongWeights).
The preprocessing is part of it because the service preprocesses by the ONNX file's metadata: an
export made before it carried the checkpoint's recorded sizes holds the right weights and still
answers wrongly.

Cheap for our checkpoints: their recorded hash and provenance are read memory-mapped, no tensor is
read (``model.weights.peek_checkpoint``). A torchvision state dict records neither: it is loaded and
hashed once per file (``model.weights.checkpoint_weights_sha256`` caches it), and was trained with
its arch's defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from export.onnx_metadata import ModelMetadata
from model.alexnet import arch_spec
from model.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from model.weights import CHECKPOINT_FORMAT, checkpoint_weights_sha256, peek_checkpoint

# What a checkpoint's provenance may record about the preprocessing it was trained with (model/train.py
# writes the sizes), named as the ONNX metadata names them except crop_size (metadata: input_size).
RECORDED_PREPROCESSING = ("resize_size", "crop_size", "mean", "std")

RGB = tuple[float, float, float]
Preprocessing = tuple[int, int, RGB, RGB]  # (crop, resize, mean, std), as ModelMetadata.preprocessing


def _rgb(values: Any) -> RGB:
    r, g, b = (float(v) for v in values)  # ValueError unless exactly three numbers
    return r, g, b


def recorded_preprocessing(arch: str, provenance: Mapping[str, Any]) -> tuple[Preprocessing, list[str]]:
    """(crop, resize, mean, std) the weights were trained with, by their ``provenance`` with the
    arch's defaults for what it does not record, and the keys taken from those defaults.

    A ValueError for recorded values the arch cannot take.
    """
    spec = arch_spec(arch)
    recorded = {key: provenance[key] for key in RECORDED_PREPROCESSING if key in provenance}
    try:
        crop = int(recorded.get("crop_size", spec.input_size))
        resize = int(recorded.get("resize_size", spec.resize_size))
        mean, std = _rgb(recorded.get("mean", IMAGENET_MEAN)), _rgb(recorded.get("std", IMAGENET_STD))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the checkpoint records unusable preprocessing {recorded}: {exc}") from None
    if not spec.min_input_size <= crop <= resize:
        raise ValueError(
            f"the checkpoint records crop_size {crop} and resize_size {resize}; {arch!r} needs "
            f"{spec.min_input_size} <= crop_size <= resize_size"
        )
    return (crop, resize, mean, std), [key for key in RECORDED_PREPROCESSING if key not in recorded]


def checkpoint_preprocessing(checkpoint: str | Path, arch: str = "torchvision") -> Preprocessing:
    """What ``export/to_onnx.py --checkpoint checkpoint`` writes into the metadata as preprocessing,
    without loading the weights. ``arch``: for a file that does not record its own (torchvision's)."""
    payload = peek_checkpoint(checkpoint)
    provenance: Mapping[str, Any] = {}
    if payload is not None and payload.get("format") == CHECKPOINT_FORMAT:
        arch = str(payload.get("arch") or arch)
        provenance = payload.get("provenance") or {}
    return recorded_preprocessing(arch, provenance)[0]


def export_mismatch(onnx: Path, metadata: ModelMetadata, checkpoint: Path, arch: str = "torchvision") -> str | None:
    """Why the export ``onnx`` (its ``metadata``) does not serve ``checkpoint`` as it was trained (other
    weights, or other preprocessing), in one sentence naming both files; None when it does."""
    sha = checkpoint_weights_sha256(checkpoint, arch)
    if sha != metadata.weights_sha256:
        return (
            f"{onnx} holds weights {metadata.weights!r} (sha256 {metadata.weights_sha256[:12]}), "
            f"not those of {checkpoint} (sha256 {sha[:12]})"
        )
    expected = checkpoint_preprocessing(checkpoint, arch)
    if metadata.preprocessing != expected:
        return (
            f"{onnx} preprocesses as (crop, resize, mean, std) {metadata.preprocessing}, "
            f"{checkpoint} was trained with {expected}"
        )
    return None
