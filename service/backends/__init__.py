"""Backend selection: what runs inference on this host, and why that one.

``auto`` tries, in order, TensorRT (a CUDA GPU and an engine built for it), ONNX Runtime (the CUDA
provider on a GPU, else the CPU provider) and PyTorch; each refusal's reason is kept and reported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from export.checkpoint_match import export_mismatch
from export.onnx_metadata import ModelMetadata, fp16_sibling, fp16_sibling_mismatch, read_metadata
from model.alexnet import arch_spec
from model.weights import load_model
from service.backends.base import Backend
from service.errors import BackendUnavailable, WrongWeights
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Selection:
    backend: Backend
    metadata: ModelMetadata
    reason: str
    skipped: dict[str, str] = field(default_factory=dict)  # backend -> why it was not used


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _resolve_device(settings: Settings) -> str:
    if settings.device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if settings.device == "cuda" and not cuda_available():
        raise BackendUnavailable("device=cuda was asked for but no CUDA GPU is visible to PyTorch")
    return settings.device


def _onnx_metadata(settings: Settings) -> ModelMetadata:
    """The metadata of the ONNX file that TensorRT and ONNX Runtime serve (TensorRT's engine is built
    from it, or from its fp16 sibling holding the same weights); with a ``--checkpoint``, only if that
    file holds the checkpoint's weights and preprocesses as it was trained (the service preprocesses
    by the ONNX metadata: other sizes would answer wrongly as surely as other weights)."""
    if not settings.onnx.is_file():
        raise BackendUnavailable(
            f"{settings.onnx}: no ONNX model; build it with `python export/to_onnx.py --out {settings.onnx}`"
        )
    metadata = read_metadata(settings.onnx)
    if settings.checkpoint is not None:
        mismatch = export_mismatch(settings.onnx, metadata, settings.checkpoint, settings.arch)
        if mismatch is not None:
            raise WrongWeights(
                f"--checkpoint: {mismatch}; export it again with "
                f"`python export/to_onnx.py --checkpoint {settings.checkpoint} --out {settings.onnx}`, "
                "or serve the checkpoint with --backend torch"
            )
    return metadata


def _build_tensorrt(settings: Settings, device: str) -> tuple[Backend, ModelMetadata]:
    if device != "cuda":
        raise BackendUnavailable("TensorRT needs a CUDA GPU")
    from service.backends.tensorrt import TensorRTBackend

    metadata = _onnx_metadata(settings)
    backend = TensorRTBackend(settings.engine, settings.max_batch_size, metadata.weights_sha256, settings.precision)
    return backend, metadata


def onnxruntime_model(settings: Settings, device: str, metadata: ModelMetadata) -> Path:
    """The ONNX file ONNX Runtime serves: on CUDA under precision ``auto`` or ``fp16``, the fp16 export
    beside ``settings.onnx`` (``alexnet.fp16.onnx``, which the entrypoint makes on CUDA hosts) when it
    holds the same weights and preprocessing (``fp16_sibling_mismatch``, the entrypoint's rule too);
    else ``settings.onnx`` itself. An explicit fp16 without that file is refused, and so is an explicit
    fp16 on the CPU (which would run the fp32 file in fp32); an ONNX given in another precision than
    fp32 (int8, or the fp16 file itself) is served as it is."""
    if device != "cuda" and settings.precision == "fp16" and metadata.precision == "fp32":
        raise BackendUnavailable(
            f"precision fp16 was asked for, but ONNX Runtime on the CPU would serve {settings.onnx} in fp32; "
            "use --precision auto or fp32 on the CPU, or serve on a CUDA GPU"
        )
    if device != "cuda" or settings.precision == "fp32" or metadata.precision != "fp32":
        return settings.onnx
    fp16 = fp16_sibling(settings.onnx)
    problem = fp16_sibling_mismatch(settings.onnx, metadata)
    if problem is None:
        return fp16
    export = f"export it with python export/to_onnx.py --precision fp16 --out {fp16}"
    if settings.precision == "fp16":
        raise BackendUnavailable(f"precision fp16 on ONNX Runtime needs the fp16 ONNX: {problem}; {export}")
    log.warning("ONNX Runtime on CUDA serves %s in fp32: %s (%s)", settings.onnx, problem, export)
    return settings.onnx


def _build_onnxruntime(settings: Settings, device: str) -> tuple[Backend, ModelMetadata]:
    from service.backends.onnxruntime import OnnxRuntimeBackend

    metadata = _onnx_metadata(settings)
    model = onnxruntime_model(settings, device, metadata)
    backend = OnnxRuntimeBackend(model, device, settings.max_batch_size, settings.cpu_threads)
    return backend, metadata


def _build_torch(settings: Settings, device: str) -> tuple[Backend, ModelMetadata]:
    from service.backends.torch import TorchBackend

    if device != "cuda" and settings.precision == "fp16":
        raise BackendUnavailable(
            "precision fp16 was asked for, but PyTorch on the CPU runs in fp32; use --precision auto or fp32 "
            "on the CPU, or serve on a CUDA GPU"
        )
    arch: str = settings.arch
    onnx_meta = read_metadata(settings.onnx) if settings.onnx.is_file() else None
    if settings.checkpoint is None and onnx_meta is not None:
        arch = onnx_meta.arch
    loaded = load_model(settings.checkpoint, arch)
    if "arch" in settings.model_fields_set and loaded.arch != settings.arch:
        source = settings.checkpoint if settings.checkpoint is not None else settings.onnx
        log.warning("--arch %s is not what is served: %s records %s", settings.arch, source, loaded.arch)
    if onnx_meta is not None and onnx_meta.weights_sha256 != loaded.weights_sha256:
        differ = f"PyTorch's weights ({loaded.weights_description}) differ from {settings.onnx}'s ({onnx_meta.weights})"
        if settings.backend == "auto":  # a fallback must not answer with other weights than the model exported
            raise BackendUnavailable(
                f"{differ}: it would answer otherwise than that model; install ONNX Runtime "
                "(pip install '.[cpu]'), pass --checkpoint with those weights, or --backend torch to serve "
                "PyTorch's anyway"
            )
        log.warning("%s: serving PyTorch's, as --backend torch asks", differ)
    spec = arch_spec(loaded.arch)
    precision = settings.precision if settings.precision != "auto" else ("fp16" if device == "cuda" else "fp32")
    backend = TorchBackend(
        loaded.model, device, precision, settings.max_batch_size, spec.input_size, settings.cpu_threads
    )
    metadata = ModelMetadata(
        arch=loaded.arch,
        labels=list(loaded.labels),
        input_size=spec.input_size,
        resize_size=spec.resize_size,
        weights=loaded.weights_description,
        weights_sha256=loaded.weights_sha256,
        precision=backend.precision,
        provenance=loaded.provenance_to_publish,
    )
    return backend, metadata


BUILDERS = {"tensorrt": _build_tensorrt, "onnxruntime": _build_onnxruntime, "torch": _build_torch}


def select_backend(settings: Settings) -> Selection:
    """Build the configured backend, or under ``auto`` the first that works here."""
    device = _resolve_device(settings)
    names = list(BUILDERS) if settings.backend == "auto" else [settings.backend]
    skipped: dict[str, str] = {}
    for name in names:
        try:
            backend, metadata = BUILDERS[name](settings, device)
        except BackendUnavailable as exc:
            if settings.backend != "auto":
                raise
            skipped[name] = str(exc)
            log.info("backend %s skipped: %s", name, exc)
            continue
        if settings.backend == "auto":
            reason = f"auto on {device}: first that works of {names}" + (f"; skipped {skipped}" if skipped else "")
        else:
            reason = f"asked for {name} on {device}"
        return Selection(backend, metadata, reason, skipped)
    raise BackendUnavailable(f"no backend can run on this host: {skipped}")
