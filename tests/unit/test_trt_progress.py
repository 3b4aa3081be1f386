"""export/trt_progress.py: TensorRT's progress calls as log lines, and Ctrl-C during a build cancels it.

Driven directly with a clock the test moves, and through the TensorRT stand-in (tests/fake_tensorrt.py),
whose build calls the monitor as the bindings document (phase_start, step_complete, phase_finish)."""

from __future__ import annotations

import pytest

from export import to_trt
from export.to_trt import BuildError, plan_build
from export.trt_progress import BuildProgress, monitor_for
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


class CtrlC:
    """A report function in which, once armed, a Ctrl-C is delivered (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.armed = False

    def __call__(self, line: str) -> None:
        if self.armed:
            raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["phase_start", "step_complete", "phase_finish"])
def test_a_ctrl_c_in_any_call_makes_the_next_step_stop_the_build(where):
    report = CtrlC()
    progress = BuildProgress(report, interval_s=0)  # interval 0: every step reports
    if where != "phase_start":
        progress.phase_start("Building engine", None, 3)
    assert not progress.cancelled
    report.armed = True
    {
        "phase_start": lambda: progress.phase_start("Building engine", None, 3),
        "step_complete": lambda: progress.step_complete("Building engine", 0),
        "phase_finish": lambda: progress.phase_finish("Building engine"),
    }[where]()  # the KeyboardInterrupt stays inside: TensorRT never sees it
    assert progress.cancelled
    report.armed = False
    assert progress.step_complete("Building engine", 1) is False


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
            raise KeyboardInterrupt  # as a Ctrl-C is delivered in the first Python code TensorRT calls
        return step(message)

    monkeypatch.setattr(to_trt, "_step", ctrl_c_while_a_phase_starts)
    plan = plan_build(None, "fp16", False)
    with pytest.raises(BuildError, match="cancelled"):
        to_trt.build_engine(trt, tmp_path / "m.fp16.onnx", plan, (3, 224, 224), (1, 8, 16), 512, cache)
    assert ("build cancelled",) in trt.calls  # the stand-in was asked to stop, as TensorRT would be
    assert not cache.exists()
