"""The JSON sidecar next to a TensorRT engine, and the check that an engine fits this host.

A TensorRT engine (``model.plan``) runs only with the TensorRT version that built it and on GPUs of the
compute capability it was built for (NVIDIA's docs: "engines are specific to the exact GPU model and
TensorRT version"). ``export/to_trt.py`` writes ``model.plan.json`` beside the engine; the service calls
``check_engine_compatible(engine_path)`` before loading it and refuses it with ``EngineMismatch``.

Nothing here imports ``tensorrt`` or ``torch`` at import time: the service and the tests import this
module on hosts that have neither.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from model.atomic_write import write_text_atomic
from model.hashing import file_sha256

GET_TENSORRT = "pip install 'tensorrt>=10' on a CUDA host, or use NVIDIA's image nvcr.io/nvidia/tensorrt"
SIDECAR_FORMAT = "alexnet-serve-trt-sidecar"
SIDECAR_VERSION = 1


class SidecarError(RuntimeError):
    """A sidecar that is missing or unreadable; the message says how to rebuild it."""


class EngineMismatch(SidecarError):
    """The engine was built for another GPU, TensorRT version or ONNX file.

    ``differences`` maps each differing field to ``(in_sidecar, on_this_host)``.
    """

    def __init__(self, engine_path: Path, differences: dict[str, tuple[Any, Any]]) -> None:
        self.engine_path = engine_path
        self.differences = differences
        listed = "; ".join(f"{k} {a!r} in the sidecar, {b!r} here" for k, (a, b) in differences.items())
        super().__init__(
            f"{engine_path}: engine does not fit this host ({listed}); rebuild it here with "
            f"python export/to_trt.py --onnx MODEL.onnx --out {engine_path}"
        )


@dataclass(frozen=True)
class DeviceInfo:
    """What an engine is tied to on the host that runs it."""

    gpu_name: str
    compute_capability: str  # "major.minor", e.g. "9.0" for H100
    tensorrt_version: str


@dataclass(frozen=True)
class EngineSidecar:
    """Facts about one engine file; written as ``<engine>.json``."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str  # fp32 | fp16 | int8
    strongly_typed: bool
    input_name: str
    output_name: str
    input_shape: list[int]  # (C, H, W); the batch axis is given by the profile
    min_batch: int
    opt_batch: int
    max_batch: int
    workspace_mib: int
    onnx_sha256: str
    engine_sha256: str
    build_time_s: float
    built_at: str  # ISO 8601, UTC
    onnx_path: str = ""
    verification: dict[str, Any] = field(default_factory=dict)  # top-1 agreement, max |diff| vs ONNX Runtime
    # the ONNX file's ModelMetadata (labels, mean/std, sizes, weights' hash): an engine has no metadata
    model_metadata: dict[str, Any] = field(default_factory=dict)
    format: str = SIDECAR_FORMAT
    version: int = SIDECAR_VERSION

    def profile_shapes(self) -> dict[str, list[int]]:
        """The optimization profile as full NCHW shapes (min, opt, max)."""
        return {
            k: [n, *self.input_shape]
            for k, n in (("min", self.min_batch), ("opt", self.opt_batch), ("max", self.max_batch))
        }


def sidecar_path(engine_path: str | Path) -> Path:
    """``model.plan`` -> ``model.plan.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def write_sidecar(engine_path: str | Path, sidecar: EngineSidecar) -> Path:
    """Write ``<engine_path>.json`` atomically; returns its path."""
    return write_text_atomic(sidecar_path(engine_path), json.dumps(asdict(sidecar), indent=2, sort_keys=True) + "\n")


def read_sidecar(engine_path: str | Path) -> EngineSidecar:
    """The sidecar of ``engine_path``; SidecarError if it is missing, unreadable or of another format."""
    path = sidecar_path(engine_path)
    rebuild = f"rebuild the engine with python export/to_trt.py --out {engine_path}"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SidecarError(f"{path}: no sidecar next to the engine; {rebuild}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SidecarError(f"{path}: unreadable sidecar ({exc}); {rebuild}") from exc
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise SidecarError(f"{path}: not an alexnet-serve engine sidecar; {rebuild}")
    if data.get("version") != SIDECAR_VERSION:
        raise SidecarError(f"{path}: sidecar version {data.get('version')!r} is not supported; {rebuild}")
    known = {f.name for f in fields(EngineSidecar)}
    try:
        return EngineSidecar(**{k: v for k, v in data.items() if k in known})
    except TypeError as exc:  # a required field is missing
        raise SidecarError(f"{path}: incomplete sidecar ({exc}); {rebuild}") from exc


def source_onnx(engine_path: str | Path, sidecar: EngineSidecar) -> Path:
    """The ONNX file the engine was built from: the path its sidecar records or, when the model folder
    has moved since (mounted elsewhere), the file of that name beside the engine."""
    engine_path = Path(engine_path)
    rebuild = f"rebuild the engine with python export/to_trt.py --onnx MODEL.onnx --out {engine_path}"
    if not sidecar.onnx_path:
        raise SidecarError(f"{sidecar_path(engine_path)} does not say which ONNX the engine came from; {rebuild}")
    recorded = Path(sidecar.onnx_path)
    for candidate in (recorded, engine_path.parent / recorded.name):
        if candidate.is_file():
            return candidate
    raise SidecarError(f"{engine_path}: the ONNX it was built from ({recorded}) is gone; {rebuild}")


def _gpu_from_torch(index: int) -> tuple[str, str] | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"{major}.{minor}"


def _gpu_from_nvidia_smi(index: int) -> tuple[str, str] | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={index}", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    name, _, cap = out.rpartition(",")
    return (name.strip(), cap.strip()) if name else None


def current_device(gpu_index: int = 0) -> DeviceInfo:
    """GPU name, compute capability and TensorRT version of this host; SidecarError if one is missing."""
    try:
        import tensorrt
    except ModuleNotFoundError:
        raise SidecarError(f"tensorrt is not installed: {GET_TENSORRT}") from None
    except (ImportError, OSError) as exc:  # the bindings without the libraries they load
        raise SidecarError(f"tensorrt is installed but cannot load its libraries ({exc}): {GET_TENSORRT}") from None
    gpu = _gpu_from_torch(gpu_index) or _gpu_from_nvidia_smi(gpu_index)
    if gpu is None:
        raise SidecarError(f"no CUDA GPU {gpu_index} visible; a TensorRT engine needs an NVIDIA GPU and driver")
    return DeviceInfo(gpu_name=gpu[0], compute_capability=gpu[1], tensorrt_version=tensorrt.__version__)


def check_engine_compatible(
    engine_path: str | Path,
    onnx_sha256: str | None = None,
    device: DeviceInfo | None = None,
    verify_engine_hash: bool = True,
) -> None:
    """Raise EngineMismatch unless ``engine_path`` was built here, by this TensorRT, from this ONNX.

    ``device`` defaults to ``current_device()``; pass one to check against another host (or in tests).
    ``onnx_sha256``, when given, must match the ONNX the engine was built from. With
    ``verify_engine_hash`` the engine file must be the one the sidecar describes (not a stale sidecar).
    """
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise SidecarError(f"{engine_path}: no such engine file; build it with python export/to_trt.py")
    sidecar = read_sidecar(engine_path)
    device = device or current_device()
    differences: dict[str, tuple[Any, Any]] = {}
    for name in ("gpu_name", "compute_capability", "tensorrt_version"):
        built, here = getattr(sidecar, name), getattr(device, name)
        if built != here:
            differences[name] = (built, here)
    if onnx_sha256 is not None and sidecar.onnx_sha256 != onnx_sha256:
        differences["onnx_sha256"] = (sidecar.onnx_sha256, onnx_sha256)
    if verify_engine_hash:
        actual = file_sha256(engine_path)
        if actual != sidecar.engine_sha256:
            differences["engine_sha256"] = (sidecar.engine_sha256, actual)
    if differences:
        raise EngineMismatch(engine_path, differences)
