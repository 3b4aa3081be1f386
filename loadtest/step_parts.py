"""One load step's parts when several processes run it (``--procs``), and their results put back
together: ``shares`` divides the step, ``pack``/``unpack`` carry a part's result over a pipe without
loss (HDR histograms in their own encoding), ``merge`` sums them into the step's one result. The
processes themselves are loadtest/multiproc.py's.
"""

from __future__ import annotations

import itertools
from collections import Counter

from loadtest.histogram import LatencyHistogram
from loadtest.step import Share, StepConfig, StepResult


def split(total: int, n: int) -> list[int]:
    """``total`` as evenly as possible over ``n`` parts, the larger ones first: 5 over 2 = [3, 2]."""
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


def shares(config: StepConfig, procs: int) -> list[Share]:
    """What each of ``procs`` processes runs of one step (see the module docstring)."""
    if config.mode != "closed":
        slots = [max(1, s) for s in split(config.max_in_flight, procs)]
        return [Share(i, procs, 0, 0, None, slots[i]) for i in range(procs)]
    clients = split(config.concurrency, procs)
    bounds = list(itertools.accumulate(clients, initial=0))
    requests: list[int | None] = [None] * procs
    if config.requests:  # in proportion to the clients; rounding the running total keeps the exact sum
        r, c = config.requests, config.concurrency
        requests = [-(-r * bounds[i + 1] // c) + (r * bounds[i] // -c) for i in range(procs)]
    return [Share(i, procs, clients[i], bounds[i], requests[i], config.max_in_flight) for i in range(procs)]


def describe(config: StepConfig, parts: list[Share]) -> str:
    """The split as the output states it: "3+2 clients", "3+2 clients, 60+40 requests", "25+25/s (...)"."""
    if config.mode != "closed":
        return f"{_joined([f'{config.rate / len(parts):.4g}'] * len(parts))}/s (the arrivals dealt in turn)"
    text = _joined([str(s.clients) for s in parts]) + " clients"
    if config.requests:
        text += ", " + _joined([str(s.requests) for s in parts]) + " requests"
    return text


def _joined(values: list[str]) -> str:
    if len(values) <= 8:
        return "+".join(values)
    groups = [(v, len(list(g))) for v, g in itertools.groupby(values)]
    return " + ".join(f"{v} (x{n})" if n > 1 else v for v, n in groups)


def pack(result: StepResult) -> dict:
    """A process's result as plain data for the pipe; histograms in HdrHistogram's lossless encoding."""
    return {
        "counted": result.counted,
        "ok": result.ok,
        "images_ok": result.images_ok,
        "errors": result.errors,
        "error_kinds": result.error_kinds,
        "error_examples": result.error_examples,
        "elapsed_s": result.elapsed_s,
        "abandoned": result.abandoned,
        "scheduled": result.scheduled,
        "stopped": result.stopped,
        "client_cpu_s": result.client_cpu_s,
        "start_lag_s": result.start_lag_s,
        "latency": result.latency.encode(),
        "error_latency": result.error_latency.encode(),
        "schedule_lag": result.schedule_lag.encode() if result.schedule_lag is not None else None,
    }


def unpack(config: StepConfig, data: dict) -> StepResult:
    lag = data["schedule_lag"]
    return StepResult(
        config,
        LatencyHistogram.decode(data["latency"]),
        error_latency=LatencyHistogram.decode(data["error_latency"]),
        counted=data["counted"],
        ok=data["ok"],
        images_ok=data["images_ok"],
        errors=data["errors"],
        error_kinds=data["error_kinds"],
        error_examples=data["error_examples"],
        elapsed_s=data["elapsed_s"],
        abandoned=data["abandoned"],
        schedule_lag=LatencyHistogram.decode(lag) if lag is not None else None,
        scheduled=data["scheduled"],
        stopped=data["stopped"],
        client_cpu_s=data["client_cpu_s"],
        start_lag_s=data["start_lag_s"],
    )


def merge(config: StepConfig, parts: list[StepResult], split_text: str = "") -> StepResult:
    """One step's result from its processes' results over one shared window (``server`` is not set)."""
    out = StepResult(
        config,
        LatencyHistogram.merged([p.latency for p in parts]),
        error_latency=LatencyHistogram.merged([p.error_latency for p in parts]),
    )
    lags = [p.schedule_lag for p in parts if p.schedule_lag is not None]
    if config.mode == "open" or lags:
        out.schedule_lag = LatencyHistogram.merged(lags)
    out.counted = sum(p.counted for p in parts)
    out.ok = sum(p.ok for p in parts)
    out.images_ok = sum(p.images_ok for p in parts)
    out.abandoned = sum(p.abandoned for p in parts)
    out.scheduled = sum(p.scheduled for p in parts)
    out.errors = dict(sum((Counter(p.errors) for p in parts), Counter()))
    out.error_kinds = dict(sum((Counter(p.error_kinds) for p in parts), Counter()))
    for p in parts:  # the first process's example of each outcome
        for outcome, example in p.error_examples.items():
            out.error_examples.setdefault(outcome, example)
    # All parts open their window at the same moment, so the step's window is the longest part's.
    out.elapsed_s = max((p.elapsed_s for p in parts), default=0.0)
    out.client_cpu_s = sum(p.client_cpu_s for p in parts)
    out.stopped = next((f"{p.stopped} (process {i})" for i, p in enumerate(parts) if p.stopped), None)
    out.procs = len(parts)
    out.split = split_text
    start_lags = [p.start_lag_s for p in parts if p.start_lag_s is not None]
    out.start_lag_s = max(start_lags) if start_lags else None
    out.parts = [
        {
            "process": i,
            "requests": p.counted,
            "ok": p.ok,
            "abandoned": p.abandoned,
            "elapsed_s": round(p.elapsed_s, 3),
            "client_cpu_s": round(p.client_cpu_s, 3),
            "start_lag_ms": round(p.start_lag_s * 1000, 3) if p.start_lag_s is not None else None,
        }
        for i, p in enumerate(parts)
    ]
    return out
