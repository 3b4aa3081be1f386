"""The container entrypoint's decisions, through its function API (no server, no export here)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import service.__main__
import service.backends
from model.weights import save_checkpoint, untrained_model
from service import entrypoint


def fake_to_trt(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "to_trt.py"
    script.write_text("import sys\nfrom pathlib import Path\nargs = sys.argv[1:]\n" + textwrap.dedent(body))
    return script


def test_the_model_dirs_checkpoint_is_found_and_never_overrides_the_environment(tmp_path):
    (tmp_path / "alexnet-owt-7be5be79.pth").write_bytes(b"")
    env: dict[str, str] = {}
    entrypoint.apply_model_dir_defaults(tmp_path, env)
    # The ONNX file and the engine in the model dir are the service's own defaults (--model-dir).
    assert env == {"ALEXNET_CHECKPOINT": str(tmp_path / "alexnet-owt-7be5be79.pth")}
    (tmp_path / "alexnet.pt").write_bytes(b"")  # our own checkpoint wins over torchvision's file
    assert entrypoint.find_checkpoint(tmp_path) == tmp_path / "alexnet.pt"
    env = {"ALEXNET_CHECKPOINT": "/mine.pt"}
    entrypoint.apply_model_dir_defaults(tmp_path, env)
    assert env == {"ALEXNET_CHECKPOINT": "/mine.pt"}
    env = {"ALEXNET_CHECKPOINT": ""}  # none, on purpose: the untrained model
    entrypoint.apply_model_dir_defaults(tmp_path, env)
    assert env == {"ALEXNET_CHECKPOINT": ""}


def test_the_model_dir_flag_is_where_the_entrypoint_looks(onnx_model, tmp_path, monkeypatch, caplog):
    """--model-dir, not only ALEXNET_MODEL_DIR: the ONNX file already there is found, not exported again."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "alexnet.onnx").symlink_to(onnx_model)
    monkeypatch.setattr(entrypoint, "gpu_here", lambda settings: False)
    monkeypatch.setattr(entrypoint, "export_onnx", lambda *a, **k: pytest.fail("exported what was there"))
    for name in ("ALEXNET_MODEL_DIR", "ALEXNET_ONNX", "ALEXNET_ENGINE", "ALEXNET_CHECKPOINT"):
        monkeypatch.setenv(name, "")  # recorded, so that what the entrypoint sets is unset after the test
        monkeypatch.delenv(name)
    caplog.set_level("INFO", logger="entrypoint")
    entrypoint.prepare(["--model-dir", str(models)])
    assert f"onnx={models / 'alexnet.onnx'} engine={models / 'alexnet.plan'} checkpoint=none" in caplog.text
    assert f"{models / 'alexnet.onnx'} is present and current; not exporting" in caplog.text


def test_no_checkpoint_means_none(tmp_path):
    assert entrypoint.find_checkpoint(tmp_path) is None


def test_onnx_is_exported_when_missing_or_holding_other_weights(onnx_model, tmp_path):
    assert "missing" in entrypoint.onnx_needs_export(tmp_path / "absent.onnx", None, "torchvision")
    assert entrypoint.onnx_needs_export(onnx_model, None, "torchvision") is None
    other = tmp_path / "other-weights.pth"  # a checkpoint dropped in after an untrained export
    torch.save(untrained_model(seed=1).model.state_dict(), other)
    reason = entrypoint.onnx_needs_export(onnx_model, other, "torchvision")
    assert reason and "not those of" in reason


def test_onnx_is_exported_again_when_it_preprocesses_otherwise_than_the_checkpoint_was_trained(onnx_model, tmp_path):
    """Same weights, but exported before the ONNX carried the checkpoint's recorded sizes."""
    loaded = untrained_model()  # the weights of onnx_model, whose metadata says 256/224
    checkpoint = save_checkpoint(
        tmp_path / "alexnet.pt", loaded.model, loaded.arch, loaded.labels, {"resize_size": 72, "crop_size": 64}
    )
    reason = entrypoint.onnx_needs_export(onnx_model, checkpoint, "torchvision")
    assert reason and "(224, 256" in reason and "(64, 72" in reason


def test_engine_is_rebuilt_when_missing_stale_or_unverifiable(tmp_path):
    onnx, engine = tmp_path / "m.onnx", tmp_path / "m.plan"
    onnx.write_bytes(b"onnx")
    assert "missing" in entrypoint.engine_needs_build(engine, onnx, onnx_exported=False)
    engine.write_bytes(b"plan")
    assert "older" in entrypoint.engine_needs_build(engine, onnx, onnx_exported=True)
    past = time.time() - 60
    os.utime(engine, (past, past))
    assert "older" in entrypoint.engine_needs_build(engine, onnx, onnx_exported=False)
    os.utime(engine, None)
    reason = entrypoint.engine_needs_build(engine, onnx, onnx_exported=False)
    # Without TensorRT (or without export/trt_sidecar.py yet) the engine cannot be checked: rebuild.
    assert reason is not None


def test_build_engine_reports_tensorrt_missing_as_a_skip_with_its_reason(tmp_path):
    script = fake_to_trt(
        tmp_path,
        """
        print("[to_trt] checking TensorRT")
        print("to_trt: TensorRT is not installed here (pip install tensorrt)", file=sys.stderr)
        sys.exit(2)
    """,
    )
    built, reason = entrypoint.build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", "fp16", script=script)
    assert not built and reason == "to_trt: TensorRT is not installed here (pip install tensorrt)"


def test_build_engine_passes_paths_and_precision(tmp_path):
    script = fake_to_trt(
        tmp_path,
        """
        out = Path(args[args.index("--out") + 1])
        out.write_text(" ".join(args))
    """,
    )
    onnx, engine = tmp_path / "m.onnx", tmp_path / "m.plan"
    assert entrypoint.build_engine(onnx, engine, "fp32", max_batch=128, script=script) == (True, "")
    assert engine.read_text() == (
        f"--onnx {onnx} --out {engine} --precision fp32 --max-batch 128 "
        f"--opt-batch 32 --timing-cache {tmp_path / 'trt_timing.cache'}"
    )


def test_build_engine_failure_is_an_error_with_the_tools_output(tmp_path):
    script = fake_to_trt(
        tmp_path,
        """
        print("parser: unsupported operator Foo", file=sys.stderr)
        sys.exit(1)
    """,
    )
    with pytest.raises(entrypoint.EntrypointError, match="unsupported operator Foo"):
        entrypoint.build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", "fp16", script=script)


def test_the_builds_output_is_logged_as_it_comes_not_when_it_ends(tmp_path):
    """A build takes minutes and prints its progress: each line reaches the log while it runs. The
    stand-in prints a line, then waits (up to 20 s) for the test to have seen it in the log."""
    seen = tmp_path / "seen"
    script = fake_to_trt(
        tmp_path,
        f"""
        import time
        print("[to_trt]   Building engine (3 steps)")
        deadline = time.monotonic() + 20
        while not Path({str(seen)!r}).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        print("[to_trt] built" if Path({str(seen)!r}).exists() else "[to_trt] nobody saw the first line")
    """,
    )

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "Building engine" in record.getMessage():
                seen.touch()

    handler, level = Seen(), entrypoint.log.level
    entrypoint.log.addHandler(handler)
    entrypoint.log.setLevel(logging.INFO)  # as the entrypoint's own logging.basicConfig
    try:
        returncode, lines = entrypoint.run_logged([sys.executable, str(script)], "to_trt", timeout_s=60)
    finally:
        entrypoint.log.removeHandler(handler)
        entrypoint.log.setLevel(level)
    assert returncode == 0 and lines == ["[to_trt]   Building engine (3 steps)", "[to_trt] built"]


def test_a_build_past_its_timeout_is_killed_with_its_output_so_far(tmp_path):
    script = fake_to_trt(
        tmp_path,
        """
        import time
        print("[to_trt] building")
        time.sleep(60)
    """,
    )
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as caught:
        entrypoint.run_logged([sys.executable, str(script)], "to_trt", timeout_s=1)
    assert time.monotonic() - started < 30 and caught.value.output == "[to_trt] building"


def test_output_in_another_encoding_is_logged_not_fatal(tmp_path):
    script = fake_to_trt(
        tmp_path, "sys.stdout.buffer.write(b'[to_trt] parsing caf\\xe9.onnx\\n'); print('[to_trt] built')"
    )
    returncode, lines = entrypoint.run_logged([sys.executable, str(script)], "to_trt", timeout_s=60)
    assert returncode == 0 and lines == ["[to_trt] parsing caf\\xe9.onnx", "[to_trt] built"]


def test_a_build_is_not_left_running_when_the_entrypoint_is_interrupted(tmp_path, monkeypatch):
    pid_file = tmp_path / "pid"
    script = fake_to_trt(
        tmp_path,
        f"""
        import os, time
        Path({str(pid_file)!r}).write_text(str(os.getpid()))
        print("[to_trt] building")
        time.sleep(60)
    """,
    )

    def interrupted(*args) -> None:  # stands for a Ctrl-C (KeyboardInterrupt) while a line is logged
        raise KeyboardInterrupt

    monkeypatch.setattr(entrypoint.log, "info", interrupted)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        entrypoint.run_logged([sys.executable, str(script)], "to_trt", timeout_s=60)
    assert time.monotonic() - started < 30
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)


def test_the_timeout_holds_though_a_child_of_the_build_keeps_its_output_open(tmp_path):
    script = fake_to_trt(
        tmp_path,
        """
        import subprocess
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # inherits stdout
        print("[to_trt] building")
        import time
        time.sleep(60)
    """,
    )
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        entrypoint.run_logged([sys.executable, str(script)], "to_trt", timeout_s=1)
    assert time.monotonic() - started < 30  # not the 60 s the child would hold the pipe


def test_sigterm_while_the_artifacts_are_made_stops_with_143_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped, entrypoint.stopped_by_sigterm():
        signal.raise_signal(signal.SIGTERM)
        time.sleep(5)  # not reached: the handler raises at once
    assert stopped.value.code == 143 and signal.getsignal(signal.SIGTERM) is before


def test_missing_to_trt_script_is_a_skip(tmp_path):
    built, reason = entrypoint.build_engine(
        tmp_path / "m.onnx", tmp_path / "m.plan", "fp16", script=tmp_path / "nope.py"
    )
    assert not built and "not part of this build" in reason


def test_help_is_the_service_help():
    result = subprocess.run(
        [sys.executable, "-m", "service.entrypoint", "--help"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    assert result.returncode == 0
    assert "ALEXNET_MODEL_DIR" in result.stderr and "--max-batch-size" in result.stdout


@pytest.mark.parametrize(
    "backend, exit_code, outcome",
    [
        ("auto", 2, "skipped"),
        ("auto", 1, "skipped"),
        ("tensorrt", 2, "error"),
        ("tensorrt", 1, "error"),
    ],
)
def test_prepare_falls_back_under_auto_and_stops_when_tensorrt_was_asked_for(
    onnx_model, tmp_path, monkeypatch, caplog, backend, exit_code, outcome
):
    script = fake_to_trt(
        tmp_path,
        f"""
        print("to_trt: no TensorRT here", file=sys.stderr)
        sys.exit({exit_code})
    """,
    )
    monkeypatch.setattr(entrypoint, "to_trt_script", lambda: script)
    monkeypatch.setattr(entrypoint, "gpu_here", lambda settings: True)  # so that auto tries TensorRT
    monkeypatch.setattr(service.backends, "cuda_available", lambda: True)  # and tensorrt passes step 1
    monkeypatch.setenv("ALEXNET_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ALEXNET_ONNX", str(onnx_model))  # present and current: no export
    monkeypatch.setenv("ALEXNET_ENGINE", str(tmp_path / "models" / "alexnet.plan"))
    caplog.set_level("INFO", logger="entrypoint")
    if outcome == "error":
        with pytest.raises(entrypoint.EntrypointError, match="to_trt: no TensorRT here"):
            entrypoint.prepare(["--backend", backend])
    else:
        entrypoint.prepare(["--backend", backend])
        assert "not exporting" in caplog.text
        assert (
            "TensorRT skipped: to_trt: no TensorRT here" in caplog.text
            if exit_code == 2
            else "TensorRT engine build FAILED" in caplog.text
        )


def test_prepare_under_auto_on_a_host_without_a_gpu_does_not_try_tensorrt(onnx_model, tmp_path, monkeypatch, caplog):
    script = fake_to_trt(tmp_path, "sys.exit(3)  # must not run")
    monkeypatch.setattr(entrypoint, "to_trt_script", lambda: script)
    monkeypatch.setattr(entrypoint, "gpu_here", lambda settings: False)
    monkeypatch.setenv("ALEXNET_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ALEXNET_ONNX", str(onnx_model))
    monkeypatch.setenv("ALEXNET_ENGINE", str(tmp_path / "models" / "alexnet.plan"))
    caplog.set_level("INFO", logger="entrypoint")
    entrypoint.prepare([])
    assert "skipped: no CUDA GPU here" in caplog.text
    assert not [r for r in caplog.records if r.name == "entrypoint" and r.levelno >= 30], caplog.text


@pytest.mark.parametrize(
    "args, env, says",
    [
        ([], {"ALEXNET_CHECKPOINT": "no-such.pt"}, "--checkpoint / ALEXNET_CHECKPOINT: no-such.pt is not a file"),
        (["--backend", "tensorrt"], {}, "--backend tensorrt (ALEXNET_BACKEND=tensorrt) needs a CUDA GPU"),
        (["--max-batch-size", "0"], {}, "--max-batch-size / ALEXNET_MAX_BATCH_SIZE"),
    ],
)
def test_settings_that_cannot_run_stop_the_entrypoint_with_exit_2_before_any_step_works(
    tmp_path, monkeypatch, caplog, args, env, says
):
    """As python -m service would, and before an export or a TensorRT build that would be thrown away."""
    monkeypatch.setattr(service.backends, "cuda_available", lambda: False)  # the entrypoint asks in-process,
    monkeypatch.setattr(service.__main__, "cuda_visible", lambda: pytest.fail("asked a child process about CUDA"))
    monkeypatch.setattr(entrypoint, "export_onnx", lambda *a, **k: pytest.fail("exported for settings that cannot run"))
    monkeypatch.setenv("ALEXNET_MODEL_DIR", str(tmp_path / "models"))
    for name in ("ALEXNET_ONNX", "ALEXNET_ENGINE", "ALEXNET_CHECKPOINT"):  # the entrypoint sets them in
        monkeypatch.setenv(name, "")  # os.environ: recorded here, so they are unset again after the test
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    caplog.set_level("INFO", logger="entrypoint")
    assert entrypoint.main(args) == 2
    assert says in caplog.text
