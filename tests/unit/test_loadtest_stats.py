"""Load-test arithmetic: HDR percentiles, Prometheus diffs, open-loop schedules, report rows and files."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from loadtest import prom, report
from loadtest.histogram import LatencyHistogram
from loadtest.runner import StepConfig, StepResult, arrival_offsets


def test_percentiles_match_numpy_within_hdr_precision():
    rng = np.random.default_rng(0)
    values = rng.lognormal(mean=np.log(0.02), sigma=0.6, size=20_000)  # seconds, ~20 ms median
    h = LatencyHistogram()
    for v in values:
        h.record(float(v))
    s = h.summary_ms()
    assert h.count == len(values)
    for p in (50, 90, 99, 99.9):
        expected = np.percentile(values * 1000, p, method="inverted_cdf")
        assert s[f"p{p:g}"] == pytest.approx(expected, rel=2e-3)
    assert s["max"] == pytest.approx(values.max() * 1000, rel=1e-3)


def test_percentiles_are_ordered_and_cdf_monotone():
    h = LatencyHistogram()
    for i in range(1, 1001):
        h.record(i / 1000)
    s = h.summary_ms()
    chain = [s["min"], s["p50"], s["p90"], s["p95"], s["p99"], s["p99.9"], s["max"]]
    assert chain == sorted(chain)
    cdf = h.cdf_ms()
    assert [p for p, _ in cdf] == sorted(p for p, _ in cdf)
    assert [ms for _, ms in cdf] == sorted(ms for _, ms in cdf)


def test_empty_histogram_gives_nan_and_encode_round_trips():
    assert math.isnan(LatencyHistogram().summary_ms()["p50"])
    h = LatencyHistogram()
    for v in (0.001, 0.002, 0.5):
        h.record(v)
    back = LatencyHistogram.decode(h.encode())
    assert back.count == 3 and back.summary_ms() == h.summary_ms()
    back.add(h)
    assert back.count == 6


METRICS_BEFORE = """
# TYPE alexnet_batch_size histogram
alexnet_batch_size_bucket{le="1.0"} 10.0
alexnet_batch_size_bucket{le="2.0"} 10.0
alexnet_batch_size_bucket{le="4.0"} 10.0
alexnet_batch_size_bucket{le="+Inf"} 10.0
alexnet_batch_size_count 10.0
alexnet_batch_size_sum 10.0
# TYPE alexnet_queue_wait_seconds histogram
alexnet_queue_wait_seconds_bucket{le="0.01"} 10.0
alexnet_queue_wait_seconds_bucket{le="0.1"} 10.0
alexnet_queue_wait_seconds_bucket{le="+Inf"} 10.0
alexnet_queue_wait_seconds_count 10.0
alexnet_queue_wait_seconds_sum 0.01
# TYPE alexnet_errors_total counter
alexnet_errors_total{kind="queue_full"} 1.0
"""

METRICS_AFTER = """
# TYPE alexnet_batch_size histogram
alexnet_batch_size_bucket{le="1.0"} 10.0
alexnet_batch_size_bucket{le="2.0"} 10.0
alexnet_batch_size_bucket{le="4.0"} 30.0
alexnet_batch_size_bucket{le="+Inf"} 30.0
alexnet_batch_size_count 30.0
alexnet_batch_size_sum 90.0
# TYPE alexnet_queue_wait_seconds histogram
alexnet_queue_wait_seconds_bucket{le="0.01"} 10.0
alexnet_queue_wait_seconds_bucket{le="0.1"} 110.0
alexnet_queue_wait_seconds_bucket{le="+Inf"} 110.0
alexnet_queue_wait_seconds_count 110.0
alexnet_queue_wait_seconds_sum 5.01
# TYPE alexnet_errors_total counter
alexnet_errors_total{kind="queue_full"} 4.0
alexnet_errors_total{kind="bad_image"} 2.0
"""


def test_metrics_diff_counts_only_the_step():
    s = prom.step_summary(prom.parse(METRICS_BEFORE), prom.parse(METRICS_AFTER))
    assert s["batches"] == 20
    assert s["batch_size_mean"] == pytest.approx(4.0)  # (90 - 10) / (30 - 10)
    assert 2.0 < s["batch_size_p50"] <= 4.0  # every new batch fell in the (2, 4] bucket
    assert s["queue_wait_mean_ms"] == pytest.approx(50.0)  # 5 s over 100 images
    assert 10.0 <= s["queue_wait_p50_ms"] <= 100.0
    assert s["errors"] == {"queue_full": 3, "bad_image": 2}


def test_histogram_quantile_interpolates_like_prometheus():
    h = prom.Histogram({0.1: 50.0, 0.2: 100.0, math.inf: 100.0}, 100.0, 10.0)
    assert h.quantile(0.5) == pytest.approx(0.1)
    assert h.quantile(0.75) == pytest.approx(0.15)
    assert math.isnan(prom.Histogram().quantile(0.5))


def test_constant_schedule_is_exact_and_poisson_has_the_asked_rate():
    offsets = arrival_offsets(20, 3.0, "constant")
    assert len(offsets) == 60 and offsets[1] - offsets[0] == pytest.approx(0.05)
    poisson = arrival_offsets(200, 50.0, "poisson", seed=1)
    assert len(poisson) / 50.0 == pytest.approx(200, rel=0.05)
    gaps = np.diff(poisson)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.1)  # exponential: CV = 1
    assert poisson == sorted(poisson) and poisson[-1] < 50.0


def test_step_config_refuses_impossible_steps():
    with pytest.raises(ValueError, match="rate"):
        StepConfig("open", rate=0)
    with pytest.raises(ValueError, match="mode"):
        StepConfig("sideways")


def _result() -> StepResult:
    r = StepResult(StepConfig("closed", concurrency=4, duration_s=2.0), LatencyHistogram())
    for i in range(90):
        r.latency.record(0.01 + i / 1000)
    r.counted, r.ok, r.images_ok, r.elapsed_s = 100, 90, 180, 2.0
    for _ in range(10):
        r.error_latency.record(0.001)
    r.errors, r.error_kinds = {"503": 7, "timeout": 3}, {"queue_full": 7}
    r.server = {"batches": 12, "batch_size_mean": 7.5}
    return r


def test_report_row_adds_up(tmp_path):
    row = report.row(_result())
    assert row["requests"] == row["ok"] + row["errors"] == 100
    assert row["errors"] == sum(_result().errors.values())
    assert row["req_per_s"] == 45.0 and row["img_per_s"] == 90.0
    assert row["error_rate"] == pytest.approx(0.1)
    assert row["errors_by_status"] == "503:7 timeout:3"
    assert row["server_batch_size_mean"] == 7.5
    text = report.table([row])
    assert "req/s" in text and "c=4" in text and "503:7" in text
    report.write_csv([row], tmp_path / "s.csv")
    rows = list(csv.DictReader((tmp_path / "s.csv").read_text().splitlines()))
    assert rows[0]["requests"] == "100"
    report.write_json({"url": "x"}, [_result()], tmp_path / "r.json")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["steps"][0]["errors_by_status"] == {"503": 7, "timeout": 3}
    assert LatencyHistogram.decode(doc["steps"][0]["latency_hdr"]).count == 90  # ok answers only
    assert doc["steps"][0]["error_latency_ms"]["max"] == pytest.approx(1.0, rel=1e-2)
