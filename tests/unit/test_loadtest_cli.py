"""``python -m loadtest``'s arguments and exit status: a bad value is an argparse error (exit 2, one
message line, no traceback) before anything is built or sent; a run whose requests failed exits 1."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from loadtest.__main__ import failures, main
from loadtest.histogram import LatencyHistogram
from loadtest.step import StepConfig, StepResult
from tests.conftest import REPO

BAD = [
    (["--concurrency", "0"], "--concurrency: expected comma-separated numbers > 0"),
    (["--concurrency", "1,-4"], "--concurrency: expected comma-separated numbers > 0"),
    (["--mode", "open", "--rate", "0"], "--rate: expected comma-separated numbers > 0"),
    (["--mode", "open", "--rate", "nan"], "--rate: expected comma-separated numbers > 0"),
    (["--images", "10x"], "--images: image spec entry '10x': use 'photos' or WIDTHxHEIGHT"),
    (["--images", "0x0"], "--images: image spec entry '0x0': width and height must be >= 1"),
    (["--images", "photos,640x0"], "--images: image spec entry '640x0'"),
    (["--images-per-request", "0"], "--images-per-request: expected a number >= 1, got '0'"),
    (["--generated-per-size", "0"], "--generated-per-size: expected a number >= 1"),
    (["--duration-s", "0"], "--duration-s: expected a number > 0"),
    (["--requests", "0"], "--requests: expected a number >= 1"),
    (["--kind", "raw", "--images-per-request", "2"], "--kind raw carries one image per request"),
]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed: connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_bad_value_is_a_usage_error(argv, message, tmp_path, capsys):
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(SystemExit) as exc:
        main(["--url", url, "--out", str(tmp_path / "out"), "--no-plots", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # stopped before any step ran


def test_a_usage_error_through_the_command_line_is_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest", "--concurrency", "0"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert line == "python -m loadtest: error: argument --concurrency: expected comma-separated numbers > 0, got '0'"


def test_a_run_where_every_request_failed_exits_1(tmp_path):
    """A dead URL: every request is a connection error; the step is cut at 100% errors, the run fails."""
    out = tmp_path / "dead"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "loadtest", "--url", f"http://127.0.0.1:{closed_port()}"),
            *("--images", "photos", "--concurrency", "1,2", "--duration-s", "1", "--warmup-s", "0"),
            *("--no-plots", "--quiet", "--out", str(out)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert "loadtest: failed: c=1: all" in proc.stderr and "connection:" in proc.stderr
    assert (out / "report.json").is_file()  # the report is still written


def _result(counted: int, ok: int, stopped: str | None = None) -> StepResult:
    r = StepResult(StepConfig("closed", concurrency=4, duration_s=2.0), LatencyHistogram())
    r.counted, r.ok, r.stopped = counted, ok, stopped
    if counted > ok:
        r.errors = {"503": counted - ok}
    return r


def test_which_runs_fail():
    assert failures([_result(100, 100), _result(100, 97)], max_error_rate=0.05) == []
    assert failures([_result(100, 100, stopped="p99 612.0 ms > 500 ms")], 0.05) == []  # a latency limit: a result
    (why,) = failures([_result(100, 100), _result(100, 90, stopped="error rate 10.0% > 5.0%")], 0.05)
    assert why == "c=4: error rate 10.0% > --max-error-rate 0.05 (503:10)"
    # Cut inside the step by a process of a multi-process step, even if the merged rate ends lower.
    assert failures([_result(100, 98, stopped="error rate 60.0% > 50.0% (process 1)")], 0.05)
    assert failures([_result(20, 0, stopped="error rate 100.0% > 50.0%")], 0.5) == [
        "c=4: all 20 requests failed (503:20)"
    ]
    assert failures([_result(0, 0)], 0.05) == ["c=4: no request was answered in the measured window"]
