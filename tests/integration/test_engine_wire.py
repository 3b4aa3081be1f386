"""``python -m loadtest.engine_wire`` end to end: the engine's own ceiling, measured with more requests
in flight than the service's default queue holds (as scripts/gpu_check.sh runs it: 8 x 64)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.tiny_onnx import tiny_onnx

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_it_reports_the_engine_loops_cpu_per_request_with_a_deep_queue(tmp_path):
    onnx = tiny_onnx(tmp_path / "alexnet.onnx")  # the model's facts only: the backend answers at once
    # 300 in flight: each front end alone is over the service's default queue of 256
    flags = ["--onnx", str(onnx), "--frontends", "2", "--in-flight", "300", "--seconds", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest.engine_wire", *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "QueueFull" not in proc.stderr
    rate = re.search(r"2 front-end processes x 300 in flight, 1 s: ([\d,]+) requests/s", proc.stdout)
    loop = re.search(r"event-loop thread: (\d+) us CPU per request -> at most ([\d,]+) requests/s", proc.stdout)
    assert rate and loop, proc.stdout
    assert int(rate.group(1).replace(",", "")) > 0 and int(loop.group(1)) > 0
