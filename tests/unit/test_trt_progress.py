"""export/trt_progress.py: TensorRT's progress calls as log lines, and Ctrl-C during a build cancels it.

Driven directly with a clock the test moves, and through the TensorRT stand-in (tests/fake_tensorrt.py),
whose build calls the monitor as the bindings document (phase_start, step_complete, phase_finish)."""

from __future__ import annotations

import signal
import threading

import pytest

from export import to_trt
from export.to_trt import plan_build
from export.trt_progress import BuildProgress, cancel_on_ctrl_c, monitor_for
from tests.fake_tensorrt import FakeTensorRT


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_top_level_phases_get_a_line_each_nested_ones_only_in_the_progress_line():
    lines: list[str] = []
    clock = Clock()
    progress = BuildProgress(lines.append, interval_s=10, clock=clock)
    progress.phase_start("Building engine", None, 2)
    progress.phase_start("Tactic selection", "Building engine", 40)
    progress.phase_start("Layer conv1", "Tactic selection", 7)
    assert lines == ["  Building engine (2 steps)"]
    clock.now += 9
    assert progress.step_complete("Layer conv1", 2)
    assert len(lines) == 1  # not 10 s yet
    clock.now += 1
    assert progress.step_complete("Tactic selection", 4)
    assert lines[1] == "  10 s: Building engine 0/2 > Tactic selection 5/40 > Layer conv1 3/7"
    clock.now += 5
    progress.phase_finish("Layer conv1")
    progress.phase_finish("Tactic selection")
    assert progress.step_complete("Building engine", 0)
    assert len(lines) == 2  # 5 s after the last progress line
    clock.now += 2.5
    progress.phase_finish("Building engine")
    assert lines[2:] == ["  Building engine done in 17.5 s"]
    progress.phase_start("Serializing", None, 1)
    assert lines[3:] == ["  Serializing (1 step)"]


def test_a_phase_under_a_parent_not_seen_is_nested_all_the_same():
    lines: list[str] = []
    progress = BuildProgress(lines.append)
    progress.phase_start("Layer conv1", "a phase another thread started", 3)
    progress.phase_finish("Layer conv1")
    assert lines == []


def test_once_cancelled_every_step_asks_tensorrt_to_stop_and_it_is_said_once():
    lines: list[str] = []
    progress = BuildProgress(lines.append, interval_s=1e9)
    progress.phase_start("Building engine", None, 3)
    assert progress.step_complete("Building engine", 0) is True
    progress.cancel()  # what SIGINT's handler does
    assert progress.step_complete("Building engine", 1) is False
    assert progress.step_complete("Building engine", 2) is False
    assert lines[1:] == ["  Ctrl-C: asking TensorRT to stop the build"]


def test_a_ctrl_c_is_seen_by_a_step_on_any_thread_while_the_main_thread_is_busy():
    """As when TensorRT calls the monitor from its own threads while the main thread is inside
    build_serialized_network: the Python handler cannot run, the wakeup fd is written at once."""
    progress = BuildProgress(lambda line: None, interval_s=1e9)
    answers: list[bool] = []

    def tensorrt_thread() -> None:
        answers.append(progress.step_complete("Building engine", 0))
        signal.raise_signal(signal.SIGINT)  # the C-level handler writes the wakeup fd, on this thread
        answers.append(progress.step_complete("Building engine", 1))

    handler = signal.getsignal(signal.SIGINT)
    with cancel_on_ctrl_c(progress):
        thread = threading.Thread(target=tensorrt_thread)
        thread.start()
        thread.join()
    assert answers == [True, False] and progress.cancelled
    assert signal.getsignal(signal.SIGINT) is handler  # and no KeyboardInterrupt came out of the build


def test_bindings_without_a_progress_monitor_build_without_one():
    assert monitor_for(object(), BuildProgress(print)) is None


@pytest.mark.parametrize("version", [10, 11])
def test_the_build_reports_its_phases_through_the_bindings_monitor(tmp_path, capsys, version):
    trt = FakeTensorRT(version)
    plan = plan_build(None, "fp16", hasattr(trt.BuilderFlag, "FP16"))
    engine = to_trt.build_engine(trt, tmp_path / "m.fp16.onnx", plan, (3, 224, 224), (1, 8, 16), 512, None)
    assert engine == b"engine-bytes"
    out = capsys.readouterr().out
    assert "[to_trt]   Building engine (2 steps)" in out and "[to_trt]   Building engine done in" in out
    assert "Tactic selection" not in out  # nested: only in progress lines, and the build took < 10 s


def test_ctrl_c_during_the_build_cancels_it_and_nothing_is_written(tmp_path, monkeypatch):
    trt = FakeTensorRT(11)
    cache = tmp_path / "trt.cache"
    step = to_trt._step

    def ctrl_c_while_a_phase_starts(message: str) -> float:
        if message.strip().startswith("Building engine ("):
            signal.raise_signal(signal.SIGINT)  # a Ctrl-C during the build, on the main thread
        return step(message)

    monkeypatch.setattr(to_trt, "_step", ctrl_c_while_a_phase_starts)
    plan = plan_build(None, "fp16", False)
    with pytest.raises(KeyboardInterrupt):  # run_main: "[to_trt] interrupted; ...", exit 130
        to_trt.build_engine(trt, tmp_path / "m.fp16.onnx", plan, (3, 224, 224), (1, 8, 16), 512, cache)
    assert ("build cancelled",) in trt.calls  # the stand-in was asked to stop, as TensorRT would be
    assert not cache.exists()
