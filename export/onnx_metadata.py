"""The model facts an ONNX file carries in ``metadata_props``, written by export and read by serving.

Every value in ONNX metadata is a string; this module owns the keys and the conversions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from model.preprocessing import IMAGENET_MEAN, IMAGENET_STD

PREFIX = "alexnet_serve."
# The graph's tensor names, fixed by export/to_onnx.py and relied on by every backend and check.
INPUT_NAME = "input"  # (N, 3, input_size, input_size) float, normalized as model/preprocessing.py does
OUTPUT_NAME = "logits"  # (N, num_classes)


@dataclass(frozen=True)
class ModelMetadata:
    arch: str
    labels: list[str]
    input_size: int  # square crop, pixels
    resize_size: int  # shorter side before the crop, pixels
    weights: str  # "untrained" or where the weights came from
    weights_sha256: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    precision: str = "fp32"
    # Where the weights came from, as the checkpoint records it (model.weights: source, and for a
    # training run its dataset, epoch, validation top-1/top-5, when it was saved); {} in older exports.
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def untrained(self) -> bool:
        return self.weights == "untrained"

    @property
    def preprocessing(self) -> tuple:
        """What the service preprocesses by: (crop, resize, mean, std)."""
        return self.input_size, self.resize_size, tuple(self.mean), tuple(self.std)

    def to_props(self) -> dict[str, str]:
        return {PREFIX + key: json.dumps(value) for key, value in asdict(self).items()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> ModelMetadata:
        fields = cls.__dataclass_fields__
        values = {k[len(PREFIX) :]: v for k, v in props.items() if k.startswith(PREFIX)}
        missing = [name for name, f in fields.items() if name not in values and f.default is f.default_factory]
        if missing:
            raise ValueError(f"{source}: ONNX metadata lacks {missing}; re-export it with export/to_onnx.py")
        parsed = {k: json.loads(v) for k, v in values.items() if k in fields}
        for key in ("mean", "std"):
            if key in parsed:
                parsed[key] = tuple(parsed[key])
        return cls(**parsed)


def write_metadata(model: onnx.ModelProto, metadata: ModelMetadata) -> None:
    """Replace our keys in ``model.metadata_props`` with ``metadata``; other keys are kept."""
    kept = [p for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.to_props().items():
        model.metadata_props.add(key=key, value=value)


def fp16_sibling(onnx_path: str | Path) -> Path:
    """Where the fp16 export of ``onnx_path`` lives: ``alexnet.onnx`` -> ``alexnet.fp16.onnx``.

    The entrypoint writes it on CUDA hosts (TensorRT builds its fp16 engine from it; ONNX Runtime's
    CUDA provider serves it under ``--precision auto|fp16``).
    """
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(f"{onnx_path.stem}.fp16{onnx_path.suffix}")


def fp16_sibling_mismatch(onnx_path: str | Path, metadata: ModelMetadata | None = None) -> str | None:
    """Why ``fp16_sibling(onnx_path)`` cannot stand in for ``onnx_path`` (whose ``metadata`` may be
    given): missing, unreadable, not fp16, other weights or other preprocessing; None when it can.

    One rule for the entrypoint (which exports it again when it cannot) and ONNX Runtime (which then
    serves the fp32 file): an fp16 file of other sizes would answer as wrongly as other weights.
    """
    fp16 = fp16_sibling(onnx_path)
    meta, problem = read_export(fp16)
    if meta is None:
        return problem
    if meta.precision != "fp16":
        return f"{fp16} is {meta.precision}, not fp16"
    source = metadata if metadata is not None else read_metadata(onnx_path)
    if meta.weights_sha256 != source.weights_sha256:
        return f"{fp16} holds weights {meta.weights!r}, not those of {onnx_path}"
    if meta.preprocessing != source.preprocessing:
        return f"{fp16} preprocesses as {meta.preprocessing}, {onnx_path} as {source.preprocessing}"
    return None


def read_export(path: Path) -> tuple[ModelMetadata | None, str]:
    """(its metadata, "") for a usable export, else (None, why it must be made again): missing, or
    unreadable or foreign (no metadata of ours)."""
    if not path.is_file():
        return None, f"{path} is missing"
    try:
        return read_metadata(path), ""
    except Exception as exc:  # unreadable or foreign file: making it again is the fix
        return None, f"{path} has no usable metadata ({exc})"


def read_metadata(path: str | Path) -> ModelMetadata:
    """Metadata of an ONNX file, without loading its weights; a ValueError for a file that is not ONNX."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError:
        raise ValueError(f"{path}: not an ONNX file; pass a .onnx model written by export/to_onnx.py") from None
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, source=str(path))
