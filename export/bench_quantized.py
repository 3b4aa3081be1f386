"""Throughput of the fp32 and the INT8 ONNX model in ONNX Runtime on this CPU, at one batch size.

    python export/bench_quantized.py --fp32 artifacts/alexnet.onnx --int8 artifacts/alexnet.int8.onnx

The two models are timed in alternating rounds (so a noisy neighbour slows both alike) and each
gets the median of its rounds. Prints img/s for each and the INT8 speed-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from export.onnx_metadata import read_metadata
from export.ort import int8_kernels_saturate
from model.help_format import DefaultsHelpFormatter


def make_session(path: Path, threads: int = 0, fuse_int8: bool = True):
    """A CPU ONNX Runtime session; ``threads`` 0 lets ONNX Runtime choose (one per core). Without
    ``fuse_int8`` a Q/DQ model runs as its own math (DequantizeLinear, then float ops): what the
    quantization means, whatever this CPU's int8 kernels do (export/ort.py, int8_kernels_saturate)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not fuse_int8:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_round(session, batch: np.ndarray, iterations: int) -> float:
    """img/s over ``iterations`` runs of ``batch``."""
    name = session.get_inputs()[0].name
    start = time.perf_counter()
    for _ in range(iterations):
        session.run(None, {name: batch})
    return iterations * len(batch) / (time.perf_counter() - start)


def compare_throughput(
    fp32: Path, int8: Path, batch_size: int = 32, rounds: int = 5, iterations: int = 2, threads: int = 0, log=print
) -> dict[str, float]:
    """Median img/s of each model over alternating rounds, and ``speedup`` = int8 / fp32.

    The int8 model runs as the service runs it on this CPU: unfused where ONNX Runtime's int8
    kernels saturate (export/ort.py), since their speed there comes with wrong answers."""
    fused = int8_kernels_saturate() is None
    sessions = {"fp32": make_session(fp32, threads), "int8": make_session(int8, threads, fuse_int8=fused)}
    size = sessions["fp32"].get_inputs()[0].shape[2]
    batch = np.random.default_rng(0).standard_normal((batch_size, 3, size, size), dtype=np.float32)
    for session in sessions.values():  # warm-up: first runs allocate and pick kernels
        time_round(session, batch, 1)
    samples: dict[str, list[float]] = {"fp32": [], "int8": []}
    for r in range(rounds):
        for name, session in sessions.items():
            samples[name].append(time_round(session, batch, iterations))
        log(
            f"[bench]   round {r + 1}/{rounds}: fp32 {samples['fp32'][-1]:.0f} img/s, "
            f"int8 {samples['int8'][-1]:.0f} img/s"
        )
    result = {name: statistics.median(values) for name, values in samples.items()}
    result["speedup"] = result["int8"] / result["fp32"]
    result["int8_fused"] = float(fused)
    return result


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python export/bench_quantized.py",
        description="Compare fp32 and INT8 ONNX throughput in ONNX Runtime on this CPU.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--fp32", type=Path, default=Path("artifacts/alexnet.onnx"), help="fp32 ONNX model")
    parser.add_argument(
        "--int8", type=Path, default=Path("artifacts/alexnet.int8.onnx"), help="Q/DQ model from export/quantize.py"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per run")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds per model")
    parser.add_argument("--iterations", type=int, default=2, help="runs per round")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads; 0 = ONNX Runtime's choice")
    return parser


def precision_mismatch(fp32: Path, int8: Path) -> str | None:
    """What is wrong when the files' recorded precisions are not fp32 and int8 as passed, or None."""
    try:
        found = {"fp32": read_metadata(fp32).precision, "int8": read_metadata(int8).precision}
    except ValueError as exc:  # not ONNX, or no metadata of ours
        return str(exc)
    if found == {"fp32": "int8", "int8": "fp32"}:
        return f"--fp32 {fp32} is the int8 model and --int8 {int8} the fp32 one; swap them"
    wrong = [
        f"--{flag} {path} is {found[flag]}" for flag, path in (("fp32", fp32), ("int8", int8)) if found[flag] != flag
    ]
    return "; ".join(wrong) + ", by its metadata" if wrong else None


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    for path in (args.fp32, args.int8):
        if not path.is_file():
            print(
                f"[bench] error: {path} not found; make it with export/to_onnx.py and export/quantize.py",
                file=sys.stderr,
            )
            return 1
    if (problem := precision_mismatch(args.fp32, args.int8)) is not None:
        print(f"[bench] error: {problem}", file=sys.stderr)
        return 1
    print(
        f"[bench] batch {args.batch_size}, {args.rounds} rounds x {args.iterations} runs, "
        f"threads {args.threads or 'auto'}, {os.cpu_count()} CPU cores",
        flush=True,
    )
    if (why := int8_kernels_saturate()) is not None:
        print(f"[bench] {why}: int8 is timed unfused, as the service runs it here", flush=True)
    r = compare_throughput(args.fp32, args.int8, args.batch_size, args.rounds, args.iterations, args.threads)
    print(
        f"[bench] fp32 {r['fp32']:.1f} img/s, int8 {r['int8']:.1f} img/s{'' if r['int8_fused'] else ' (unfused)'}, "
        f"speed-up {r['speedup']:.2f}x at batch {args.batch_size}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
