"""``python -m loadtest.bench`` end to end, at toy durations: every part measured, files and table written."""

from __future__ import annotations

import json
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
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
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
