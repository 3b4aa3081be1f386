"""Build a TensorRT engine from our ONNX file with TensorRT's Python API, verify it, write a sidecar.

    python export/to_trt.py --onnx artifacts/alexnet.onnx --out artifacts/alexnet.plan             # fp32
    python export/to_trt.py --onnx artifacts/alexnet.fp16.onnx --out artifacts/alexnet.fp16.plan   # fp16, TRT 10 or 11
    python export/to_trt.py --onnx artifacts/alexnet.onnx --precision fp16 --out artifacts/alexnet.fp16.plan  # TRT 10 only
    python export/to_trt.py --onnx artifacts/alexnet.int8.onnx --out artifacts/alexnet.int8.plan   # int8 Q/DQ

How the precision is obtained (``plan_build``):
- the ONNX file carries it (fp32 export, ``to_onnx.py --precision fp16``, Q/DQ from ``quantize.py``):
  a strongly typed network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``), the same code on
  TensorRT 10 and 11 (11 ignores the flag: strong typing is always on);
- fp16 from an fp32 ONNX: TensorRT 10's ``BuilderFlag.FP16`` on a weakly typed network. TensorRT 11
  removed that flag; there the tool stops and says to export an fp16 ONNX.

The build prints a line as each of TensorRT's top-level phases starts and ends and one on its
progress every 10 s at most, and Ctrl-C cancels it (export/trt_progress.py). Then the engine runs on
sample batches and is compared with ONNX Runtime on the same ONNX (top-1 agreement, max |diff|); only
a verified engine is written, with ``<out>.json`` (export/trt_sidecar.py).
Without tensorrt or a CUDA GPU the tool exits with status 2 and says what is missing.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from export.cli import run_main, step_printer
from export.onnx_metadata import INPUT_NAME, OUTPUT_NAME, read_metadata
from export.ort import import_onnxruntime
from export.trt_progress import BuildProgress, cancel_on_ctrl_c, monitor_for
from model.arg_types import fraction, positive_int
from model.atomic_write import check_output_file, write_bytes_atomic
from model.help_format import DefaultsHelpFormatter

EXIT_MISSING = 2
GET_TENSORRT = (
    "pip install 'tensorrt>=10' on a host with an NVIDIA GPU (or `make install` there, which "
    "adds the [gpu] extra), or run in NVIDIA's image nvcr.io/nvidia/tensorrt:<yy.mm>-py3"
)
MIN_TOP1_AGREEMENT = {"fp32": 0.99, "fp16": 0.9, "int8": 0.9}  # enforced for trained weights only
FP32_RELATIVE_TOLERANCE = 1e-3  # max |TensorRT - ONNX Runtime| / max |logit|; TF32 is off for fp32


class MissingPrerequisite(RuntimeError):
    """tensorrt or a CUDA GPU is missing; the message says how to get it."""


class BuildError(RuntimeError):
    """The engine could not be built or failed verification."""


_step = step_printer("to_trt")


def load_tensorrt(import_module: Callable[[str], Any] = importlib.import_module) -> Any:
    """The ``tensorrt`` module, once it and a CUDA GPU usable from torch are known to be present."""
    try:
        trt = import_module("tensorrt")
    except ModuleNotFoundError:
        raise MissingPrerequisite(f"tensorrt is not installed: {GET_TENSORRT}") from None
    except (ImportError, OSError) as exc:  # the Python bindings without the libraries they load
        raise MissingPrerequisite(
            f"tensorrt is installed but cannot load its libraries ({exc}): {GET_TENSORRT}"
        ) from None
    try:
        torch = import_module("torch")
    except ImportError:
        raise MissingPrerequisite("torch is not installed; it provides the CUDA buffers: make install") from None
    if torch.version.cuda is None:
        raise MissingPrerequisite(
            f"torch {torch.__version__} is a CPU build; install its CUDA build on the "
            "GPU host (make install there picks it)"
        )
    if not torch.cuda.is_available():
        raise MissingPrerequisite(
            "no CUDA GPU visible (torch.cuda.is_available() is False): run on a host with "
            "an NVIDIA GPU and driver; in Docker pass --gpus all"
        )
    return trt


@dataclass(frozen=True)
class BuildPlan:
    precision: str
    strongly_typed: bool
    fp16_flag: bool  # TensorRT 10's BuilderFlag.FP16 on a weakly typed network


def plan_build(requested: str | None, onnx_precision: str, has_fp16_flag: bool) -> BuildPlan:
    """How to get ``requested`` precision from an ONNX of ``onnx_precision`` (see the module docstring)."""
    requested = requested or onnx_precision
    if requested == onnx_precision:
        return BuildPlan(requested, strongly_typed=True, fp16_flag=False)
    if requested == "fp16" and onnx_precision == "fp32":
        if has_fp16_flag:
            return BuildPlan("fp16", strongly_typed=False, fp16_flag=True)
        raise BuildError(
            "this TensorRT has no BuilderFlag.FP16 (TensorRT 11 removed it): export an fp16 ONNX "
            "with python export/to_onnx.py --precision fp16 and build from that"
        )
    if requested == "int8":
        raise BuildError(
            f"int8 needs a Q/DQ ONNX, this one is {onnx_precision}: make one with "
            "python export/quantize.py, then build from it"
        )
    raise BuildError(
        f"--precision {requested} from an {onnx_precision} ONNX is not supported; "
        f"use the {requested} ONNX export or --precision {onnx_precision}"
    )


def verification_problems(
    precision: str, untrained: bool, top1: float, relative_diff: float, min_top1: float | None = None
) -> list[str]:
    """Why the engine must not be used; empty when it passed."""
    problems = []
    if not np.isfinite(relative_diff):
        problems.append("the engine produced non-finite logits")
    elif precision == "fp32" and relative_diff > FP32_RELATIVE_TOLERANCE:
        problems.append(f"fp32 max |diff| is {relative_diff:.3g} of the largest logit (> {FP32_RELATIVE_TOLERANCE:g})")
    floor = MIN_TOP1_AGREEMENT[precision] if min_top1 is None else min_top1
    if not untrained and top1 < floor:
        problems.append(f"top-1 agreement with ONNX Runtime {top1:.1%} < {floor:.0%}")
    return problems


def build_engine(
    trt: Any,
    onnx_path: Path,
    plan: BuildPlan,
    input_shape: tuple[int, int, int],
    batches: tuple[int, int, int],
    workspace_mib: int,
    timing_cache: Path | None,
    input_name: str = INPUT_NAME,
) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine with one optimization profile for the batch."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if plan.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    t = _step(f"parsing {onnx_path}")
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    _step(f"  parsed {network.num_layers} layers in {time.perf_counter() - t:.1f} s")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    if plan.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default; fp32 should mean fp32
    profile = builder.create_optimization_profile()
    lo, opt, hi = ((n, *input_shape) for n in batches)
    profile.set_shape(input_name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache_loaded = attach_timing_cache(config, timing_cache)

    t = _step(
        f"building ({plan.precision}, {'strongly' if plan.strongly_typed else 'weakly'} typed, batch "
        f"{batches[0]}/{batches[1]}/{batches[2]}, workspace {workspace_mib} MiB, timing cache "
        f"{'loaded from ' + str(timing_cache) if cache_loaded else 'new'}); this takes minutes"
    )
    progress = BuildProgress(_step)
    monitor = monitor_for(trt, progress)  # referenced here until the build has returned, as TensorRT asks
    if monitor is not None:
        config.progress_monitor = monitor  # progress lines, and Ctrl-C cancels the build
    with cancel_on_ctrl_c(progress):
        serialized = builder.build_serialized_network(network, config)
    if progress.cancelled:  # as a Ctrl-C anywhere else: run_main's one line, exit 130
        raise KeyboardInterrupt
    if serialized is None:
        raise BuildError("TensorRT could not build the engine; see its log above (a larger --workspace-mib?)")
    _step(f"  built in {time.perf_counter() - t:.1f} s")
    if timing_cache:
        try:
            write_bytes_atomic(timing_cache, memoryview(config.get_timing_cache().serialize()))
        except OSError as exc:  # the engine is built; a cache that cannot be saved only slows the next build
            _step(f"  could not save the timing cache {timing_cache}: {exc}")
    return bytes(memoryview(serialized))


def attach_timing_cache(config: Any, path: Path | None) -> bool:
    """Give ``config`` the timing cache saved at ``path``, or a new one; True when the saved one was used.

    A cache written by another TensorRT version, for another GPU, or damaged is refused by TensorRT:
    ``create_timing_cache`` raises (or returns None) or ``set_timing_cache`` returns False. Then the
    file is deleted and the build starts from a new cache (saved afresh after it), so upgrading
    TensorRT never leaves the service without an engine until someone deletes the file.
    """
    data = path.read_bytes() if path and path.is_file() else b""
    if path and data:
        try:
            cache = config.create_timing_cache(data)
            if cache is not None and config.set_timing_cache(cache, False):
                return True
            problem = "TensorRT refused it"
        except Exception as exc:  # the bindings raise TypeError/RuntimeError/ValueError by version
            problem = f"{type(exc).__name__}: {exc}"
        _step(
            f"  timing cache {path} is unusable here (another GPU or TensorRT version, or damaged: {problem}); "
            "deleted, building with a new one"
        )
        path.unlink(missing_ok=True)
    config.set_timing_cache(config.create_timing_cache(b""), False)
    return False


def compare_with_onnxruntime(
    trt: Any, engine: bytes, onnx_path: Path, input_shape: tuple[int, int, int], batch_sizes: list[int]
) -> dict[str, float]:
    """Top-1 agreement and max |diff| (absolute and relative to the largest logit) on random batches."""
    from export.trt_runner import TrtEngineRunner

    ort = import_onnxruntime()
    runner = TrtEngineRunner(trt, engine)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    agree = total = 0
    worst = scale = 0.0
    for n in batch_sizes:
        x = rng.standard_normal((n, *input_shape), dtype=np.float32)
        got, want = runner.infer(x), session.run(None, {session.get_inputs()[0].name: x})[0]
        if got.shape != want.shape:
            raise BuildError(f"batch {n}: engine output {got.shape}, ONNX Runtime {want.shape}")
        diff = float(np.max(np.abs(got - want)))
        top1 = int(np.sum(got.argmax(1) == want.argmax(1)))
        _step(f"  batch {n:>4}: top-1 agreement {top1}/{n}, max |tensorrt - onnxruntime| {diff:.3g}")
        agree, total = agree + top1, total + n
        worst, scale = max(worst, diff), max(scale, float(np.max(np.abs(want))))
    return {
        "top1_agreement": agree / total,
        "max_abs_diff": worst,
        "relative_max_diff": worst / max(scale, 1e-12),
        "images": total,
    }


def run(args: argparse.Namespace, trt: Any) -> Path:
    from export.trt_sidecar import EngineSidecar, current_device, file_sha256, write_sidecar

    import_onnxruntime()  # the verification needs it: say so now, not after minutes of building
    check_output_file(args.out, "--out", "alexnet.plan")
    device = current_device()
    t0 = _step(f"TensorRT {trt.__version__} on {device.gpu_name} (sm {device.compute_capability}); reading {args.onnx}")
    if not args.onnx.is_file():
        raise BuildError(f"{args.onnx}: no such ONNX file; make it with python export/to_onnx.py")
    meta = read_metadata(args.onnx)
    plan = plan_build(args.precision, meta.precision, hasattr(trt.BuilderFlag, "FP16"))
    if not 1 <= args.min_batch <= args.opt_batch <= args.max_batch:
        raise BuildError(
            f"need 1 <= --min-batch <= --opt-batch <= --max-batch, got "
            f"{args.min_batch}/{args.opt_batch}/{args.max_batch}"
        )
    input_shape = (3, meta.input_size, meta.input_size)
    batches = (args.min_batch, args.opt_batch, args.max_batch)
    t1 = time.perf_counter()
    engine = build_engine(trt, args.onnx, plan, input_shape, batches, args.workspace_mib, args.timing_cache)
    build_s = time.perf_counter() - t1
    sizes = sorted(set(args.verify_batch_sizes or batches))
    _step(f"verifying against ONNX Runtime at batch sizes {sizes}")
    result = compare_with_onnxruntime(trt, engine, args.onnx, input_shape, sizes)
    problems = verification_problems(
        plan.precision, meta.untrained, result["top1_agreement"], result["relative_max_diff"], args.min_top1_agreement
    )
    if meta.untrained:
        _step("  untrained weights: top-1 agreement is reported, not enforced")
    if problems:
        raise BuildError("engine failed verification, not written: " + "; ".join(problems))
    write_bytes_atomic(args.out, engine)
    sidecar = write_sidecar(
        args.out,
        EngineSidecar(
            tensorrt_version=trt.__version__,
            gpu_name=device.gpu_name,
            compute_capability=device.compute_capability,
            precision=plan.precision,
            strongly_typed=plan.strongly_typed,
            input_name=INPUT_NAME,
            output_name=OUTPUT_NAME,
            input_shape=list(input_shape),
            min_batch=batches[0],
            opt_batch=batches[1],
            max_batch=batches[2],
            workspace_mib=args.workspace_mib,
            onnx_sha256=file_sha256(args.onnx),
            engine_sha256=file_sha256(args.out),
            build_time_s=round(build_s, 1),
            built_at=datetime.now(UTC).isoformat(timespec="seconds"),
            onnx_path=str(args.onnx.resolve()),  # the service checks the engine against this file
            verification=result,
            model_metadata=asdict(meta),
        ),
    )
    _step(
        f"done: {args.out} ({len(engine) / 2**20:.0f} MiB, {plan.precision}, {device.gpu_name} sm "
        f"{device.compute_capability}, batch {batches[0]}-{batches[2]}, top-1 agreement "
        f"{result['top1_agreement']:.1%}, max |diff| {result['max_abs_diff']:.3g}, built in {build_s:.0f} s, "
        f"{time.perf_counter() - t0:.0f} s in all); sidecar {sidecar}"
    )
    return args.out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python export/to_trt.py",
        description="Build a TensorRT engine (TensorRT 10 or 11) from an ONNX export and verify it.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument(
        "--onnx",
        type=Path,
        default=Path("artifacts/alexnet.onnx"),
        help="fp32, fp16 (to_onnx.py --precision fp16) or int8 Q/DQ (quantize.py) ONNX",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("artifacts/alexnet.plan"),
        help="engine file; the sidecar is written to <out>.json",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default=None,
        help="default: the ONNX file's own precision (its metadata)",
    )
    parser.add_argument("--min-batch", type=int, default=1, help="smallest batch the engine accepts")
    parser.add_argument("--opt-batch", type=int, default=32, help="batch TensorRT tunes kernels for")
    parser.add_argument(
        "--max-batch",
        type=int,
        default=64,
        help="largest batch the engine accepts; keep >= the service's max_batch_size",
    )
    parser.add_argument("--workspace-mib", type=int, default=2048, help="builder workspace limit, MiB")
    parser.add_argument(
        "--timing-cache",
        type=Path,
        default=Path("artifacts/trt_timing.cache"),
        help="kernel timing cache, read and updated; speeds up rebuilds on the same GPU",
    )
    parser.add_argument(
        "--verify-batch-sizes",
        type=positive_int,
        nargs="+",
        default=None,
        help="batches compared with ONNX Runtime; default min, opt and max",
    )
    parser.add_argument(
        "--min-top1-agreement",
        type=fraction,
        default=None,
        help="default 0.99 fp32, 0.9 fp16/int8; not enforced for untrained weights",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from export.trt_sidecar import SidecarError

    try:
        trt = load_tensorrt()
    except MissingPrerequisite as exc:
        print(f"[to_trt] cannot build a TensorRT engine here: {exc}", file=sys.stderr)
        return EXIT_MISSING
    return run_main("to_trt", lambda: run(args, trt), (BuildError, SidecarError, ValueError))


if __name__ == "__main__":
    raise SystemExit(main())
