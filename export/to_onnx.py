"""Export AlexNet to ONNX with a dynamic batch axis, then verify it against PyTorch.

    python export/to_onnx.py --out artifacts/alexnet.onnx                       # untrained (loud warning)
    python export/to_onnx.py --checkpoint artifacts/alexnet.pt --out artifacts/alexnet.onnx
    python export/to_onnx.py --checkpoint artifacts/alexnet.pt --precision fp16 --out artifacts/alexnet.fp16.onnx

The file has input ``input`` (N,3,H,W) float32 and output ``logits`` (N,classes), one self-contained
file, and our metadata (export/onnx_metadata.py). H = W = the crop size the checkpoint records from
training; it and the recorded resize size (and mean/std) go into the metadata, which the service
preprocesses by; the arch's defaults only where the checkpoint records none. ``onnx.checker`` must
pass and ONNX Runtime must agree with PyTorch within ``--tolerance`` at each ``--verify-batch-sizes``,
or nothing is written.

``--precision fp16`` (for TensorRT 11, whose strongly typed networks take their precision from the
ONNX) exports ``model.half()`` wrapped so that the graph still takes and returns float32: a Cast to
float16 after ``input`` and a Cast to float32 before ``logits``, so callers do not change. It is
verified against the fp32 PyTorch model with a tolerance relative to the largest |logit|.
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from export.checkpoint_match import RECORDED_PREPROCESSING, recorded_preprocessing
from export.cli import run_main, step_printer
from export.onnx_metadata import (
    INPUT_NAME,
    OUTPUT_NAME,
    ModelMetadata,
    fp16_sibling,
    read_metadata,
    write_metadata,
)
from export.ort import import_onnxruntime
from model.alexnet import ARCHS
from model.arg_types import positive_float, positive_int
from model.atomic_write import atomic_output, check_output_file
from model.help_format import DefaultsHelpFormatter
from model.weights import CheckpointError, LoadedModel, load_model

DEFAULT_OPSET = 18
OPSETS = (18, 19, 20)  # what the export is tested with (docs/export.md); torch writes 18 when asked for less
# Where the service (--onnx) and quantize.py look for the fp32 export; fp16 goes beside it, never over it.
DEFAULT_OUT = Path("artifacts/alexnet.onnx")
MAX_BATCH = 4096


PRECISIONS = ("fp32", "fp16")
DEFAULT_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}  # fp32: absolute; fp16: relative to max |logit|


_step = step_printer("to_onnx")


class ExportError(RuntimeError):
    """The exported model is invalid or disagrees with PyTorch."""


class _Float16Inside(torch.nn.Module):
    """Runs ``model`` in float16 behind a float32 graph boundary (input and logits stay float32)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def model_metadata(loaded: LoadedModel, precision: str = "fp32") -> tuple[ModelMetadata, str]:
    """The metadata the service will read for ``loaded``, and where its preprocessing came from.

    Resize and crop sizes (and mean/std) are the ones the checkpoint's provenance records
    (``model/train.py`` writes its ``--resize-size``/``--crop-size`` there): the service must
    preprocess as training did. The arch's defaults fill only what the checkpoint does not record.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    try:
        (crop, resize, mean, std), missing = recorded_preprocessing(loaded.arch, loaded.provenance)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    metadata = ModelMetadata(
        arch=loaded.arch,
        labels=list(loaded.labels),
        input_size=crop,
        resize_size=resize,
        weights=loaded.weights_description,
        weights_sha256=loaded.weights_sha256,
        mean=mean,
        std=std,
        precision=precision,
        provenance=loaded.provenance_to_publish,
    )
    if len(missing) == len(RECORDED_PREPROCESSING):
        source = f"{loaded.arch} defaults: the weights record no preprocessing"
    elif missing:
        source = f"recorded in the checkpoint; {', '.join(missing)} from the defaults"
    else:
        source = "recorded in the checkpoint"
    return metadata, source


def export_model(loaded: LoadedModel, metadata: ModelMetadata, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Trace ``loaded.model`` to ONNX (dynamic batch, ``metadata.input_size`` square) and stamp ``metadata``."""
    module = loaded.model.eval()
    if metadata.precision == "fp16":
        module = _Float16Inside(copy.deepcopy(module).half())
    size = metadata.input_size  # the graph's H and W are fixed at the example's
    example = torch.randn(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's problem
        raw = Path(tmp) / "raw.onnx"
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(
            module,
            (example,),
            str(raw),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"x": {0: batch}},
            opset_version=opset,
            external_data=False,
            dynamo=True,
            verbose=False,
        )
        model = onnx.load(str(raw))
    write_metadata(model, metadata)
    model.producer_name = "alexnet-serve"
    return model


def verify(
    model_path: Path, loaded: LoadedModel, batch_sizes: list[int], tolerance: float, relative: bool = False
) -> float:
    """Max |ONNX Runtime - PyTorch| over random batches of each size; ExportError above ``tolerance``.

    With ``relative`` the difference is divided by the largest |logit| of PyTorch's output (fp16).
    """
    ort = import_onnxruntime()
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    size = read_metadata(model_path).input_size
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for n in batch_sizes:
        x = torch.randn(n, 3, size, size, generator=generator)
        with torch.inference_mode():
            expected = loaded.model(x).numpy()
        actual = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if actual.shape != expected.shape:
            raise ExportError(f"batch {n}: ONNX output shape {actual.shape}, PyTorch {expected.shape}")
        diff = float(np.max(np.abs(actual - expected)))
        scale = float(np.max(np.abs(expected))) if relative else 1.0
        agree = float(np.mean(actual.argmax(1) == expected.argmax(1)))
        _step(
            f"  batch {n:>4}: max |onnxruntime - torch| = {diff:.3g}"
            + (f" (largest |logit| {scale:.3g})" if relative else "")
            + f", top-1 agreement {agree:.0%}"
        )
        diff /= max(scale, 1e-12)
        worst = max(worst, diff)
    if not np.isfinite(worst) or worst > tolerance:
        kind = "relative max |diff|" if relative else "max |diff|"
        raise ExportError(f"ONNX Runtime disagrees with PyTorch: {kind} {worst:.3g} > {tolerance:g}")
    return worst


def export_and_verify(
    checkpoint: Path | None,
    out: Path,
    arch: str = "torchvision",
    opset: int = DEFAULT_OPSET,
    verify_batch_sizes: tuple[int, ...] = (1, 7, 32),
    tolerance: float | None = None,
    precision: str = "fp32",
    arch_given: bool = False,
) -> Path:
    """Load weights, export, check, verify, then move the file into place (never a half-checked file).

    Our checkpoint records its arch, which wins over ``arch``; with ``arch_given`` (the user named
    one) a checkpoint of another arch is refused instead.
    """
    check_output_file(out, "--out", "alexnet.onnx")
    import_onnxruntime()  # verification needs it: say so now, not after the export
    t0 = _step(f"loading {'checkpoint ' + str(checkpoint) if checkpoint else 'untrained ' + arch + ' model'}")
    loaded = load_model(checkpoint, arch)
    if arch_given and loaded.arch != arch:
        raise ExportError(
            f"{checkpoint} holds a {loaded.arch!r} model, not {arch!r}; leave --arch out or pass --arch {loaded.arch}"
        )
    tolerance = DEFAULT_TOLERANCE[precision] if tolerance is None else tolerance
    metadata, source = model_metadata(loaded, precision)
    _step(
        f"preprocessing for the metadata: resize {metadata.resize_size}, crop {metadata.input_size}, "
        f"mean {list(metadata.mean)}, std {list(metadata.std)} ({source})"
    )
    t1 = _step(f"exporting {loaded.arch} (weights: {loaded.weights_description}) to ONNX opset {opset}, {precision}")
    model = export_model(loaded, metadata, opset)
    with atomic_output(out) as tmp:
        onnx.save_model(model, str(tmp))
        t2 = _step(f"exported in {time.perf_counter() - t1:.1f} s; running onnx.checker")
        onnx.checker.check_model(str(tmp), full_check=True)
        _step(f"verifying against PyTorch at batch sizes {list(verify_batch_sizes)}")
        worst = verify(tmp, loaded, list(verify_batch_sizes), tolerance, relative=precision == "fp16")
    _step(
        f"done: {out} ({precision}, {out.stat().st_size / 2**20:.0f} MiB, "
        f"{'relative ' if precision == 'fp16' else ''}max |diff| {worst:.2g}, "
        f"{time.perf_counter() - t0:.1f} s in all, verify {time.perf_counter() - t2:.1f} s)"
    )
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python export/to_onnx.py",
        description="Export AlexNet to ONNX (dynamic batch) and verify it against PyTorch.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="our checkpoint or a torchvision state-dict file; none = untrained (seeded random)",
    )
    parser.add_argument(
        "--arch",
        choices=sorted(ARCHS),
        default=None,
        help="architecture of a torchvision-layout state-dict file or of the untrained model (default: "
        "torchvision); our checkpoints record theirs, and a different --arch is refused",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"ONNX file to write; default {DEFAULT_OUT} for fp32, {default_out('fp16')} for fp16",
    )
    parser.add_argument("--opset", type=int, choices=OPSETS, default=DEFAULT_OPSET, help="ONNX opset")
    parser.add_argument(
        "--verify-batch-sizes",
        type=positive_int,
        nargs="+",
        default=[1, 7, 32],
        help="batch sizes compared with PyTorch",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp16: float16 weights and compute inside, float32 input/logits (TensorRT 11)",
    )
    parser.add_argument(
        "--tolerance",
        type=positive_float,
        default=None,
        help="max |diff| allowed; default 1e-4 absolute for fp32, 1e-2 relative to max |logit| for fp16",
    )
    return parser


def default_out(precision: str) -> Path:
    """Where ``--out`` goes when not given: the fp32 file, or its fp16 sibling (never over the fp32 one)."""
    return fp16_sibling(DEFAULT_OUT) if precision == "fp16" else DEFAULT_OUT


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    out = args.out if args.out is not None else default_out(args.precision)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_main(
        "to_onnx",
        lambda: export_and_verify(
            args.checkpoint,
            out,
            args.arch or "torchvision",
            args.opset,
            tuple(args.verify_batch_sizes),
            args.tolerance,
            args.precision,
            arch_given=args.arch is not None,
        ),
        (CheckpointError, ExportError, ValueError),
    )


if __name__ == "__main__":
    raise SystemExit(main())
