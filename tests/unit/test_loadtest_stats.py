"""Load-test arithmetic: HDR percentiles, Prometheus diffs, open-loop schedules, report rows and files."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from loadtest import multiproc, prom, report, step_parts
from loadtest.histogram import LatencyHistogram
from loadtest.runner import arrival_offsets
from loadtest.step import StepConfig, StepResult
from service.cpus import usable_cpus
from service.metrics import Metrics


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
# TYPE alexnet_images_decoded_total counter
alexnet_images_decoded_total{path="gpu"} 100.0
alexnet_images_decoded_total{path="declined"} 1.0
alexnet_images_decoded_total{path="cpu"} 1.0
# TYPE alexnet_request_duration_seconds histogram
alexnet_request_duration_seconds_bucket{le="0.01",route="/classify",status="200"} 5.0
alexnet_request_duration_seconds_bucket{le="0.1",route="/classify",status="200"} 5.0
alexnet_request_duration_seconds_bucket{le="+Inf",route="/classify",status="200"} 5.0
alexnet_request_duration_seconds_count{route="/classify",status="200"} 5.0
alexnet_request_duration_seconds_sum{route="/classify",status="200"} 0.02
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
# TYPE alexnet_batch_prepare_duration_seconds histogram
alexnet_batch_prepare_duration_seconds_bucket{le="0.01"} 20.0
alexnet_batch_prepare_duration_seconds_bucket{le="+Inf"} 20.0
alexnet_batch_prepare_duration_seconds_count 20.0
alexnet_batch_prepare_duration_seconds_sum 0.06
# TYPE alexnet_inference_gpu_seconds histogram
alexnet_inference_gpu_seconds_bucket{le="0.001"} 20.0
alexnet_inference_gpu_seconds_bucket{le="+Inf"} 20.0
alexnet_inference_gpu_seconds_count 20.0
alexnet_inference_gpu_seconds_sum 0.01
# TYPE alexnet_errors_total counter
alexnet_errors_total{kind="queue_full"} 4.0
alexnet_errors_total{kind="bad_image"} 2.0
# TYPE alexnet_images_decoded_total counter
alexnet_images_decoded_total{path="gpu"} 190.0
alexnet_images_decoded_total{path="declined"} 11.0
alexnet_images_decoded_total{path="cpu"} 11.0
alexnet_images_decoded_total{path="tensor"} 0.0
# TYPE alexnet_request_duration_seconds histogram
alexnet_request_duration_seconds_bucket{le="0.01",route="/classify",status="200"} 15.0
alexnet_request_duration_seconds_bucket{le="0.1",route="/classify",status="200"} 15.0
alexnet_request_duration_seconds_bucket{le="+Inf",route="/classify",status="200"} 15.0
alexnet_request_duration_seconds_count{route="/classify",status="200"} 15.0
alexnet_request_duration_seconds_sum{route="/classify",status="200"} 0.07
alexnet_request_duration_seconds_bucket{le="0.01",route="/v2/models/{model_name}/infer",status="200"} 0.0
alexnet_request_duration_seconds_bucket{le="0.1",route="/v2/models/{model_name}/infer",status="200"} 10.0
alexnet_request_duration_seconds_bucket{le="+Inf",route="/v2/models/{model_name}/infer",status="200"} 10.0
alexnet_request_duration_seconds_count{route="/v2/models/{model_name}/infer",status="200"} 10.0
alexnet_request_duration_seconds_sum{route="/v2/models/{model_name}/infer",status="200"} 0.2
alexnet_request_duration_seconds_bucket{le="0.01",route="/classify",status="503"} 3.0
alexnet_request_duration_seconds_bucket{le="+Inf",route="/classify",status="503"} 3.0
alexnet_request_duration_seconds_count{route="/classify",status="503"} 3.0
alexnet_request_duration_seconds_sum{route="/classify",status="503"} 0.003
alexnet_request_duration_seconds_bucket{le="0.01",route="/metrics",status="200"} 0.0
alexnet_request_duration_seconds_bucket{le="+Inf",route="/metrics",status="200"} 1.0
alexnet_request_duration_seconds_count{route="/metrics",status="200"} 1.0
alexnet_request_duration_seconds_sum{route="/metrics",status="200"} 5.0
"""


def test_metrics_diff_counts_only_the_step():
    s = prom.step_summary(prom.parse(METRICS_BEFORE), prom.parse(METRICS_AFTER))
    assert s["batches"] == 20
    assert s["batch_size_mean"] == pytest.approx(4.0)  # (90 - 10) / (30 - 10)
    assert 2.0 < s["batch_size_p50"] <= 4.0  # every new batch fell in the (2, 4] bucket
    assert s["queue_wait_mean_ms"] == pytest.approx(50.0)  # 5 s over 100 images
    assert 10.0 <= s["queue_wait_p50_ms"] <= 100.0
    assert s["errors"] == {"queue_full": 3, "bad_image": 2}
    assert s["decoded"] == {"gpu": 90, "declined": 10, "cpu": 10}  # paths that did not move left out
    assert s["prepare_mean_ms"] == pytest.approx(3.0)  # new in the step: 60 ms over 20 batches
    assert s["inference_gpu_mean_ms"] == pytest.approx(0.5)  # CUDA events' (a GPU server's only)
    assert "prepare_gpu_mean_ms" not in s  # a histogram the server does not have is no figure
    # answered requests of every route but /metrics, summed: 10 /classify (50 ms) and 10 /v2 (200 ms);
    # the 503s and the scrape are not in it
    assert s["request_mean_ms"] == pytest.approx(12.5)
    assert 0.0 <= s["request_p50_ms"] <= 10.0 < s["request_p99_ms"] <= 100.0


def test_the_gpu_time_the_engine_observes_is_what_a_step_reports():
    """service.metrics names the GPU histograms loadtest.prom reads (one rename would lose the figures)."""
    metrics = Metrics()
    before = prom.parse(metrics.render().decode())
    for prepare, inference in ((0.0008, 0.0002), (0.0012, 0.0004)):
        metrics.observe_gpu_seconds(prepare, inference)
    s = prom.step_summary(before, prom.parse(metrics.render().decode()))
    assert s["prepare_gpu_mean_ms"] == pytest.approx(1.0) and s["inference_gpu_mean_ms"] == pytest.approx(0.3)
    assert s["inference_gpu_p50_ms"] == pytest.approx(0.25)  # buckets below a millisecond: 0.1, 0.25, 0.5


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
    r.server = {"batches": 12, "batch_size_mean": 7.5, "prepare_mean_ms": 1.25, "inference_mean_ms": 20.5}
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
    header, line = text.splitlines()[:2]
    assert header.split()[-3:-1] == ["prep", "infer"] and line.split()[-3:-1] == ["1.2", "20.5"]
    report.write_csv([row], tmp_path / "s.csv")
    rows = list(csv.DictReader((tmp_path / "s.csv").read_text().splitlines()))
    assert rows[0]["requests"] == "100"
    report.write_json({"url": "x"}, [_result()], tmp_path / "r.json")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["steps"][0]["errors_by_status"] == {"503": 7, "timeout": 3}
    assert LatencyHistogram.decode(doc["steps"][0]["latency_hdr"]).count == 90  # ok answers only
    assert doc["steps"][0]["error_latency_ms"]["max"] == pytest.approx(1.0, rel=1e-2)


def test_a_row_says_where_the_servers_images_were_decoded():
    r = _result()
    assert report.row(r)["server_decoded"] == ""  # a server that does not say
    r.server = {"decoded": {"gpu": 90, "declined": 10, "cpu": 10}}
    assert report.row(r)["server_decoded"] == "cpu:10 declined:10 gpu:90"


def _strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as JavaScript's JSON.parse and jq do."""

    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_a_report_where_every_request_failed_is_strict_json_with_nulls(tmp_path):
    r = StepResult(StepConfig("closed", concurrency=2, duration_s=1.0), LatencyHistogram())
    for _ in range(20):
        r.error_latency.record(0.001)
    r.counted, r.elapsed_s, r.errors = 20, 1.0, {"401": 20}
    r.error_examples = {"401": "401 Unauthorized: missing or wrong API key"}
    r.server = {"batches": 0, "batch_size_mean": float("nan")}  # prom.step_summary of an idle server
    report.write_json({"url": "x", "args": {"out": tmp_path}}, [r], tmp_path / "r.json")
    (step,) = _strict_json((tmp_path / "r.json").read_text())["steps"]
    assert step["p50_ms"] is None and step["latency_ms"]["p99"] is None and step["latency_ms"]["mean"] is None
    assert step["server"]["batch_size_mean"] is None and step["server"]["batches"] == 0
    assert step["error_examples"] == {"401": "401 Unauthorized: missing or wrong API key"}
    with pytest.raises(ValueError):  # the writer itself refuses a NaN: none can slip through
        json.dumps(float("nan"), allow_nan=False)
    assert (
        report.dumps({"a": [float("inf"), 1.5, (float("nan"),)]})
        == '{\n "a": [\n  null,\n  1.5,\n  [\n   null\n  ]\n ]\n}\n'
    )


def test_error_examples_travel_over_the_pipe_and_merge_first_seen():
    parts = []
    for example in ("401 Unauthorized: from process 0", "401 Unauthorized: from process 1"):
        r = StepResult(StepConfig("closed", concurrency=2, duration_s=1.0), LatencyHistogram())
        r.counted, r.errors, r.error_examples = 5, {"401": 5}, {"401": example}
        parts.append(step_parts.unpack(r.config, step_parts.pack(r)))
    merged = step_parts.merge(parts[0].config, parts)
    assert merged.errors == {"401": 10} and merged.error_examples == {"401": "401 Unauthorized: from process 0"}


# -- --procs: several load processes, one merged result ---------------------------------------------------


def _hist(values) -> LatencyHistogram:
    h = LatencyHistogram()
    for v in values:
        h.record(float(v))
    return h


def test_merged_histograms_equal_one_histogram_fed_every_value():
    rng = np.random.default_rng(7)
    fast = rng.lognormal(np.log(0.004), 0.3, 30_000)  # one process saw a quick server...
    slow = rng.lognormal(np.log(0.050), 0.8, 3_000)  # ...the other a slow, long-tailed one
    over_the_pipe = [LatencyHistogram.decode(_hist(part).encode()) for part in (fast, slow)]
    merged = LatencyHistogram.merged([LatencyHistogram(), *over_the_pipe])  # an idle process merges as nothing
    whole = _hist(np.concatenate([fast, slow]))
    assert merged.counts() == whole.counts()  # every bucket's count
    assert merged.count == whole.count == 33_000
    for p in np.arange(0.0, 100.001, 0.1):
        assert merged.percentile_ms(float(p)) == whole.percentile_ms(float(p)), p
    assert merged.summary_ms() == whole.summary_ms()  # min, max and mean too
    assert merged.summary_ms()["min"] > 0  # hdrh's own add would report 0 after an empty part
    # What this guards against: averaging the processes' percentiles gives another (wrong) p99.
    assert (over_the_pipe[0].percentile_ms(99) + over_the_pipe[1].percentile_ms(99)) / 2 != pytest.approx(
        whole.percentile_ms(99), rel=0.05
    )


def _part(ok_latencies, errors, kinds, **extra) -> StepResult:
    r = StepResult(StepConfig("closed", concurrency=5, duration_s=2.0), _hist(ok_latencies))
    for _ in range(sum(errors.values())):
        r.error_latency.record(0.001)
    r.ok = len(ok_latencies)
    r.counted = r.ok + sum(errors.values())
    r.images_ok = 3 * r.ok
    r.errors, r.error_kinds = errors, kinds
    for key, value in extra.items():
        setattr(r, key, value)
    return r


def test_merged_step_sums_counts_by_status_and_kind():
    config = StepConfig("closed", concurrency=5, duration_s=2.0)
    a = _part([0.01] * 40, {"503": 7, "timeout": 1}, {"queue_full": 7}, elapsed_s=2.0, abandoned=2, client_cpu_s=0.5)
    b = _part([0.02] * 25, {"503": 3, "400": 2}, {"queue_full": 3, "not_an_image": 2}, elapsed_s=2.0, abandoned=1)
    b.client_cpu_s, b.start_lag_s, a.start_lag_s = 0.25, 0.004, 0.001
    parts = [step_parts.unpack(config, step_parts.pack(p)) for p in (a, b)]  # as they cross the pipe
    m = step_parts.merge(config, parts, "3+2 clients")
    assert (m.counted, m.ok, m.images_ok, m.abandoned) == (78, 65, 195, 3)
    assert m.errors == {"503": 10, "timeout": 1, "400": 2}
    assert m.error_kinds == {"queue_full": 10, "not_an_image": 2}
    assert m.latency.count == 65 and m.error_latency.count == 13
    assert m.elapsed_s == 2.0 and m.client_cpu_s == pytest.approx(0.75)
    assert m.rps == pytest.approx(32.5) and m.ips == pytest.approx(97.5)
    assert m.procs == 2 and m.start_lag_s == pytest.approx(0.004)
    assert [p["requests"] for p in m.parts] == [48, 30]
    row = report.row(m)
    assert row["requests"] == row["ok"] + row["errors"] == 78
    assert row["procs"] == 2 and row["split"] == "3+2 clients"
    assert "2 load processes, 3+2 clients" in report.table([row])


def test_a_stopped_part_stops_the_merged_step_and_open_loop_lags_merge():
    config = StepConfig("open", rate=10, duration_s=1.0)
    a = _part([0.01] * 5, {}, {}, schedule_lag=_hist([0.001] * 5), scheduled=5, elapsed_s=1.0)
    b = _part([], {"503": 20}, {}, schedule_lag=_hist([0.002] * 20), scheduled=20, elapsed_s=0.4)
    b.stopped = "error rate 100.0% > 50.0%"
    m = step_parts.merge(config, [a, b])
    assert m.stopped == "error rate 100.0% > 50.0% (process 1)"
    assert m.scheduled == 25 and m.schedule_lag.count == 25
    assert m.elapsed_s == 1.0


@pytest.mark.parametrize(
    "total,n,expected", [(5, 2, [3, 2]), (1, 3, [1, 0, 0]), (32, 16, [2] * 16), (7, 3, [3, 2, 2]), (0, 2, [0, 0])]
)
def test_split_is_even_and_exact(total, n, expected):
    assert step_parts.split(total, n) == expected


def test_shares_of_a_closed_step():
    config = StepConfig("closed", concurrency=5, duration_s=None, requests=100)
    shares = step_parts.shares(config, 2)
    assert [(s.clients, s.first_client, s.requests) for s in shares] == [(3, 0, 60), (2, 3, 40)]
    assert step_parts.describe(config, shares) == "3+2 clients, 60+40 requests"
    for c in range(1, 40):
        for r in (1, 7, 100, 1001):
            for n in (1, 2, 3, 16):
                parts = step_parts.shares(StepConfig("closed", concurrency=c, duration_s=None, requests=r), n)
                assert sum(s.clients for s in parts) == c and sum(s.requests for s in parts) == r
                assert all(s.requests == 0 for s in parts if s.clients == 0)  # no requests without clients
    many = step_parts.shares(StepConfig("closed", concurrency=40), 16)
    assert step_parts.describe(StepConfig("closed", concurrency=40), many) == "3 (x8) + 2 (x8) clients"


def test_shares_of_an_open_step():
    config = StepConfig("open", rate=50, duration_s=2.0, max_in_flight=5)
    shares = step_parts.shares(config, 2)
    assert [(s.index, s.procs, s.max_in_flight) for s in shares] == [(0, 2, 3), (1, 2, 2)]
    assert step_parts.describe(config, shares) == "25+25/s (the arrivals dealt in turn)"
    assert all(s.max_in_flight >= 1 for s in step_parts.shares(StepConfig("open", rate=1, max_in_flight=2), 4))


def test_procs_auto_is_the_affinity_mask():

    assert multiproc.resolve_procs("auto") == usable_cpus()
    assert multiproc.resolve_procs("3") == 3
    for bad in ("0", "-1", "many"):
        with pytest.raises(ValueError, match="procs"):
            multiproc.resolve_procs(bad)
