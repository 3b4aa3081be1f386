"""Container entrypoint: make the model artifacts this host needs, then become the service.

    python -m service.entrypoint [service flags...]          # what the image runs
    ALEXNET_MODEL_DIR=artifacts python -m service.entrypoint --host 0.0.0.0 --max-batch-size 64
    python -m service.entrypoint --model-dir /data/alexnet

Steps, each logged with its time:

1. Find the weights in the model directory (``--model-dir`` / ``ALEXNET_MODEL_DIR``, a setting of the
   service; default ``artifacts``, ``/models`` in the image): ``alexnet.pt`` (our checkpoint) or
   torchvision's ``alexnet-owt-*.pth``, unless ``--checkpoint`` / ``ALEXNET_CHECKPOINT`` names one;
   none = untrained, loudly. The service itself looks for no checkpoint there (it would change what
   a plain ``python -m service`` serves): the entrypoint passes the one it found on as
   ``ALEXNET_CHECKPOINT``.
2. Export ONNX (``export/to_onnx.py``) if it is missing or holds other weights than the checkpoint;
   on a CUDA host under ``--precision auto`` or ``fp16`` also its fp16 export ``alexnet.fp16.onnx``
   (float16 weights and compute, float32 input and logits), which TensorRT and ONNX Runtime serve there.
3. Build the TensorRT engine with ``export/to_trt.py`` if it is missing, older than its ONNX file, or
   built for another GPU, TensorRT version or ONNX file (its ``.json`` sidecar,
   ``export/trt_sidecar.py``): fp16 from the fp16 ONNX (a strongly typed network, the one way both
   TensorRT 10 and 11 take), fp32 from the fp32 ONNX under ``--precision fp32``. No TensorRT or no
   CUDA GPU here (to_trt exits 2): skipped with the reason, and ``auto`` serves with ONNX Runtime.
4. ``exec`` ``python -m service`` with the same arguments, so signals reach the supervisor directly.

Every argument passes through to ``python -m service`` unchanged; the artifact paths come from the
same settings the service reads (``--onnx``, ``--engine``, ``--checkpoint``), the first two
defaulting to ``alexnet.onnx`` and ``alexnet.plan`` in the model directory (service/settings.py).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager, suppress
from pathlib import Path

from pydantic import ValidationError

from service.process import EXIT_INVALID_SETTINGS

log = logging.getLogger("entrypoint")

CHECKPOINT_ENV = "ALEXNET_CHECKPOINT"
CHECKPOINT_NAMES = ("alexnet.pt",)
TORCHVISION_GLOB = "alexnet-owt-*.pth"
TRT_UNAVAILABLE_EXIT = 2  # to_trt.py's "no tensorrt or no CUDA GPU here"


def to_trt_script() -> Path:
    """``export/to_trt.py`` beside the installed ``export`` package (repo checkout or image)."""
    import export

    return Path(export.__file__).resolve().parent / "to_trt.py"


class EntrypointError(RuntimeError):
    """A step that cannot go on; the message says what to do."""


class InvalidSettings(EntrypointError):
    """Settings that cannot run at all, refused before any step works (exit 2, as ``python -m service``)."""


@contextmanager
def stopped_by_sigterm():
    """While the artifacts are made: SIGTERM (``docker stop``, the kubelet) stops the entrypoint at
    once, exit 143, killing a build in progress (``run_logged``). Without it, the entrypoint as a
    container's PID 1 would ignore SIGTERM (the kernel's rule for PID 1 without a handler) until the
    SIGKILL that follows, and one started by hand would die leaving its engine build running."""

    def stop(signum: int, _frame) -> None:
        log.warning("stopped by %s while making the artifacts", signal.Signals(signum).name)
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():  # only there can Python take signals
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def step(title: str):
    """Log the start and the end of a step with its duration."""
    log.info("%s ...", title)
    t0 = time.perf_counter()
    yield
    log.info("%s: done in %.1f s", title, time.perf_counter() - t0)


def find_checkpoint(model_dir: Path) -> Path | None:
    """Our ``alexnet.pt``, else the first torchvision ``alexnet-owt-*.pth``, in ``model_dir``."""
    for name in CHECKPOINT_NAMES:
        if (model_dir / name).is_file():
            return model_dir / name
    published = sorted(model_dir.glob(TORCHVISION_GLOB))
    return published[0] if published else None


def apply_model_dir_defaults(model_dir: Path, environ) -> None:
    """Name the checkpoint found in ``model_dir`` as ``ALEXNET_CHECKPOINT`` in ``environ`` (which the
    service inherits through exec) unless the environment names one already (empty: none, on purpose).

    Flags still win: the service resolves flags over environment over defaults. The ONNX file and the
    engine need nothing here: the service derives them from the model directory itself.
    """
    if CHECKPOINT_ENV not in environ:
        found = find_checkpoint(model_dir)
        if found is not None:
            environ[CHECKPOINT_ENV] = str(found)


def onnx_needs_export(onnx: Path, checkpoint: Path | None, arch: str) -> str | None:
    """Why ``onnx`` must be (re)exported, or None when it already holds these weights and the
    preprocessing they were trained with (an export made before the ONNX carried it may not);
    the service refuses such an export by the same check (export/checkpoint_match.py)."""
    from export.onnx_metadata import read_export

    meta, problem = read_export(onnx)
    if meta is None:
        return problem
    if checkpoint is None:
        return None  # whatever it holds was exported on purpose; the service reports its weights
    from export.checkpoint_match import export_mismatch

    return export_mismatch(onnx, meta, checkpoint, arch)


def export_onnx(onnx: Path, checkpoint: Path | None, arch: str, precision: str = "fp32") -> None:
    from export.to_onnx import export_and_verify

    if checkpoint is None:
        log.warning(
            "NO CHECKPOINT in the model directory: exporting an UNTRAINED AlexNet; its labels are "
            "meaningless. Put alexnet.pt or torchvision's alexnet-owt-*.pth there, or pass --checkpoint."
        )
    export_and_verify(checkpoint, onnx, arch, precision=precision)


def gpu_here(settings) -> bool:
    """A CUDA GPU that this service may use: visible to PyTorch and not ruled out by ``--device cpu``."""
    if settings.device == "cpu":
        return False
    from service.backends import cuda_available

    return cuda_available()


def wants_fp16(settings) -> bool:
    """fp16 artifacts serve this host: a CUDA device, precision auto or fp16, a backend that reads ONNX."""
    if settings.precision == "fp32" or settings.backend == "torch":
        return False
    return gpu_here(settings)


def prepare_fp16(settings, onnx_exported: bool) -> tuple[Path, str, bool]:
    """Make the fp16 export beside ``settings.onnx`` where it is missing or stale; returns what the
    engine is built from: (ONNX file, precision, whether that file was just written).

    Without a checkpoint, an ONNX holding other than the untrained weights (exported by hand) cannot
    be re-exported in fp16: then the engine comes from it with ``--precision fp16``, which TensorRT 10
    does with its FP16 flag and TensorRT 11 refuses, saying to export the fp16 ONNX.
    """
    from export.onnx_metadata import fp16_sibling, fp16_sibling_mismatch, read_metadata

    meta = read_metadata(settings.onnx)
    if meta.precision != "fp32" or not wants_fp16(settings):
        return settings.onnx, meta.precision, onnx_exported  # int8 or fp16 given, or an fp32 host
    fp16 = fp16_sibling(settings.onnx)
    reason = fp16_sibling_mismatch(settings.onnx, meta)
    if reason is None:
        log.info("%s is present and current; not exporting", fp16)
        return fp16, "fp16", False
    if settings.checkpoint is None and not meta.untrained:
        log.warning(
            "cannot export %s (%s): %s holds weights %r and no checkpoint was given to export them again; "
            "pass --checkpoint, or export it by hand with python export/to_onnx.py --precision fp16",
            fp16,
            reason,
            settings.onnx,
            meta.weights,
        )
        return settings.onnx, "fp16", onnx_exported
    log.info("exporting the fp16 ONNX: %s", reason)
    export_onnx(fp16, settings.checkpoint, settings.arch, "fp16")
    return fp16, "fp16", True


def engine_needs_build(engine: Path, onnx: Path, onnx_exported: bool) -> str | None:
    """Why ``engine`` must be (re)built, or None when it fits this GPU, this TensorRT and this ONNX."""
    if not engine.is_file():
        return f"{engine} is missing"
    if onnx_exported or engine.stat().st_mtime < onnx.stat().st_mtime:
        return f"{engine} is older than {onnx}"
    from export.trt_sidecar import EngineMismatch, SidecarError, check_engine_compatible, file_sha256

    try:
        check_engine_compatible(engine, onnx_sha256=file_sha256(onnx))
    except EngineMismatch as exc:
        return f"{engine} was built for another GPU, TensorRT or ONNX file: {exc}"
    except SidecarError as exc:  # no sidecar, unreadable, or no TensorRT/GPU to compare with
        return f"cannot verify {engine} ({exc}); rebuilding"
    return None


def build_engine(
    onnx: Path, engine: Path, precision: str, max_batch: int = 64, script: Path | None = None, timeout_s: float = 1800
) -> tuple[bool, str]:
    """Run ``to_trt.py``; (True, "") when built, (False, reason) when TensorRT cannot run here.

    Any other failure raises EntrypointError with the tool's output.
    """
    script = script or to_trt_script()
    if not script.is_file():
        return False, f"{script} is not part of this build"
    # The profile must cover the service's largest batch; the timing cache lives with the engine.
    command = [
        sys.executable,
        str(script),
        "--onnx",
        str(onnx),
        "--out",
        str(engine),
        "--precision",
        precision,
        "--max-batch",
        str(max_batch),
        "--opt-batch",
        str(min(32, max_batch)),
        "--timing-cache",
        str(engine.with_name("trt_timing.cache")),
    ]
    log.info("running %s", " ".join(command))
    returncode, lines = run_logged(command, "to_trt", timeout_s)
    if returncode == 0:
        return True, ""
    if returncode == TRT_UNAVAILABLE_EXIT:
        return False, lines[-1] if lines else "to_trt.py exited 2 (TensorRT or a CUDA GPU is missing)"
    output = "\n".join(lines)
    raise EntrypointError(f"to_trt.py failed with exit {returncode}:\n{output[-4000:]}")


def run_logged(command: list[str], tag: str, timeout_s: float) -> tuple[int, list[str]]:
    """Run ``command``, logging each line of its output (stdout and stderr, in the order written) as
    it comes, not at the end: an engine build takes minutes and prints its progress. Its exit status
    and its last lines. It runs in its own process group, killed whole after ``timeout_s``
    (subprocess.TimeoutExpired) or when this process is interrupted: a build is never left running."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # lines as they are printed, stdout and stderr in order
    timed_out = threading.Event()
    tail: deque[str] = deque(maxlen=200)
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="backslashreplace",  # a path in another encoding is logged, not fatal
        env=env,
        start_new_session=True,  # its own group: a child of its own cannot hold the pipe past the kill
    ) as proc:

        def kill() -> None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        def time_out() -> None:
            timed_out.set()
            kill()

        timer = threading.Timer(timeout_s, time_out)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                if line:
                    log.info("  %s: %s", tag, line)
                    tail.append(line)
            returncode = proc.wait()
        except BaseException:  # interrupted (Ctrl-C, SystemExit): not a build left running without us
            kill()
            raise
        finally:
            timer.cancel()
    if timed_out.is_set() and returncode < 0:  # killed by the timer, not finished just before it fired
        raise subprocess.TimeoutExpired(command, timeout_s, output="\n".join(tail))
    return returncode, list(tail)


def prepare(argv: list[str]) -> None:
    """Steps 1-3: leave the artifacts the service needs in place; ``os.environ`` gains the defaults."""
    from service.__main__ import refusal, settings_from_args

    model_dir = settings_from_args(argv).model_dir
    with step(f"step 1/4: model directory {model_dir}"):
        model_dir.mkdir(parents=True, exist_ok=True)
        apply_model_dir_defaults(model_dir, os.environ)  # inherited by the service through exec
        settings = settings_from_args(argv)  # with the checkpoint found
        log.info(
            "onnx=%s engine=%s checkpoint=%s backend=%s http_workers=%d",
            settings.onnx,
            settings.engine,
            settings.checkpoint or "none (untrained)",
            settings.backend,
            settings.frontends,
        )
        from service.backends import cuda_available  # in-process: this process loads torch anyway

        if (why := refusal(settings, onnx_made_later=True, cuda_check=cuda_available)) is not None:
            raise InvalidSettings(why)

    exported = False
    with step("step 2/4: ONNX model"):
        reason = onnx_needs_export(settings.onnx, settings.checkpoint, settings.arch)
        if reason is None:
            log.info("%s is present and current; not exporting", settings.onnx)
        else:
            log.info("exporting: %s", reason)
            export_onnx(settings.onnx, settings.checkpoint, settings.arch)
            exported = True
        source, precision, exported = prepare_fp16(settings, exported)

    with step("step 3/4: TensorRT engine"):
        if settings.backend in ("onnxruntime", "torch"):
            log.info("skipped: backend=%s was asked for", settings.backend)
            return
        if settings.backend == "auto" and not gpu_here(settings):
            # Not a warning: on a CPU host there is nothing to install, ONNX Runtime is the plan.
            log.info(
                "skipped: no CUDA GPU here (device %s); the service takes the next backend (ONNX Runtime)",
                settings.device,
            )
            return
        reason = engine_needs_build(settings.engine, source, exported)
        if reason is None:
            log.info("%s fits this GPU and TensorRT and comes from %s; not rebuilding", settings.engine, source)
            return
        log.info("building from %s (%s): %s", source, precision, reason)
        try:
            built, why_not = build_engine(
                source, settings.engine, precision, max_batch=max(64, settings.max_batch_size)
            )
        except (EntrypointError, subprocess.TimeoutExpired) as exc:
            if settings.backend == "tensorrt":
                raise
            # auto: ONNX Runtime gives the same answers, slower; serving them beats a crash loop.
            log.error("TensorRT engine build FAILED; serving without TensorRT: %s", exc)
            return
        if built:
            log.info("built %s (%s)", settings.engine, precision)
        elif settings.backend == "tensorrt":
            raise EntrypointError(f"backend=tensorrt was asked for, but TensorRT cannot run here: {why_not}")
        else:
            log.warning("TensorRT skipped: %s; the service takes the next backend (ONNX Runtime)", why_not)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for chatty in ("onnxscript", "onnx_ir"):  # the exporter's pass-by-pass INFO lines
        logging.getLogger(chatty).setLevel(logging.WARNING)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip() + "\n\nService flags (python -m service --help):\n", file=sys.stderr, flush=True)
    else:
        t0 = time.perf_counter()
        try:
            with stopped_by_sigterm():
                prepare(argv)
        except SystemExit:
            raise  # argparse already said what was wrong with the flags
        except InvalidSettings as exc:
            log.error("cannot start: %s", exc)
            return EXIT_INVALID_SETTINGS
        except ValidationError as exc:
            from service.__main__ import explain

            log.error("cannot start: %s", explain(exc))
            return EXIT_INVALID_SETTINGS
        except Exception as exc:
            log.error("cannot start: %s: %s", type(exc).__name__, exc)
            return 1
        log.info("artifacts ready in %.1f s", time.perf_counter() - t0)
    command = [sys.executable, "-m", "service", *argv]
    log.info("step 4/4: exec %s", " ".join(command))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(command[0], command)  # replaces this process: the supervisor gets SIGTERM from docker/kubelet
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
