"""Export AlexNet to ONNX with a dynamic batch axis, then verify it against PyTorch.

    python export/to_onnx.py --out artifacts/alexnet.onnx                       # untrained (loud warning)
    python export/to_onnx.py --checkpoint artifacts/alexnet.pt --out artifacts/alexnet.onnx

The file has input ``input`` (N,3,H,W) float32 and output ``logits`` (N,classes), one self-contained
file, and our metadata (export/onnx_metadata.py). ``onnx.checker`` must pass and ONNX Runtime must
agree with PyTorch within ``--tolerance`` at each ``--verify-batch-sizes``, or nothing is written.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from export.onnx_metadata import ModelMetadata, write_metadata
from model.alexnet import arch_spec
from model.weights import CheckpointError, LoadedModel, load_model

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18
MAX_BATCH = 4096


class ExportError(RuntimeError):
    """The exported model is invalid or disagrees with PyTorch."""


def _step(message: str) -> float:
    print(f"[to_onnx] {message}", flush=True)
    return time.perf_counter()


def export_model(loaded: LoadedModel, out: Path, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Trace ``loaded.model`` to ONNX at ``out`` (dynamic batch) and stamp our metadata into it."""
    spec = arch_spec(loaded.arch)
    size = spec.input_size
    example = torch.randn(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's problem
        raw = Path(tmp) / "raw.onnx"
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(
            loaded.model.eval(),
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
    write_metadata(
        model,
        ModelMetadata(
            arch=loaded.arch,
            labels=list(loaded.labels),
            input_size=size,
            resize_size=spec.resize_size,
            weights=loaded.weights_description,
            weights_sha256=loaded.weights_sha256,
        ),
    )
    model.producer_name = "alexnet-serve"
    return model


def verify(model_path: Path, loaded: LoadedModel, batch_sizes: list[int], tolerance: float) -> float:
    """Max |ONNX Runtime - PyTorch| over random batches of each size; ExportError above ``tolerance``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    size = arch_spec(loaded.arch).input_size
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
        print(f"[to_onnx]   batch {n:>4}: max |onnxruntime - torch| = {diff:.3g}", flush=True)
        worst = max(worst, diff)
    if worst > tolerance:
        raise ExportError(f"ONNX Runtime disagrees with PyTorch: max |diff| {worst:.3g} > {tolerance:g}")
    return worst


def export_and_verify(
    checkpoint: Path | None,
    out: Path,
    arch: str = "torchvision",
    opset: int = DEFAULT_OPSET,
    verify_batch_sizes: tuple[int, ...] = (1, 7, 32),
    tolerance: float = 1e-4,
) -> Path:
    """Load weights, export, check, verify, then move the file into place (never a half-checked file)."""
    t0 = _step(f"loading {'checkpoint ' + str(checkpoint) if checkpoint else 'untrained ' + arch + ' model'}")
    loaded = load_model(checkpoint, arch)
    t1 = _step(f"exporting {loaded.arch} (weights: {loaded.weights_description}) to ONNX opset {opset}")
    model = export_model(loaded, out, opset)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        onnx.save_model(model, str(tmp))
        t2 = _step(f"exported in {time.perf_counter() - t1:.1f} s; running onnx.checker")
        onnx.checker.check_model(str(tmp), full_check=True)
        _step(f"verifying against PyTorch at batch sizes {list(verify_batch_sizes)}")
        worst = verify(tmp, loaded, list(verify_batch_sizes), tolerance)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    _step(
        f"done: {out} ({out.stat().st_size / 2**20:.0f} MiB, max |diff| {worst:.2g}, "
        f"{time.perf_counter() - t0:.1f} s in all, verify {time.perf_counter() - t2:.1f} s)"
    )
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python export/to_onnx.py",
        description="Export AlexNet to ONNX (dynamic batch) and verify it against PyTorch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="our checkpoint or a torchvision state-dict file; none = untrained (seeded random)")
    parser.add_argument("--arch", default="torchvision", help="architecture when no checkpoint names one")
    parser.add_argument("--out", type=Path, default=Path("artifacts/alexnet.onnx"), help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (18-20)")
    parser.add_argument("--verify-batch-sizes", type=int, nargs="+", default=[1, 7, 32],
                        help="batch sizes compared with PyTorch")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max |diff| allowed in fp32")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        export_and_verify(args.checkpoint, args.out, args.arch, args.opset,
                          tuple(args.verify_batch_sizes), args.tolerance)
    except (CheckpointError, ExportError, ValueError) as exc:
        print(f"[to_onnx] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
