"""Step results -> one flat row each -> a terminal table, CSV and JSON (with the HDR histograms)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from loadtest.histogram import PERCENTILES, pct_key
from loadtest.step import StepResult
from model.atomic_write import write_text_atomic

LATENCY_KEYS = [pct_key(p) for p in PERCENTILES] + ["max"]


def row(result: StepResult) -> dict:
    """The numbers of one step, flat (for CSV and the table); latencies in ms."""
    c = result.config
    lat = result.latency.summary_ms()
    out = {
        "step": c.label,
        "mode": c.mode,
        "concurrency": c.concurrency if c.mode == "closed" else None,
        "rate": c.rate if c.mode == "open" else None,
        "arrival": c.arrival if c.mode == "open" else None,
        "elapsed_s": round(result.elapsed_s, 3),
        "requests": result.counted,
        "ok": result.ok,
        "errors": result.counted - result.ok,
        "error_rate": round(result.error_rate, 5),
        "images_ok": result.images_ok,
        "req_per_s": round(result.rps, 2),
        "img_per_s": round(result.ips, 2),
        **{f"{k}_ms": _r(lat[k]) for k in LATENCY_KEYS},
        "mean_ms": _r(lat["mean"]),
        "abandoned": result.abandoned,
        # Share of one core the load generator used: near 100% means the client, not the server, limits
        # (with several load processes, their sum: near 100 x procs).
        "client_cpu_pct": round(100 * result.client_cpu_s / result.elapsed_s, 1) if result.elapsed_s else None,
        "procs": result.procs,
        "split": result.split,
        "errors_by_status": _counts(result.errors),
        "errors_by_kind": _counts(result.error_kinds),
        "stopped": result.stopped or "",
    }
    if result.schedule_lag is not None:
        lag = result.schedule_lag.summary_ms()
        out.update({"scheduled": result.scheduled, "lag_p99_ms": _r(lag["p99"]), "lag_max_ms": _r(lag["max"])})
    server = result.server or {}
    for key in (
        "batches",
        "batch_size_mean",
        "queue_wait_mean_ms",
        "queue_wait_p99_ms",
        "prepare_mean_ms",
        "inference_mean_ms",
        "prepare_gpu_mean_ms",  # on CUDA, each stage's span on its stream (CUDA events); null elsewhere
        "inference_gpu_mean_ms",
        "preprocess_mean_ms",
        "request_mean_ms",
    ):
        out[f"server_{key}"] = _r(server.get(key))
    # Where its images were decoded, e.g. "cpu:12 declined:12 gpu:3000" (JPEGs declined by the GPU decoder
    # are counted again under cpu); empty where the server does not say.
    out["server_decoded"] = _counts(server.get("decoded", {}))
    return out


def _counts(counts: dict) -> str:
    """Counts by name as one line, names sorted: ``{"503": 7, "timeout": 3}`` -> ``"503:7 timeout:3"``."""
    return " ".join(f"{name}:{count}" for name, count in sorted(counts.items()))


def _r(value, digits: int = 3):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(value, digits) if isinstance(value, float) else value


def step_json(result: StepResult) -> dict:
    return {
        **row(result),
        "config": vars(result.config),
        "latency_ms": result.latency.summary_ms(),
        "latency_cdf_ms": result.latency.cdf_ms(),
        "latency_hdr": result.latency.encode(),  # HdrHistogram base64, microseconds
        "error_latency_ms": result.error_latency.summary_ms() if result.error_latency.count else None,
        "schedule_lag_ms": result.schedule_lag.summary_ms() if result.schedule_lag is not None else None,
        # Several load processes: how late the latest opened the shared window, and each one's numbers.
        "start_lag_ms": _r(result.start_lag_s * 1000) if result.start_lag_s is not None else None,
        "processes": result.parts,
        "errors_by_status": result.errors,
        "errors_by_kind": result.error_kinds,
        "error_examples": result.error_examples,  # per outcome, what one of them was
        "server": result.server,
    }


COLUMNS = [  # (header, row key, format)
    ("step", "step", "{}"),
    ("req", "requests", "{}"),
    ("err", "errors", "{}"),
    ("req/s", "req_per_s", "{:.1f}"),
    ("img/s", "img_per_s", "{:.1f}"),
    ("p50", "p50_ms", "{:.1f}"),
    ("p90", "p90_ms", "{:.1f}"),
    ("p95", "p95_ms", "{:.1f}"),
    ("p99", "p99_ms", "{:.1f}"),
    ("p99.9", "p99.9_ms", "{:.1f}"),
    ("max", "max_ms", "{:.1f}"),
    ("srv", "server_request_mean_ms", "{:.1f}"),
    ("batch", "server_batch_size_mean", "{:.1f}"),
    ("qwait", "server_queue_wait_mean_ms", "{:.1f}"),
    ("prep", "server_prepare_mean_ms", "{:.1f}"),
    ("infer", "server_inference_mean_ms", "{:.1f}"),
    ("cli%", "client_cpu_pct", "{:.0f}"),
]


def table(rows: list[dict]) -> str:
    """Fixed-width text table; latencies in ms; ``srv`` (ms: its time per answered request), ``batch``,
    ``qwait``, ``prep`` and ``infer`` (ms) are the server's means."""
    cells = [[h for h, _, _ in COLUMNS]]
    for r in rows:
        line = []
        for _, key, fmt in COLUMNS:
            value = r.get(key)
            line.append("-" if value is None else fmt.format(value))
        cells.append(line)
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cl, widths, strict=True)))
        for cl in cells
    ]
    notes = [f"  {r['step']}: {r['procs']} load processes, {r['split']}" for r in rows if r.get("procs", 1) > 1]
    notes += [f"  {r['step']}: stopped: {r['stopped']}" for r in rows if r.get("stopped")]
    notes += [
        f"  {r['step']}: errors {r['errors_by_status']} {r['errors_by_kind']}".rstrip() for r in rows if r["errors"]
    ]
    return "\n".join(lines + notes)


def write_csv(rows: list[dict], path: Path) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def json_safe(value):
    """``value`` with every NaN or infinite float as None: JSON has no NaN (``json.dumps`` would write a
    bare ``NaN`` that strict readers refuse), and a step without an ok answer has no latency."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def dumps(doc) -> str:
    """Strict JSON (``allow_nan=False``: a NaN left anywhere is an error here, not in a reader)."""
    return json.dumps(json_safe(doc), indent=1, default=str, allow_nan=False) + "\n"


def write_json(meta: dict, results: list[StepResult], path: Path) -> None:
    """report.json: ``meta`` and every step; latencies of a step without an ok answer are null."""
    write_text_atomic(path, dumps({**meta, "steps": [step_json(r) for r in results]}))
