"""INT8: a Q/DQ ONNX model by ONNX Runtime's static quantization, calibrated on a folder of images.

    python export/quantize.py --onnx artifacts/alexnet.onnx --calibration-dir data/calib \\
        --eval-dir data/eval --out artifacts/alexnet.int8.onnx

Weights are int8, symmetric, per output channel; activations int8, symmetric (zero point 0); biases
stay float32 (no int32 DequantizeLinear). That is the form TensorRT takes as explicit quantization
(its Q/DQ layers need int8 with zero point 0), so the same file serves ONNX Runtime on CPU and
``export/to_trt.py --precision int8``.

Then the model is checked: ``onnx.checker``, it loads in ONNX Runtime, its top-1 / top-5 agreement
with the fp32 model on ``--eval-dir`` (images not used for calibration), and its speed-up at batch 32
on this CPU. Top-5 agreement: the fp32 top-1 class is among the INT8 model's top 5.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from export.cli import run_main, step_printer
from export.image_folder import ImageFolderError, iter_batches, list_images
from export.onnx_metadata import INPUT_NAME, PREFIX, ModelMetadata, read_metadata, write_metadata
from export.ort import import_onnxruntime, int8_kernels_saturate
from model.arg_types import fraction, positive_int
from model.atomic_write import atomic_output, check_output_file
from model.help_format import DefaultsHelpFormatter

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


class QuantizeError(RuntimeError):
    """Quantization failed or produced a model that disagrees with fp32 beyond the allowed floor."""


_step = step_printer("quantize")


class _ImageReader:
    """Preprocessed image batches, as ONNX Runtime's calibration asks for them.

    Not derived from ``onnxruntime.quantization.CalibrationDataReader``, so that this module imports
    without ONNX Runtime (``run`` then says which extra to install): that class accepts any class with
    ``get_next`` as its subclass (``__subclasshook__``), and calibration calls only ``get_next``.
    """

    def __init__(self, paths: list[Path], meta: ModelMetadata, input_name: str, batch_size: int) -> None:
        self._batches = iter_batches(paths, meta, batch_size)
        self._input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: batch}


def quantize_model(
    src: Path, dst: Path, calibration: list[Path], meta: ModelMetadata, method: str = "minmax", batch_size: int = 16
) -> None:
    """Write the Q/DQ model of ``src`` to ``dst``, calibrated on ``calibration`` images."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = _ImageReader(calibration, meta, INPUT_NAME, batch_size)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # ONNX Runtime's recommended pre-pass: shape inference and graph clean-up before quantizing.
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
            }[method],
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        )


def stamp_metadata(path: Path, meta: ModelMetadata, details: dict) -> None:
    """Our metadata with ``precision`` int8, plus how it was quantized (``alexnet_serve.quantization``)."""
    model = onnx.load(str(path))
    used = {node.domain for node in model.graph.node} | {""}
    kept = [o for o in model.opset_import if o.domain in used]  # the pre-pass lists every domain it knows
    del model.opset_import[:]
    model.opset_import.extend(kept)
    write_metadata(model, ModelMetadata(**{**meta.__dict__, "precision": "int8"}))
    model.metadata_props.add(key=PREFIX + "quantization", value=json.dumps(details))
    model.producer_name = "alexnet-serve"
    onnx.save_model(model, str(path))


def agreement(
    fp32: Path, int8: Path, paths: list[Path], meta: ModelMetadata, batch_size: int = 16, fuse_int8: bool = False
) -> dict[str, float]:
    """Top-1 and top-5 agreement of ``int8`` with ``fp32`` on ``paths``, and the max |logit diff|.

    By default the int8 model runs as its Q/DQ math (the quantization's own quality, which TensorRT
    and CPUs with VNNI reproduce); ``fuse_int8`` measures this CPU's fused int8 kernels instead."""
    from export.bench_quantized import make_session

    ref, quant = make_session(fp32), make_session(int8, fuse_int8=fuse_int8)
    top1 = top5 = 0
    worst = 0.0
    for batch in iter_batches(paths, meta, batch_size):
        a = ref.run(None, {INPUT_NAME: batch})[0]
        b = quant.run(None, {INPUT_NAME: batch})[0]
        labels = a.argmax(1)
        top1 += int(np.sum(b.argmax(1) == labels))
        k = min(5, b.shape[1])
        top5 += int(np.sum(np.any(np.argsort(-b, axis=1)[:, :k] == labels[:, None], axis=1)))
        worst = max(worst, float(np.max(np.abs(a - b))))
    return {"top1": top1 / len(paths), "top5": top5 / len(paths), "max_abs_diff": worst, "images": len(paths)}


def run(
    onnx_path: Path,
    calibration_dir: Path,
    out: Path,
    eval_dir: Path | None = None,
    max_calibration_images: int = 128,
    method: str = "minmax",
    min_top1_agreement: float = 0.9,
    bench_rounds: int = 3,
) -> dict:
    """Quantize, check, measure; the file appears at ``out`` only if every check passed."""
    import_onnxruntime()  # quantizing and checking need it: say so now, not after reading the images
    check_output_file(out, "--out", "alexnet.int8.onnx")
    t0 = _step(f"reading {onnx_path}")
    if Path(onnx_path).is_dir():
        raise QuantizeError(
            f"{onnx_path} is a folder; pass the fp32 ONNX file, e.g. {Path(onnx_path) / 'alexnet.onnx'}"
        )
    if not Path(onnx_path).is_file():  # else the error is a bare "[Errno 2] No such file or directory"
        raise QuantizeError(f"{onnx_path} not found; export it first: python export/to_onnx.py --out {onnx_path}")
    meta = read_metadata(onnx_path)
    if meta.precision != "fp32":
        raise QuantizeError(f"{onnx_path} is {meta.precision}; quantize the fp32 export of export/to_onnx.py")
    calibration = list_images(calibration_dir, max_calibration_images)
    evaluation = list_images(eval_dir) if eval_dir else []
    shared = {p.resolve() for p in calibration} & {p.resolve() for p in evaluation}
    if shared:
        raise QuantizeError(
            f"{len(shared)} evaluation images are also calibration images (e.g. "
            f"{sorted(shared)[0]}); use separate folders so agreement is measured fairly"
        )
    result: dict = {"calibration_images": len(calibration), "method": method}
    with atomic_output(out) as tmp:
        _step(
            f"calibrating on {len(calibration)} images from {calibration_dir} ({method}) and quantizing "
            "(int8 symmetric, per-channel weights, Q/DQ)"
        )
        quantize_model(onnx_path, tmp, calibration, meta, method)
        stamp_metadata(
            tmp,
            meta,
            {
                "tool": "onnxruntime.quantization.quantize_static",
                "format": "QDQ",
                "per_channel": True,
                "symmetric": True,
                "method": method,
                "calibration_images": len(calibration),
            },
        )
        _step("running onnx.checker and loading in ONNX Runtime")
        onnx.checker.check_model(str(tmp), full_check=True)
        if evaluation:
            _step(f"measuring agreement with fp32 on {len(evaluation)} evaluation images from {eval_dir}")
            result["agreement"] = agreement(onnx_path, tmp, evaluation, meta)
            a = result["agreement"]
            _step(
                f"  top-1 agreement {a['top1']:.1%}, top-5 agreement {a['top5']:.1%}, "
                f"max |logit diff| {a['max_abs_diff']:.3g} (the Q/DQ math)"
            )
            if (why := int8_kernels_saturate()) is not None:
                fused = agreement(onnx_path, tmp, evaluation, meta, fuse_int8=True)
                result["agreement_fused_here"] = fused
                _step("  WARNING: " + fused_kernels_warning(why, a["top1"], fused["top1"]))
            if a["top1"] < min_top1_agreement:
                if meta.untrained:
                    _step("  untrained weights: their near-random logits make agreement meaningless; not enforced")
                else:
                    raise QuantizeError(
                        f"top-1 agreement {a['top1']:.1%} < {min_top1_agreement:.0%}; try "
                        "--method percentile or entropy, or more calibration images"
                    )
        else:
            _step("no --eval-dir: agreement with fp32 not measured")
        if bench_rounds:
            from export.bench_quantized import compare_throughput

            _step(f"timing fp32 and int8 at batch 32 on this CPU ({os.cpu_count()} cores)")
            result["throughput"] = compare_throughput(
                onnx_path, tmp, 32, rounds=bench_rounds, iterations=1, log=lambda m: None
            )
    summary = f"done: {out} ({out.stat().st_size / 2**20:.0f} MiB, int8 Q/DQ"
    if "agreement" in result:
        summary += f", top-1 agreement {result['agreement']['top1']:.1%}, top-5 {result['agreement']['top5']:.1%}"
    if "throughput" in result:
        summary += ", " + throughput_summary(result["throughput"], 32)
    _step(summary + f", {time.perf_counter() - t0:.0f} s in all)")
    return result


def fused_kernels_warning(why: str, qdq_top1: float, fused_top1: float) -> str:
    """The WARNING line for a CPU whose fused int8 kernels saturate, worded from what was measured."""
    if fused_top1 < qdq_top1:
        measured = f"through them top-1 agreement drops to {fused_top1:.1%} (Q/DQ math {qdq_top1:.1%}) on these images"
    else:
        measured = (
            f"through them top-1 agreement is {fused_top1:.1%} on these images, as the Q/DQ math's, "
            "but other images can saturate"
        )
    return (
        f"{why}; {measured}. The file is fine for TensorRT and for CPUs with VNNI; the service runs it "
        "unfused on this CPU (slower than fp32)"
    )


def throughput_summary(t: dict[str, float], batch_size: int) -> str:
    """``int8 X img/s vs fp32 Y img/s (int8 speed-up Z x)``: each number named."""
    unfused = "" if t.get("int8_fused", 1.0) else " (unfused)"
    return (
        f"int8{unfused} {t['int8']:.0f} img/s vs fp32 {t['fp32']:.0f} img/s (int8 speed-up {t['speedup']:.2f}x) "
        f"at batch {batch_size}"
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python export/quantize.py",
        description="Quantize an fp32 ONNX model to INT8 Q/DQ (ONNX Runtime static quantization).",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--onnx", type=Path, default=Path("artifacts/alexnet.onnx"), help="fp32 ONNX model")
    parser.add_argument("--calibration-dir", type=Path, required=True, help="folder of calibration images")
    parser.add_argument(
        "--eval-dir", type=Path, default=None, help="folder of other images to measure agreement with fp32 on"
    )
    parser.add_argument("--out", type=Path, default=Path("artifacts/alexnet.int8.onnx"), help="Q/DQ model to write")
    parser.add_argument(
        "--max-calibration-images",
        type=positive_int,
        default=128,
        help="at most N images, evenly spaced over the sorted files so every class folder contributes; "
        "calibration memory grows ~4 MB per image",
    )
    parser.add_argument("--method", choices=CALIBRATION_METHODS, default="minmax", help="calibration method")
    parser.add_argument(
        "--min-top1-agreement",
        type=fraction,
        default=0.9,
        help="fail below this top-1 agreement with fp32 (not enforced for untrained weights)",
    )
    parser.add_argument("--bench-rounds", type=int, default=3, help="timing rounds at batch 32; 0 skips timing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return run_main(
        "quantize",
        lambda: run(
            args.onnx,
            args.calibration_dir,
            args.out,
            args.eval_dir,
            args.max_calibration_images,
            args.method,
            args.min_top1_agreement,
            args.bench_rounds,
        ),
        (QuantizeError, ImageFolderError, ValueError, FileNotFoundError),
    )


if __name__ == "__main__":
    raise SystemExit(main())
