"""``python -m loadtest.bench`` end to end, at toy durations: every part measured, files and table written."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bench_measures_every_part_and_writes_the_table(onnx_model, tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.bench",
            "--onnx",
            str(onnx_model),
            "--concurrency",
            "1,2",
            "--duration-s",
            "1",
            "--warmup-s",
            "0.3",
            "--engine-batches",
            "1,2",
            "--engine-time-s",
            "0.2",
            "--images",
            "photos",
            "--procs",
            "2",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Each HTTP server's load processes started once, for all its steps (closed and open loop), not per step.
    started = sorted(re.findall(r"\] +(\S+): 2 load processes ready", proc.stderr))
    assert started == ["naive", "service:onnxruntime"], proc.stderr[-3000:]
    doc = json.loads((out / "bench.json").read_text())
    ort = doc["backends"]["onnxruntime"]
    assert [e["batch"] for e in ort["engine"]] == [1, 2] and all(e["img_per_s"] > 0 for e in ort["engine"])
    assert [p["concurrency"] for p in ort["pipeline"]] == [1, 2] and all(p["images"] > 0 for p in ort["pipeline"])
    assert [p["concurrency"] for p in ort["pipeline_interleaved"]] == [1, 2]  # (b) again, in the (c) rotation
    for steps in (ort["service"]["steps"], doc["naive"]["steps"]):
        assert [s["concurrency"] for s in steps] == [1, 2]
        assert all(s["requests"] == s["ok"] + s["errors"] and s["ok"] > 0 for s in steps)
    assert doc["client_ceiling"]["req_per_s"] > 0
    for entry in (ort["service"], doc["naive"]):  # then each once more, open loop at 0.8 of its peak
        o = entry["open_loop"]
        assert abs(o["peak_req_per_s"] - max(s["req_per_s"] for s in entry["steps"])) < 0.01
        assert o["mode"] == "open" and o["arrival"] == "poisson" and o["rate"] == round(0.8 * o["peak_req_per_s"], 1)
        assert o["ok"] > 0 and o["requests"] == o["ok"] + o["errors"]
    assert "(c)/(a)" in proc.stdout and "(c)/(b)" in proc.stdout and "(c)/(d)" in proc.stdout
    table = (out / "bench.md").read_text()
    assert "| (a) engine onnxruntime, batch 1 |" in table and "| (d) naive, c=2 |" in table
    assert f"| (c) service onnxruntime, open loop at {ort['service']['open_loop']['rate']:g} req/s (Poisson) |" in table
    assert (out / "onnxruntime" / "service" / "latency_cdf.png").is_file()
    assert (out / "naive" / "report.json").is_file()


def test_gpu_preset_refuses_a_host_without_cuda(tmp_path):
    from service.backends import cuda_available

    if cuda_available():
        pytest.skip("this host has a CUDA GPU; the refusal is for hosts without one")
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest.bench", "--gpu", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr


def test_a_bench_stopped_by_sigterm_writes_the_steps_that_finished(onnx_model, tmp_path):
    """gpu_check.sh's timeout sends SIGTERM: what finished before it must not be lost."""
    out = tmp_path / "bench"
    command = [
        *(sys.executable, "-m", "loadtest.bench", "--onnx", str(onnx_model), "--concurrency", "1,1,1,1,1,1,1,1"),
        *("--duration-s", "1", "--warmup-s", "0.2", "--engine-batches", "1", "--engine-time-s", "0.2"),
        *("--images", "photos", "--no-naive", "--open-at", "0", "--out", str(out)),
    ]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        said = []
        for line in proc.stderr:  # the bench's progress lines
            said.append(line)
            if "service:onnxruntime c=1:" in line:
                proc.send_signal(signal.SIGTERM)
                break
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, "".join(said)[-2000:] + stderr[-2000:]
    assert "stopped by a signal during the HTTP part" in stderr
    doc = json.loads((out / "bench.json").read_text())
    steps = doc["backends"]["onnxruntime"]["service"]["steps"]
    assert doc["interrupted"] and 1 <= len(steps) < 8 and all(s["ok"] > 0 for s in steps)
    assert "| (c) service onnxruntime, c=1 |" in (out / "bench.md").read_text()
