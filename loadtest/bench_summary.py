"""What one ``loadtest.bench`` result says: the ratios against the targets, and the Markdown table.

``summarize(result)`` turns bench.json's dict into the terminal's lines and bench.md's table rows;
``unmeasured_backends(result)`` names what loaded but gave no figures (the bench then fails).
"""

from __future__ import annotations

import math
import statistics

from loadtest.servers import served_text

# vs_pipeline: issue 13's, c=16 over the in-process overlap of decode and inference on the 2-core host.
TARGETS = {"vs_pipeline": 0.90, "vs_naive": 1.6, "c1_p50_over_pipeline": 1.10}


def _measured(step: dict) -> bool:
    """A step with latencies: some request was answered ok (a step where all failed has null ones)."""
    return bool(step["requests"]) and step.get("p50_ms") is not None


def _ms(value: float | None, spec: str = ".1f") -> str:
    """A number of the table, or "-" where the report has null (no ok answer, nothing to measure)."""
    return "-" if value is None else format(value, spec)


def _why_unmeasured(entry: dict) -> str:
    steps = entry.get("steps") or []
    return "no request was answered ok" if any(s["requests"] for s in steps) else "no step finished"


def _best(steps: list[dict], lo: int = 16, hi: int = 32) -> dict | None:
    """The measured step with the most img/s among concurrency lo..hi (any step when none is in range)."""
    ok = [s for s in steps if _measured(s)]
    in_range = [s for s in ok if lo <= (s["concurrency"] or 0) <= hi] or ok
    return max(in_range, key=lambda s: s["img_per_s"], default=None)


def _at(steps: list[dict], c: int) -> dict | None:
    return next((s for s in steps if s["concurrency"] == c and _measured(s)), None)


def _medians(steps: list[dict]) -> dict[int, tuple[float, float]]:
    """{concurrency: (median img/s, median p50 ms)} over the steps run at it (--concurrency 1,16,1,16
    repeats each level in rounds: on a noisy host the medians compare better than any one step)."""
    by_c: dict[int, list[dict]] = {}
    for s in steps:
        if _measured(s):
            by_c.setdefault(s["concurrency"], []).append(s)
    return {
        c: (statistics.median(s["img_per_s"] for s in group), statistics.median(s["p50_ms"] for s in group))
        for c, group in by_c.items()
    }


def _as_step(p: dict) -> dict:
    """An in-process pipeline step (loadtest.ceilings.run_pipeline) in a served step's keys."""
    return {
        "concurrency": p["concurrency"],
        "requests": p.get("images", 1),
        "img_per_s": p["img_per_s"],
        "p50_ms": p["latency_ms"]["p50"],
    }


def open_loop_lines(what: str, entry: dict, md: list[str]) -> list[str]:
    """One server's open-loop step (``--open-at``), when it ran: a table row into ``md``, and a line."""
    o = entry.get("open_loop")
    if not o:
        return []
    where = f"open loop at {o['rate']:g} req/s (Poisson)"
    md.append(
        f"| {what}, {where} | {o['img_per_s']:.1f} | {_ms(o['p50_ms'])} | {_ms(o['p99_ms'])} | {o['errors']} errors |"
    )
    return [f"  {what}, {where}: p50 {_ms(o['p50_ms'])} ms, p99 {_ms(o['p99_ms'])} ms, {o['errors']} errors"]


def serving_line(what: str, entry: dict) -> list[str]:
    """What a service said it served when it started (``servers.served``), where it said."""
    return [f"  {what} served {served_text(entry['serving'])}"] if entry.get("serving") else []


def layout_lines(layouts: dict[str, dict], md: list[str], service: dict | None = None) -> list[str]:
    """(e): each layout's steps as table rows, and its img/s and p50 per concurrency (medians over the
    rounds) against the first layout; the default service (c) is compared with that first layout too."""
    measured = {label: entry for label, entry in layouts.items() if "steps" in entry}
    lines = [
        f"{label}: not measured ({entry.get('skipped')})" for label, entry in layouts.items() if label not in measured
    ]
    if not measured:
        return lines
    base_label, base = next(iter(measured.items()))
    base_medians = _medians(base["steps"])
    compared = dict(measured)
    if service and "steps" in service:
        compared["the service (c)"] = service
    for label, entry in compared.items():
        for s in entry["steps"] if label in measured else ():
            md.append(
                f"| (e) layout {label}, c={s['concurrency']} | {s['img_per_s']:.1f} | {_ms(s['p50_ms'])} | "
                f"{_ms(s['p99_ms'])} | mean batch {s['server_batch_size_mean'] or 0:.1f}, {s['errors']} errors |"
            )
        if label in measured:
            lines += open_loop_lines(f"(e) layout {label}", entry, md)
            lines += serving_line(f"(e) layout {label}", entry)
        if label == base_label:
            continue
        parts = []
        for c, (img_s, p50) in _medians(entry["steps"]).items():
            b = base_medians.get(c)
            if b and b[0] and b[1]:
                parts.append(f"c={c}: img/s x{img_s / b[0]:.2f}, p50 x{p50 / b[1]:.2f}")
        lines.append(f"{'layout ' if label in measured else ''}{label} vs {base_label}: " + "; ".join(parts))
    return lines


def backend_lines(name: str, b: dict, result: dict, md: list[str]) -> list[str]:
    """One backend's (a), (b) and (c): table rows into ``md``; its bounds and ratios to the targets."""
    lines: list[str] = []
    naive = result.get("naive", {})
    if "skipped" in b:
        lines.append(f"{name}: skipped ({b['skipped']})")
        md.append(f"| {name} | - | - | - | skipped: {b['skipped'][:80]} |")
        return lines
    engine_peak = max(b["engine"], key=lambda e: e["img_per_s"])
    pipe_c1 = b["pipeline"][0]
    pipe_peak = max(b["pipeline"], key=lambda p: p["img_per_s"])
    for e in b["engine"]:
        md.append(
            f"| (a) engine {name}, batch {e['batch']} | {e['img_per_s']:.1f} | "
            f"{e['ms_per_batch']:.1f} | - | ms per batch |"
        )
    md.append(f"| preprocess one image (1 thread) | - | {b['preprocess_ms']:.1f} | - | decode+resize+normalize |")
    for p in b["pipeline"]:
        md.append(
            f"| (b) pipeline {name}, {p['concurrency']} in-process callers | {p['img_per_s']:.1f} | "
            f"{p['latency_ms']['p50']:.1f} | {p['latency_ms']['p99']:.1f} | "
            f"mean batch {p['batch_size_mean'] or 0:.1f} |"
        )
    service = b.get("service", {})
    if not _best(service.get("steps", [])):
        lines.append(f"{name}: service not measured ({service.get('skipped', _why_unmeasured(service))})")
        return lines
    for s in service["steps"]:
        md.append(
            f"| (c) service {name}, c={s['concurrency']} | {s['img_per_s']:.1f} | {_ms(s['p50_ms'])} | "
            f"{_ms(s['p99_ms'])} | mean batch {s['server_batch_size_mean'] or 0:.1f}, {s['errors']} errors |"
        )
    best = _best(service["steps"])
    c1 = _at(service["steps"], 1)
    lines.append(
        f"{name}: service best at c={best['concurrency']}: {best['img_per_s']:.1f} img/s, "
        f"p50 {best['p50_ms']:.1f} ms, p99 {best['p99_ms']:.1f} ms"
    )
    lines += open_loop_lines(f"(c) service {name}", service, md)
    lines += serving_line(f"(c) service {name}", service)
    # Upper bounds, each as if it had the host to itself: which one the service sits under names the limit.
    cores = result["host"]["cpu_count"] or 1
    lines.append(
        f"  bounds: decode <= {cores * 1000 / b['preprocess_ms']:.0f} img/s ({cores} cores x 1 image per "
        f"{b['preprocess_ms']:.1f} ms), engine <= {engine_peak['img_per_s']:.0f} img/s, "
        f"client <= {_ms((result.get('client_ceiling') or {}).get('req_per_s'), '.0f')} req/s"
    )
    ratio = best["img_per_s"] / engine_peak["img_per_s"]
    lines.append(
        f"  (c)/(a) {ratio:.2f}  (engine at batch {engine_peak['batch']}: {engine_peak['img_per_s']:.1f} img/s)"
    )
    after = b.get("engine_after")
    if after:
        before = next(e for e in b["engine"] if e["batch"] == after["batch"])
        lines.append(
            f"  host drift: engine at batch {after['batch']} {before['img_per_s']:.1f} img/s before the HTTP "
            f"part, {after['img_per_s']:.1f} after (x{after['img_per_s'] / before['img_per_s']:.2f}; "
            "far from 1 = a busy host, ratios to (a) and (b) are rough)"
        )
        md.append(
            f"| (a) engine {name}, batch {after['batch']}, again after (c) | {after['img_per_s']:.1f} | "
            f"{after['ms_per_batch']:.1f} | - | host drift check |"
        )
    ratio = best["img_per_s"] / pipe_peak["img_per_s"]
    interleaved = b.get("pipeline_interleaved") or []
    for p in interleaved:  # every round's, in the order they ran
        md.append(
            f"| (b) pipeline {name}, {p['concurrency']} callers, interleaved with (c) | "
            f"{p['img_per_s']:.1f} | {p['latency_ms']['p50']:.1f} | {p['latency_ms']['p99']:.1f} | "
            f"mean batch {p['batch_size_mean'] or 0:.1f} |"
        )
    service_medians = _medians(service["steps"])
    pipeline_medians = _medians([_as_step(p) for p in interleaved])
    # (b) run in the same rotation as (c): like against like, the medians of the rounds at the
    # concurrency (16..32 where there is one) where the service's median is highest. The ratio to trust.
    median_steps = [
        {"concurrency": c, "requests": 1, "img_per_s": img_s, "p50_ms": p50}
        for c, (img_s, p50) in service_medians.items()
        if c in pipeline_medians
    ]
    if best_median := _best(median_steps):
        c = best_median["concurrency"]
        rounds = sum(1 for s in service["steps"] if s["concurrency"] == c and _measured(s))
        lines.append(f"  (c)/(b) {ratio:.2f} against the standalone (b), measured minutes earlier")
        ratio = service_medians[c][0] / pipeline_medians[c][0]
        detail = (
            f"medians at c={c} over {rounds} round{'s' if rounds > 1 else ''}: service "
            f"{service_medians[c][0]:.1f}, pipeline {pipeline_medians[c][0]:.1f} img/s, interleaved with (c)"
        )
    else:
        detail = f"pipeline {pipe_peak['img_per_s']:.1f} img/s at {pipe_peak['concurrency']} callers"
    ok = "MET" if ratio >= TARGETS["vs_pipeline"] else "MISSED"
    lines.append(f"  (c)/(b) {ratio:.2f}  target >= {TARGETS['vs_pipeline']}: {ok}  ({detail})")
    if nbest := _best(naive.get("steps", [])):
        ratio = best["img_per_s"] / nbest["img_per_s"] if nbest["img_per_s"] else math.inf
        ok = "MET" if ratio >= TARGETS["vs_naive"] else "MISSED"
        lines.append(
            f"  (c)/(d) {ratio:.2f}  target >= {TARGETS['vs_naive']}: {ok}  "
            f"(naive best {nbest['img_per_s']:.1f} img/s at c={nbest['concurrency']}, p99 {nbest['p99_ms']:.1f} ms)"
        )
    if 1 in service_medians and 1 in pipeline_medians:
        service_p50, pipeline_p50 = service_medians[1][1], pipeline_medians[1][1]
        where = "in-process, interleaved (medians of the rounds)"
    elif c1:
        service_p50, pipeline_p50 = c1["p50_ms"], pipe_c1["latency_ms"]["p50"]
        where = "in-process"
    else:
        return lines
    ratio = service_p50 / pipeline_p50
    ok = "MET" if ratio <= TARGETS["c1_p50_over_pipeline"] else "MISSED"
    lines.append(
        f"  c=1 p50 {service_p50:.1f} ms vs {where} {pipeline_p50:.1f} ms: "
        f"x{ratio:.2f}, target <= {TARGETS['c1_p50_over_pipeline']}: {ok}"
    )
    return lines


def other_server_lines(label: str, result: dict, md: list[str]) -> list[str]:
    """The naive baseline (d) or a peer: table rows into ``md``; a peer's ratios to the service."""
    lines: list[str] = []
    entry = result.get("naive", {}) if label == "naive" else result["peers"][label]
    if not _best(entry.get("steps", [])):
        if label != "naive" or entry:
            md.append(f"| {label} | - | - | - | {entry.get('skipped', _why_unmeasured(entry))[:100]} |")
        return lines
    tag = "(d) naive" if label == "naive" else f"peer {label}"
    for s in entry["steps"]:
        md.append(
            f"| {tag}, c={s['concurrency']} | {s['img_per_s']:.1f} | {_ms(s['p50_ms'])} | {_ms(s['p99_ms'])} | "
            f"{s['errors']} errors |"
        )
    pbest = _best(entry["steps"])
    lines.append(
        f"{label}: best {pbest['img_per_s']:.1f} img/s at c={pbest['concurrency']}, p99 {pbest['p99_ms']:.1f} ms"
    )
    lines += open_loop_lines(tag, entry, md)
    if label != "naive":
        for name, b in result["backends"].items():
            best = _best(b.get("service", {}).get("steps", []))
            if best and pbest["img_per_s"]:
                ahead = "ahead" if best["img_per_s"] > pbest["img_per_s"] else "BEHIND"
                lines.append(f"  (c) {name} / {label}: {best['img_per_s'] / pbest['img_per_s']:.2f} ({ahead})")
                per_c = []  # the target is to lead at every concurrency, not only at the best
                peer_medians = _medians(entry["steps"])
                for c, (img_s, _p50) in _medians(b["service"]["steps"]).items():
                    if peer_medians.get(c, (0, 0))[0]:
                        ratio = img_s / peer_medians[c][0]
                        per_c.append(f"c={c} x{ratio:.2f}{'' if ratio > 1 else ' BEHIND'}")
                lines.append(f"    at each concurrency: {', '.join(per_c)}")
    return lines


def summarize(result: dict) -> tuple[list[str], list[str]]:
    """(ratio lines for the terminal, Markdown table lines) of one bench result."""
    lines, md = [], ["| measurement | img/s | p50 ms | p99 ms | note |", "|---|---:|---:|---:|---|"]
    for name, b in result["backends"].items():
        lines += backend_lines(name, b, result, md)
    for label in ["naive", *result.get("peers", {})]:
        lines += other_server_lines(label, result, md)
    first = next((b for b in result["backends"].values() if "skipped" not in b), {})
    lines += layout_lines(result.get("layouts", {}), md, first.get("service"))
    ceiling = result.get("client_ceiling")
    if ceiling:
        md.append(
            f"| client ceiling, GET /healthz c={ceiling['concurrency']} | {ceiling['req_per_s']:.0f} req/s | "
            f"{_ms(ceiling['p50_ms'])} | - | the load generator's own limit |"
        )
    return lines, md


def unmeasured_backends(result: dict) -> dict[str, str]:
    """{backend: why} for every backend that loaded here but whose service gave no figures, and for
    the run as a whole when no backend loaded at all: a benchmark that measured nothing has failed."""
    loaded = {name: b for name, b in result["backends"].items() if "skipped" not in b}
    if not loaded:
        return {
            "(all)": "no backend loaded: " + "; ".join(f"{n}: {b['skipped']}" for n, b in result["backends"].items())
        }
    return {
        name: str(b.get("service", {}).get("skipped", "no steps"))
        for name, b in loaded.items()
        if not b.get("service", {}).get("steps")
    }
