"""loadtest.bench_summary: the ratios a bench run prints, from bench.json's dict (no servers run)."""

from __future__ import annotations

import pytest

from loadtest.bench import get_args_parser
from loadtest.bench_summary import layout_lines, summarize


def step(c: int, img_s: float, p50: float = 10.0) -> dict:
    return {
        "concurrency": c,
        "requests": 100,
        "img_per_s": img_s,
        "p50_ms": p50,
        "p99_ms": 2 * p50,
        "errors": 0,
        "server_batch_size_mean": 1.0,
    }


def backend(service_steps: list[dict]) -> dict:
    return {
        "engine": [{"batch": 32, "img_per_s": 150.0, "ms_per_batch": 213.0}],
        "preprocess_ms": 2.5,
        "pipeline": [
            {"concurrency": c, "img_per_s": 90.0, "latency_ms": {"p50": 10.0, "p99": 20.0}, "batch_size_mean": 1.0}
            for c in (1, 32)
        ],
        "service": {"steps": service_steps},
    }


def result(service_steps: list[dict], peers: dict[str, list[dict]], layouts: dict | None = None) -> dict:
    return {
        "host": {"cpu_count": 2},
        "backends": {"onnxruntime": backend(service_steps)},
        "peers": {name: {"steps": steps} for name, steps in peers.items()},
        "layouts": layouts or {},
    }


def test_a_peer_is_compared_at_each_concurrency_on_the_medians_of_the_rounds():
    # c=4 ran three rounds: the median (64) against the peer's 70 is behind, though the best round
    # (70.5) would have been ahead; c=16's single round is ahead.
    service = [step(4, 60.0), step(4, 70.5), step(4, 64.0), step(16, 90.0)]
    lines, md = summarize(result(service, {"litserve": [step(4, 70.0), step(16, 80.0)]}))
    (per_c,) = [line for line in lines if "at each concurrency" in line]
    assert "c=4 x0.91 BEHIND" in per_c
    assert "c=16 x1.12" in per_c and "c=16 x1.12 BEHIND" not in per_c
    assert "| peer litserve, c=4 | 70.0 | 10.0 | 20.0 | 0 errors |" in md


def test_layouts_are_compared_with_the_first_layout_and_the_service_with_it_too():
    layouts = {
        "before": {"steps": [step(1, 40.0, 20.0), step(1, 50.0, 18.0), step(1, 45.0, 19.0)]},
        "2 http": {"steps": [step(1, 54.0, 19.0)]},
    }
    md: list[str] = []
    lines = layout_lines(layouts, md, {"steps": [step(1, 36.0, 20.9)]})
    assert "layout 2 http vs before: c=1: img/s x1.20, p50 x1.00" in lines
    assert "the service (c) vs before: c=1: img/s x0.80, p50 x1.10" in lines
    assert sum(row.startswith("| (e) layout before, c=1 |") for row in md) == 3
    assert not any("the service (c)" in row for row in md)  # (c) has its own rows


def test_a_layout_that_did_not_run_says_why():
    lines = layout_lines({"before": {"skipped": "failed to start: port"}}, [])
    assert lines == ["before: not measured (failed to start: port)"]


def test_a_missing_service_is_reported_not_compared():
    res = result([], {"mosec": [step(1, 30.0)]})
    lines, _ = summarize(res)
    assert any(line.startswith("onnxruntime: service not measured") for line in lines)
    assert not any("at each concurrency" in line for line in lines)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("no-colon", "expected LABEL:FLAGS"),
        (":--http-workers=2", "expected LABEL:FLAGS"),
        ("x:checkout=/", "not a checkout"),
    ],
)
def test_a_bad_layout_is_a_usage_error(value, message, capsys):
    with pytest.raises(SystemExit) as exc:
        get_args_parser().parse_args(["--layout", value])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_the_onnx_path_is_made_absolute_for_servers_run_from_another_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert get_args_parser().parse_args([]).onnx == tmp_path / "artifacts" / "alexnet.onnx"
    assert get_args_parser().parse_args(["--onnx", "m.onnx"]).onnx == tmp_path / "m.onnx"


def test_a_layout_parses_into_label_flags_and_checkout(tmp_path):
    (tmp_path / "service").mkdir()
    (tmp_path / "service" / "__main__.py").write_text("")
    args = get_args_parser().parse_args(["--layout", f"old: --http-workers=2 checkout={tmp_path} --decode=cpu"])
    assert args.layout == [("old", ["--http-workers=2", "--decode=cpu"], tmp_path.resolve())]


def test_the_service_is_held_to_the_naive_baseline_and_the_in_process_ceiling():
    res = result([step(1, 30.0, 24.0), step(16, 80.0)], {})
    res["naive"] = {"steps": [step(16, 40.0)]}
    res["backends"]["onnxruntime"]["pipeline_interleaved"] = [
        {"concurrency": c, "img_per_s": img_s, "latency_ms": {"p50": 20.0, "p99": 30.0}, "batch_size_mean": 1.0}
        for c, img_s in ((1, 40.0), (16, 100.0))
    ]
    lines, md = summarize(res)
    text = "\n".join(lines)
    assert "(c)/(d) 2.00  target >= 1.6: MET" in text  # 80 against the naive server's 40
    assert (
        "(c)/(b) 0.80  target >= 0.9: MISSED  (medians at c=16 over 1 round: service 80.0, pipeline 100.0 img/s, "
        "interleaved with (c))" in text
    )
    assert "c=1 p50 24.0 ms vs in-process, interleaved (medians of the rounds) 20.0 ms: x1.20" in text
    assert "| (d) naive, c=16 | 40.0 | 10.0 | 20.0 | 0 errors |" in md


def pipeline_step(c: int, img_s: float, p50: float = 10.0) -> dict:
    return {
        "concurrency": c,
        "images": 100,
        "img_per_s": img_s,
        "latency_ms": {"p50": p50, "p99": 2 * p50},
        "batch_size_mean": 8.0,
    }


def test_the_ceiling_ratio_compares_medians_of_the_same_rounds_not_the_best_service_step_with_the_last_pipeline():
    # Three rounds at c=16 (and two at c=1): the best service round (160) against the last pipeline
    # round (150) would read 1.07; the medians say 150 against 175, 0.86.
    service = [step(16, 150.0), step(1, 60.0, 15.0), step(16, 160.0), step(1, 62.0, 13.0), step(16, 140.0)]
    res = result(service, {})
    res["backends"]["onnxruntime"]["pipeline_interleaved"] = [
        pipeline_step(16, 190.0),
        pipeline_step(1, 80.0, 12.0),
        pipeline_step(16, 175.0),
        pipeline_step(1, 78.0, 12.4),
        pipeline_step(16, 150.0),
    ]
    lines, md = summarize(res)
    text = "\n".join(lines)
    assert "(c)/(b) 0.86  target >= 0.9: MISSED  (medians at c=16 over 3 rounds: service 150.0, pipeline 175.0" in text
    assert "c=1 p50 14.0 ms vs in-process, interleaved (medians of the rounds) 12.2 ms: x1.15" in text
    assert sum(row.startswith("| (b) pipeline onnxruntime, 16 callers, interleaved") for row in md) == 3


def test_a_backend_that_did_not_load_is_a_row_that_says_why():
    res = result([step(1, 30.0)], {})
    res["backends"]["tensorrt"] = {"skipped": "tensorrt is not installed"}
    lines, md = summarize(res)
    assert "tensorrt: skipped (tensorrt is not installed)" in lines
    assert "| tensorrt | - | - | - | skipped: tensorrt is not installed |" in md


def failed_step(c: int) -> dict:
    """A step whose every request failed, as report.row writes it: no latency, so null (None)."""
    return {**step(c, 0.0), "img_per_s": 0.0, "p50_ms": None, "p99_ms": None, "errors": 100}


def test_steps_where_every_request_failed_are_rows_with_dashes_never_the_best():
    res = result([failed_step(1), step(16, 80.0), failed_step(32)], {"mosec": [failed_step(16)]})
    res["naive"] = {"steps": [failed_step(16)]}
    res["client_ceiling"] = {"concurrency": 32, "req_per_s": 0.0, "p50_ms": None}
    lines, md = summarize(res)
    assert "| (c) service onnxruntime, c=1 | 0.0 | - | - | mean batch 1.0, 100 errors |" in md
    assert any(line.startswith("onnxruntime: service best at c=16: 80.0 img/s") for line in lines)
    assert not any("c=1 p50" in line for line in lines)  # c=1 has no p50 to compare
    assert not any("(c)/(d)" in line for line in lines)  # nor has the naive server a best step
    assert "| mosec | - | - | - | no request was answered ok |" in md
    assert "| client ceiling, GET /healthz c=32 | 0 req/s | - | - | the load generator's own limit |" in md

    lines, _ = summarize(result([failed_step(1), failed_step(16)], {}))
    assert "onnxruntime: service not measured (no request was answered ok)" in lines


def test_what_each_service_said_it_served_is_printed_beside_its_figures():
    gpu = {"backend": "torch on cuda:0, fp16", "http_workers": 15, "decode": "gpu", "decode_reason": "nvJPEG via x"}
    cpu = {**gpu, "http_workers": 1, "decode": "cpu", "decode_reason": "decode=cpu was asked for"}
    res = result([step(1, 30.0)], {}, {"cpu decode": {"steps": [step(1, 20.0)], "serving": cpu}})
    res["backends"]["onnxruntime"]["service"]["serving"] = gpu
    lines, _ = summarize(res)
    assert "  (c) service onnxruntime served torch on cuda:0, fp16, 15 front end(s); JPEGs: nvJPEG via x" in lines
    assert (
        "  (e) layout cpu decode served torch on cuda:0, fp16, 1 front end(s); JPEGs: decode=cpu was asked for" in lines
    )
    res["backends"]["onnxruntime"]["service"].pop("serving")  # a server that did not say: no line
    assert not any("(c) service onnxruntime served" in line for line in summarize(res)[0])
