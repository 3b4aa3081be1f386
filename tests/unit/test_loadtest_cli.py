"""``python -m loadtest``'s arguments and exit status: a bad value is an argparse error (exit 2, one
message line, no traceback) before anything is built or sent; a run whose requests failed exits 1."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.__main__ import failures, get_args_parser, hints, main, write_outputs
from loadtest.auth import api_key_from_env, auth_headers
from loadtest.histogram import LatencyHistogram
from loadtest.step import StepConfig, StepResult
from tests.conftest import REPO

BAD = [
    (["--concurrency", "0"], "--concurrency: must be at least 1, got 0"),
    (["--concurrency", "1,-4"], "--concurrency: must be at least 1, got -4"),
    (["--concurrency", "1,2.5"], "--concurrency: invalid int value: '2.5'"),
    (["--concurrency", ","], "--concurrency: expected comma-separated values, got ','"),
    (["--mode", "open", "--rate", "0"], "--rate: must be above 0, got 0"),
    (["--mode", "open", "--rate", "nan"], "--rate: must be a finite number above 0, got nan"),
    (["--images", "10x"], "--images: image spec entry '10x': use 'photos' or WIDTHxHEIGHT"),
    (["--images", "0x0"], "--images: image spec entry '0x0': width and height must be >= 1"),
    (["--images", "photos,640x0"], "--images: image spec entry '640x0'"),
    (["--images-per-request", "0"], "--images-per-request: must be at least 1, got 0"),
    (["--generated-per-size", "0"], "--generated-per-size: must be at least 1"),
    (["--duration-s", "0"], "--duration-s: must be above 0"),
    (["--requests", "0"], "--requests: must be at least 1"),
    (["--top-k", "0"], "--top-k: must be at least 1"),
    (["--out", "{tmp}/notes/run"], "--out {tmp}/notes/run: {tmp}/notes is a file, not a folder"),
    (["--kind", "raw", "--images-per-request", "2"], "--kind raw carries one image per request"),
    (["--mode", "open", "--requests", "20"], "--requests counts a closed loop's requests"),
    (
        ["--url", "127.0.0.1:8000"],
        "--url: expected a base URL such as http://127.0.0.1:8000, got '127.0.0.1:8000' "
        "(with its scheme: http://127.0.0.1:8000)",
    ),
    (["--url", "localhost:8000"], "--url: expected a base URL such as http://127.0.0.1:8000, got 'localhost:8000'"),
    (["--url", "ftp://127.0.0.1:8000"], "--url: expected a base URL such as http://127.0.0.1:8000"),
    (["--url", "http://127.0.0.1:99999"], "--url: expected a base URL such as http://127.0.0.1:8000"),
    (["--url", "http://"], "--url: expected a base URL such as http://127.0.0.1:8000"),
]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed: connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_bad_value_is_a_usage_error(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ALEXNET_API_KEY", raising=False)
    url = f"http://127.0.0.1:{closed_port()}"
    (tmp_path / "notes").write_text("a file where a folder would go")
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    with pytest.raises(SystemExit) as exc:
        main(["--url", url, "--out", str(tmp_path / "out"), "--no-plots", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message.replace("{tmp}", str(tmp_path)) in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # stopped before any step ran


def test_a_url_with_its_scheme_is_taken_without_its_trailing_slash():
    parser = get_args_parser()
    assert parser.parse_args(["--url", "http://127.0.0.1:8000/"]).url == "http://127.0.0.1:8000"
    assert parser.parse_args(["--url", "https://example.test/prefix"]).url == "https://example.test/prefix"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "ALEXNET_API_KEY: set but empty: give the server's key, or unset it"),
        ("  ", "ALEXNET_API_KEY: set but empty"),
        ("k\nx", "ALEXNET_API_KEY: holds control characters"),
    ],
    ids=["empty", "blank", "newline"],
)
def test_an_unusable_api_key_is_a_usage_error(value, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ALEXNET_API_KEY", value)
    with pytest.raises(SystemExit) as exc:
        main(["--url", f"http://127.0.0.1:{closed_port()}", "--out", str(tmp_path / "out"), "--no-plots"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_api_key_comes_from_the_environment_as_a_bearer_header():
    assert api_key_from_env({}) is None and auth_headers(None) == {}
    assert api_key_from_env({"ALEXNET_API_KEY": " s3cret\n"}) == "s3cret"  # a mounted file's newline
    assert auth_headers("s3cret") == {"Authorization": "Bearer s3cret"}
    assert "--api-key" not in get_args_parser().format_help()  # a flag's value would show in ps


def test_a_usage_error_through_the_command_line_is_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest", "--concurrency", "0"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert line == "python -m loadtest: error: argument --concurrency: must be at least 1, got 0"


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
    # What failed, counted, with the exception seen
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("loadtest: failed: c=1:")]
    assert re.fullmatch(r"loadtest: failed: c=1: all (\d+) requests failed: \1 x connection: .+", line), line
    assert "Cannot connect to host" in line
    # The report is still written, as strict JSON: no latency is null, not NaN.
    doc = json.loads((out / "report.json").read_text(), parse_constant=_refuse)
    assert doc["steps"][0]["p50_ms"] is None and doc["steps"][0]["latency_ms"]["p50"] is None


def test_no_plot_is_drawn_for_a_step_without_an_ok_answer(tmp_path):
    failed, answered = _result(20, 0), _result(10, 10)
    for _ in range(10):
        answered.latency.record(0.02)
    files = write_outputs(tmp_path / "all-failed", {}, [failed])
    assert [f.name for f in files] == ["report.json", "steps.csv"]
    assert sorted(p.name for p in (tmp_path / "all-failed").iterdir()) == ["report.json", "steps.csv"]
    files = write_outputs(tmp_path / "mixed", {}, [failed, answered])
    assert {f.name for f in files} >= {"latency_vs_throughput.png", "latency_cdf.png"}
    # The same folder again, for a run without plots: the last run's are not left to pass for this one's
    files = write_outputs(tmp_path / "mixed", {}, [answered], plots_too=False)
    assert sorted(p.name for p in (tmp_path / "mixed").iterdir()) == ["report.json", "steps.csv"]


def test_a_plot_interrupted_while_written_leaves_the_last_run_whole(tmp_path, monkeypatch):
    """Ctrl-C while a PNG is written (plots come last, after the report): the folder keeps the last
    whole plot, not half of a new one, and no temporary file."""
    from matplotlib.figure import Figure

    answered = _result(10, 10)
    for _ in range(10):
        answered.latency.record(0.02)
    write_outputs(tmp_path, {}, [answered])
    whole = (tmp_path / "latency_vs_throughput.png").read_bytes()

    def interrupted(self, fname, **kwargs):
        Path(fname).write_bytes(whole[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_outputs(tmp_path, {}, [answered])
    assert (tmp_path / "latency_vs_throughput.png").read_bytes() == whole
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "latency_cdf.png",
        "latency_vs_throughput.png",
        "report.json",
        "steps.csv",
    ]


def _refuse(constant: str):
    raise ValueError(f"report.json holds {constant}, which is not JSON")


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
    assert why == "c=4: error rate 10.0% > --max-error-rate 0.05: 10 x 503"
    # Cut inside the step by a process of a multi-process step, even if the merged rate ends lower.
    assert failures([_result(100, 98, stopped="error rate 60.0% > 50.0% (process 1)")], 0.05)
    assert failures([_result(20, 0, stopped="error rate 100.0% > 50.0%")], 0.5) == [
        "c=4: all 20 requests failed: 20 x 503"
    ]
    assert failures([_result(0, 0)], 0.05) == ["c=4: no request was answered in the measured window"]


def test_a_failure_says_what_was_seen_most_frequent_first():
    r = _result(20, 0)
    r.errors = {"timeout": 2, "401": 15, "connection": 3}
    r.error_examples = {
        "401": "401 Unauthorized: missing or wrong API key: send 'Authorization: Bearer <key>'",
        "connection": "ServerDisconnectedError: Server disconnected",
        "timeout": "no answer within 30 s (--timeout-s)",
    }
    (why,) = failures([r], 0.05)
    assert why == (
        "c=4: all 20 requests failed: 15 x 401 Unauthorized: missing or wrong API key: send 'Authorization: "
        "Bearer <key>'; 3 x connection: ServerDisconnectedError: Server disconnected; "
        "2 x timeout: no answer within 30 s (--timeout-s)"
    )


def test_401s_say_to_set_the_key_or_that_it_was_refused():
    every = _result(20, 0)
    every.errors = {"401": 20}
    assert hints([every], api_key_sent=False) == [
        "every request was refused with 401: the server wants an API key; set $ALEXNET_API_KEY to it "
        "(sent as 'Authorization: Bearer <key>')"
    ]
    assert hints([every], api_key_sent=True) == [
        "every request was refused with 401: the server did not accept the key in $ALEXNET_API_KEY; check it"
    ]
    assert hints([_result(100, 97)], api_key_sent=False) == []  # 503s: nothing to do on this side


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--procs", ","], "--procs: expected comma-separated values, got ','"),
        (["--procs", "1,0"], "--procs: procs must be an integer >= 1 or 'auto', got '0'"),
        (["--concurrency", "0"], "--concurrency: must be at least 1, got 0"),
        (["--rounds", "0"], "--rounds: must be at least 1, got 0"),
        (["--duration-s", "0"], "--duration-s: must be above 0, got 0"),
    ],
)
def test_the_client_ceilings_bad_flags_are_flag_errors_before_any_server_starts(argv, message, capsys):
    from loadtest import client_ceiling

    with pytest.raises(SystemExit) as exit_info:
        client_ceiling.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_the_client_ceilings_procs_are_counts_with_auto_resolved():
    from loadtest import client_ceiling
    from service.cpus import usable_cpus

    assert client_ceiling.get_args_parser().parse_args(["--procs", "1, auto"]).procs == [1, usable_cpus()]
