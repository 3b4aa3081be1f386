"""The benchmark: the service against its own ceilings and a naive baseline, in one run.

    python -m loadtest.bench                               # CPU: (a) (b) (c) (d), ~3 minutes
    python -m loadtest.bench --peers litserve,mosec        # + the peer frameworks (pip install -e '.[bench]')
    python -m loadtest.bench --gpu --out results/gpu-h100  # CUDA host: (a) (b) (c) per GPU backend
    python -m loadtest.bench --layout "1 http:--http-workers=1" --layout "before:checkout=/tmp/before"
                                                           # + the service in other layouts, interleaved

(a) engine ceiling: the backend alone on preprocessed batches, img/s per batch size
(b) pipeline ceiling: decode + preprocess + batch + infer in this process, no HTTP
(c) the service through HTTP (``python -m service`` started here on 127.0.0.1), a concurrency sweep
(d) the naive baseline (``loadtest/naive_server.py``): FastAPI, one backend call per request
(e) layouts: the service again with other flags (``--http-workers``, ``--decode``) or from another
    checkout (``checkout=PATH``: a git worktree of an earlier commit, to compare with what it was),
    each in the same interleaved rotation, and its ratios to the first layout given

After the sweep every HTTP server runs once more in an open loop (Poisson arrivals) at ``--open-at``
(0.8) of the most requests/s it served in the sweep: its tail latency under load short of saturation.

Prints the ratios (c)/(a), (c)/(b), (c)/(d) against the targets, and a Markdown table for the README;
writes bench.json, bench.md and each sweep's report/CSV/plots under --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest import report, servers
from loadtest.__main__ import build_payloads, host_description, write_outputs
from loadtest.ceilings import engine_ceiling, pipeline_ceiling, preprocess_time_ms, run_pipeline
from loadtest.corpus import build_corpus
from loadtest.multiproc import healthz_ceiling, run_sweep
from loadtest.progress import ProgressBar
from loadtest.runner import StepConfig, StepResult
from service.process import reuse_freed_memory

GPU_BACKENDS = ("torch", "onnxruntime", "tensorrt")
DEFAULT_CONCURRENCY = [1, 4, 16, 32]
GPU_CONCURRENCY = (1, 16, 32, 64, 128)
TARGETS = {"vs_pipeline": 0.85, "vs_naive": 1.6, "c1_p50_over_pipeline": 1.10}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each flag; the module docstring's examples kept as written."""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--onnx",
        type=Path,
        default=Path("artifacts/alexnet.onnx"),
        help="ONNX model (exported, untrained, when missing)",
    )
    p.add_argument("--backends", default="onnxruntime", help="backends to measure, comma-separated")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--gpu",
        action="store_true",
        help=f"CUDA host preset: --device cuda --backends {','.join(GPU_BACKENDS)} (those that load), "
        "a sweep to 128 clients, no naive baseline, no peers",
    )
    p.add_argument("--kind", default="multipart", choices=["multipart", "raw"], help="request kind for (c) (d) peers")
    p.add_argument("--images", default="photos,500x375", help="corpus (see python -m loadtest --help)")
    p.add_argument(
        "--concurrency",
        type=_ints,
        default=DEFAULT_CONCURRENCY,
        help=f"(c) (d) sweep (--gpu: {','.join(map(str, GPU_CONCURRENCY))})",
    )
    p.add_argument("--duration-s", type=float, default=8.0, help="measured seconds per step of (b) (c) (d)")
    p.add_argument("--warmup-s", type=float, default=2.0, help="unmeasured seconds before each step")
    p.add_argument("--engine-batches", type=_ints, default=[1, 8, 32], help="(a) batch sizes")
    p.add_argument("--engine-time-s", type=float, default=3.0, help="(a) seconds per batch size")
    p.add_argument("--no-naive", action="store_true", help="skip (d)")
    p.add_argument(
        "--open-at",
        type=float,
        default=0.8,
        help="after the sweep, each HTTP server in an open loop (Poisson) at this fraction of its peak req/s; 0: skip",
    )
    p.add_argument("--peers", default="", help="peer frameworks to run as well: litserve,mosec")
    p.add_argument(
        "--service-flag",
        action="append",
        default=[],
        help="extra flag for python -m service (repeat), e.g. --service-flag=--max-delay-ms=4",
    )
    p.add_argument(
        "--layout",
        action="append",
        default=[],
        metavar="LABEL:FLAGS",
        help="(e) the service once more as LABEL with FLAGS (space-separated service flags), or from another "
        "checkout with 'checkout=PATH' among them; repeat; ratios are to the first",
    )
    p.add_argument(
        "--procs", default="1", help="load-generator processes (python -m loadtest --procs): an integer or auto"
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default results/bench-TIMESTAMP)")
    return p


def parse_layout(text: str) -> tuple[str, list[str], Path | None]:
    """'LABEL:FLAGS' -> (label, service flags, checkout or None)."""
    label, sep, rest = text.partition(":")
    if not sep or not label.strip():
        raise ValueError(f"--layout {text!r}: expected LABEL:FLAGS, e.g. '2 http:--http-workers=2'")
    flags, checkout = [], None
    for word in rest.split():
        if word.startswith("checkout="):
            checkout = Path(word.removeprefix("checkout=")).resolve()
            if not (checkout / "service" / "__main__.py").is_file():
                raise ValueError(f"--layout {label}: {checkout} is not a checkout of this repository")
        else:
            flags.append(word)
    return label.strip(), flags, checkout


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def ensure_onnx(path: Path) -> None:
    if path.is_file():
        return
    say(f"{path} missing: exporting the untrained torchvision AlexNet")
    from export.to_onnx import export_and_verify

    path.parent.mkdir(parents=True, exist_ok=True)
    export_and_verify(None, path, verify_batch_sizes=(1,))


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    import os

    from model.host import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} CPU cores"


def measure_in_process(backend_name: str, args, images: list[bytes]) -> dict:
    """(a) and (b) for one backend; {"skipped": reason} when it cannot load here."""
    from service.backends import select_backend
    from service.errors import BackendUnavailable
    from service.settings import Settings

    settings = Settings(onnx=args.onnx, backend=backend_name, device=args.device)
    try:
        selection = select_backend(settings)
    except BackendUnavailable as exc:
        return {"skipped": str(exc)}
    backend, meta = selection.backend, selection.metadata
    out = {"backend": backend.describe()}
    try:
        backend.warmup(meta.input_size)
        say(f"(a) engine ceiling, {backend_name}: batches {args.engine_batches}")
        out["engine"] = engine_ceiling(backend, meta.input_size, args.engine_batches, args.engine_time_s)
        for e in out["engine"]:
            say(f"    batch {e['batch']:3d}: {e['img_per_s']:8.1f} img/s ({e['ms_per_batch']:.1f} ms/batch)")
        from service.preprocess import PreprocessConfig

        out["preprocess_ms"] = preprocess_time_ms(images, PreprocessConfig())
        out["pipeline"] = []
        for c in sorted({1, max(args.concurrency)}):
            say(f"(b) pipeline ceiling, {backend_name}: {c} concurrent in-process callers, {args.duration_s:g} s")
            r = pipeline_ceiling(backend, meta, settings, images, c, args.duration_s, args.warmup_s)
            say(
                f"    {r['img_per_s']:.1f} img/s, p50 {r['latency_ms']['p50']:.1f} ms, batch {r['batch_size_mean'] or 0:.1f}"
            )
            out["pipeline"].append(r)
    finally:
        backend.close()
    return out


def engine_after(backend_name: str, args, batch: int) -> dict | None:
    """(a) once more at one batch size, after the HTTP part: a big change says the host was not quiet."""
    from service.backends import select_backend
    from service.settings import Settings

    selection = select_backend(Settings(onnx=args.onnx, backend=backend_name, device=args.device))
    try:
        selection.backend.warmup(selection.metadata.input_size)
        (e,) = engine_ceiling(selection.backend, selection.metadata.input_size, [batch], args.engine_time_s)
    finally:
        selection.backend.close()
    say(f"(a) engine again after the HTTP part, batch {batch}: {e['img_per_s']:.1f} img/s")
    return e


@dataclass
class Target:
    """One server of the HTTP part: where its results go in bench.json and how to start it."""

    key: str  # "service:onnxruntime", "naive", "litserve", ...
    name: str  # servers.command name
    backend: str
    out_dir: Path
    extra: list[str]
    cwd: Path | None = None  # another checkout to run it from


@dataclass
class InProcess:
    """A backend kept loaded in this process so that (b) can run interleaved with (c)."""

    name: str
    selection: object  # service.backends.Selection
    settings: object  # service.settings.Settings
    images: list[bytes]


def load_in_process(name: str, args, images: list[bytes]) -> InProcess | None:
    from service.backends import select_backend
    from service.errors import BackendUnavailable
    from service.settings import Settings

    settings = Settings(onnx=args.onnx, backend=name, device=args.device)
    try:
        selection = select_backend(settings)
    except BackendUnavailable:
        return None
    selection.backend.warmup(selection.metadata.input_size)
    return InProcess(name, selection, settings, images)


def http_sweeps(
    targets: list[Target], args, payloads, pipelines: list[InProcess] = ()
) -> tuple[dict[str, dict], dict | None, bool]:
    """Start every server, then run the concurrency sweep *interleaved*: at each concurrency, one step
    on each server in turn (the order rotating from step to step). On a shared or throttled host, load
    from elsewhere then falls on all servers alike instead of on whichever ran during a busy minute.
    Idle servers cost memory, not CPU. Returns ({key: {"url", "steps"} or {"skipped"}}, client ceiling,
    interrupted): on Ctrl-C (or SIGTERM, which ``main`` turns into one) the steps that finished are kept.
    """
    out: dict[str, dict] = {}
    started: dict[str, servers.Started] = {}
    for t in targets:
        say(f"starting {t.key} ({t.backend}, {args.device})")
        try:
            started[t.key] = servers.start(
                t.name, t.out_dir / "logs", args.onnx, t.backend, args.device, t.extra, cwd=t.cwd
            )
        except Exception as exc:  # a peer that will not start is reported, not fatal
            say(f"{t.key} failed to start: {exc}")
            out[t.key] = {"skipped": f"failed to start: {str(exc)[:500]}"}
    live = [t for t in targets if t.key in started] + [
        Target(f"pipeline:{p.name}", "pipeline", p.name, Path(), []) for p in pipelines
    ]
    by_key = {f"pipeline:{p.name}": p for p in pipelines}
    results: dict[str, list] = {t.key: [] for t in live}
    open_loop: dict[str, StepResult] = {}
    open_peak: dict[str, float] = {}  # the closed-loop peak req/s each open loop's rate came from
    ceiling = None

    async def go():
        nonlocal ceiling
        first = next((t for t in live if t.name == "service"), None)
        if first is not None:
            c = max(args.concurrency)
            ceiling = await healthz_ceiling(started[first.key].url, c, min(3.0, args.duration_s), 0.5, procs=args.procs)
            say(f"client ceiling: GET /healthz at c={c}: {ceiling['req_per_s']:.0f} req/s ({ceiling['split']})")
        stopped: set[str] = set()
        for i, c in enumerate(args.concurrency):
            order = live[i % len(live) :] + live[: i % len(live)] if live else []
            for t in order:
                if t.key in stopped:
                    continue
                if t.name == "pipeline":  # (b) at the same concurrency, in this process, no HTTP
                    p = by_key[t.key]
                    r = await run_pipeline(
                        p.selection.backend,
                        p.selection.metadata,
                        p.settings,
                        p.images,
                        c,
                        args.duration_s,
                        args.warmup_s,
                    )
                    results[t.key].append(r)
                    say(
                        f"    {t.key} c={c}: {r['img_per_s']:.1f} img/s, p50 {r['latency_ms']['p50']:.1f} ms, "
                        f"p99 {r['latency_ms']['p99']:.1f} ms (in-process, no HTTP)"
                    )
                    continue
                config = StepConfig(
                    "closed", concurrency=c, duration_s=args.duration_s, warmup_s=args.warmup_s, max_error_rate=0.5
                )
                bar = ProgressBar(1)
                bar.next_step()
                (r,) = await run_sweep(
                    started[t.key].url, args.kind, payloads, [config], args.procs, max_error_rate=0.5, progress=bar
                )
                bar.done()
                results[t.key].append(r)
                row = report.row(r)
                say(
                    f"    {t.key} c={c}: {row['img_per_s']} img/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
                    f"{row['errors']} errors, client CPU {row['client_cpu_pct']}%"
                )
                if r.stopped:
                    stopped.add(t.key)
        if args.open_at > 0:
            for t in (t for t in live if t.name != "pipeline"):
                peak = max((r.rps for r in results[t.key] if r.counted), default=0.0)
                rate = round(args.open_at * peak, 1)
                if t.key in stopped or rate < 0.1:
                    say(f"    {t.key}: no open loop (peak {peak:.2f} req/s{', stopped' if t.key in stopped else ''})")
                    continue
                open_peak[t.key] = peak
                config = StepConfig(
                    "open",
                    rate=rate,
                    arrival="poisson",
                    duration_s=args.duration_s,
                    warmup_s=args.warmup_s,
                    max_error_rate=0.5,
                )
                (r,) = await run_sweep(
                    started[t.key].url, args.kind, payloads, [config], args.procs, max_error_rate=0.5
                )
                open_loop[t.key] = r
                row = report.row(r)
                say(
                    f"    {t.key} open loop at {args.open_at:g} x {peak:.1f} req/s: {row['img_per_s']} img/s, "
                    f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, {row['errors']} errors"
                )

    interrupted = False
    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: keeping the steps that finished")
    finally:
        for server in started.values():
            server.stop()
    for t in live:
        if t.name == "pipeline":
            out[t.key] = {"steps": results[t.key]}
            continue
        tail = [open_loop[t.key]] if t.key in open_loop else []
        write_outputs(
            t.out_dir / t.name,
            {"server": t.key, "backend": t.backend, "device": args.device},
            results[t.key] + tail,
            title=f"{t.key} ({t.backend}, {args.device})",
        )
        out[t.key] = {"url": started[t.key].url, "steps": [report.row(r) for r in results[t.key]]}
        if tail:
            out[t.key]["open_loop"] = {**report.row(tail[0]), "peak_req_per_s": round(open_peak[t.key], 3)}
    return out, ceiling, interrupted


def _best(steps: list[dict], lo: int = 16, hi: int = 32) -> dict | None:
    """The step with the most img/s among concurrency lo..hi (any step when none is in range)."""
    ok = [s for s in steps if s["requests"]]
    in_range = [s for s in ok if lo <= (s["concurrency"] or 0) <= hi] or ok
    return max(in_range, key=lambda s: s["img_per_s"], default=None)


def _at(steps: list[dict], c: int) -> dict | None:
    return next((s for s in steps if s["concurrency"] == c and s["requests"]), None)


def _medians(steps: list[dict]) -> dict[int, tuple[float, float]]:
    """{concurrency: (median img/s, median p50 ms)} over the steps run at it (--concurrency 1,16,1,16
    repeats each level in rounds: on a noisy host the medians compare better than any one step)."""
    by_c: dict[int, list[dict]] = {}
    for s in steps:
        if s["requests"]:
            by_c.setdefault(s["concurrency"], []).append(s)
    return {
        c: (statistics.median(s["img_per_s"] for s in group), statistics.median(s["p50_ms"] for s in group))
        for c, group in by_c.items()
    }


def open_loop_lines(what: str, entry: dict, md: list[str]) -> list[str]:
    """One server's open-loop step (``--open-at``), when it ran: a table row into ``md``, and a line."""
    o = entry.get("open_loop")
    if not o:
        return []
    where = f"open loop at {o['rate']:g} req/s (Poisson)"
    md.append(
        f"| {what}, {where} | {o['img_per_s']:.1f} | {o['p50_ms']:.1f} | {o['p99_ms']:.1f} | {o['errors']} errors |"
    )
    return [f"  {what}, {where}: p50 {o['p50_ms']:.1f} ms, p99 {o['p99_ms']:.1f} ms, {o['errors']} errors"]


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
                f"| (e) layout {label}, c={s['concurrency']} | {s['img_per_s']:.1f} | {s['p50_ms']:.1f} | "
                f"{s['p99_ms']:.1f} | mean batch {s['server_batch_size_mean'] or 0:.1f}, {s['errors']} errors |"
            )
        if label in measured:
            lines += open_loop_lines(f"(e) layout {label}", entry, md)
        if label == base_label:
            continue
        parts = []
        for c, (img_s, p50) in _medians(entry["steps"]).items():
            b = base_medians.get(c)
            if b and b[0] and b[1]:
                parts.append(f"c={c}: img/s x{img_s / b[0]:.2f}, p50 x{p50 / b[1]:.2f}")
        lines.append(f"{'layout ' if label in measured else ''}{label} vs {base_label}: " + "; ".join(parts))
    return lines


def summarize(result: dict) -> tuple[list[str], list[str]]:
    """(ratio lines for the terminal, Markdown table lines) of one bench result."""
    lines, md = [], ["| measurement | img/s | p50 ms | p99 ms | note |", "|---|---:|---:|---:|---|"]
    naive = result.get("naive", {})
    for name, b in result["backends"].items():
        if "skipped" in b:
            lines.append(f"{name}: skipped ({b['skipped']})")
            md.append(f"| {name} | - | - | - | skipped: {b['skipped'][:80]} |")
            continue
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
            lines.append(f"{name}: service not measured ({service.get('skipped', 'no step finished')})")
            continue
        for s in service["steps"]:
            md.append(
                f"| (c) service {name}, c={s['concurrency']} | {s['img_per_s']:.1f} | {s['p50_ms']:.1f} | "
                f"{s['p99_ms']:.1f} | mean batch {s['server_batch_size_mean'] or 0:.1f}, {s['errors']} errors |"
            )
        best = _best(service["steps"])
        c1 = _at(service["steps"], 1)
        lines.append(
            f"{name}: service best at c={best['concurrency']}: {best['img_per_s']:.1f} img/s, "
            f"p50 {best['p50_ms']:.1f} ms, p99 {best['p99_ms']:.1f} ms"
        )
        lines += open_loop_lines(f"(c) service {name}", service, md)
        # Upper bounds, each as if it had the host to itself: which one the service sits under names the limit.
        cores = result["host"]["cpu_count"] or 1
        lines.append(
            f"  bounds: decode <= {cores * 1000 / b['preprocess_ms']:.0f} img/s ({cores} cores x 1 image per "
            f"{b['preprocess_ms']:.1f} ms), engine <= {engine_peak['img_per_s']:.0f} img/s, "
            f"client <= {(result.get('client_ceiling') or {}).get('req_per_s', float('nan')):.0f} req/s"
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
        inter = {p["concurrency"]: p for p in b.get("pipeline_interleaved", [])}
        same_c = inter.get(best["concurrency"])
        if same_c:  # measured within a minute of (c), at the same concurrency: the ratio to trust
            for p in inter.values():
                md.append(
                    f"| (b) pipeline {name}, {p['concurrency']} callers, interleaved with (c) | "
                    f"{p['img_per_s']:.1f} | {p['latency_ms']['p50']:.1f} | {p['latency_ms']['p99']:.1f} | "
                    f"mean batch {p['batch_size_mean'] or 0:.1f} |"
                )
            lines.append(f"  (c)/(b) {ratio:.2f} against the standalone (b), measured minutes earlier")
            ratio = best["img_per_s"] / same_c["img_per_s"]
            pipe_peak = same_c
            if 1 in inter:
                pipe_c1 = inter[1]
        ok = "MET" if ratio >= TARGETS["vs_pipeline"] else "MISSED"
        lines.append(
            f"  (c)/(b) {ratio:.2f}  target >= {TARGETS['vs_pipeline']}: {ok}  "
            f"(pipeline {pipe_peak['img_per_s']:.1f} img/s at {pipe_peak['concurrency']} callers"
            f"{', interleaved with (c)' if same_c else ''})"
        )
        if nbest := _best(naive.get("steps", [])):
            ratio = best["img_per_s"] / nbest["img_per_s"] if nbest["img_per_s"] else math.inf
            ok = "MET" if ratio >= TARGETS["vs_naive"] else "MISSED"
            lines.append(
                f"  (c)/(d) {ratio:.2f}  target >= {TARGETS['vs_naive']}: {ok}  "
                f"(naive best {nbest['img_per_s']:.1f} img/s at c={nbest['concurrency']}, p99 {nbest['p99_ms']:.1f} ms)"
            )
        if c1:
            ratio = c1["p50_ms"] / pipe_c1["latency_ms"]["p50"]
            ok = "MET" if ratio <= TARGETS["c1_p50_over_pipeline"] else "MISSED"
            where = (
                "in-process, interleaved"
                if "pipeline_interleaved" in b and pipe_c1 in b["pipeline_interleaved"]
                else "in-process"
            )
            lines.append(
                f"  c=1 p50 {c1['p50_ms']:.1f} ms vs {where} {pipe_c1['latency_ms']['p50']:.1f} ms: "
                f"x{ratio:.2f}, target <= {TARGETS['c1_p50_over_pipeline']}: {ok}"
            )
    for label in ["naive", *result.get("peers", {})]:
        entry = naive if label == "naive" else result["peers"][label]
        if not _best(entry.get("steps", [])):
            if label != "naive" or entry:
                md.append(f"| {label} | - | - | - | {entry.get('skipped', 'no step finished')[:100]} |")
            continue
        tag = "(d) naive" if label == "naive" else f"peer {label}"
        for s in entry["steps"]:
            md.append(
                f"| {tag}, c={s['concurrency']} | {s['img_per_s']:.1f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
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
    first = next((b for b in result["backends"].values() if "skipped" not in b), {})
    lines += layout_lines(result.get("layouts", {}), md, first.get("service"))
    ceiling = result.get("client_ceiling")
    if ceiling:
        md.append(
            f"| client ceiling, GET /healthz c={ceiling['concurrency']} | {ceiling['req_per_s']:.0f} req/s | "
            f"{ceiling['p50_ms']:.1f} | - | the load generator's own limit |"
        )
    return lines, md


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    # A timeout's SIGTERM (gpu_check.sh) as a Ctrl-C: the HTTP steps that finished are still written.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    reuse_freed_memory()  # the service's processes do: (b) gets the same allocator, not a handicap
    backends = [b for b in args.backends.split(",") if b]
    if args.gpu:
        args.device, backends, args.no_naive, args.peers = "cuda", list(GPU_BACKENDS), True, ""
        if args.concurrency == DEFAULT_CONCURRENCY:  # a GPU saturates far beyond 32 clients
            args.concurrency = list(GPU_CONCURRENCY)
    if args.device == "cuda":
        from service.backends import cuda_available

        if not cuda_available():
            print("no CUDA GPU is visible to PyTorch; run without --gpu / --device cuda on this host", file=sys.stderr)
            return 2
    out = args.out or Path("results") / time.strftime("bench-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    ensure_onnx(args.onnx)
    images = [im.data for im in build_corpus(args.images)]
    payloads = build_payloads(args.kind, args.images)
    result: dict = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": host_description(),
        "device": args.device,
        "device_name": device_name(args.device),
        "args": vars(args),
        "backends": {},
        "peers": {},
    }
    targets = []
    for name in backends:
        b = measure_in_process(name, args, images)
        result["backends"][name] = b
        if "skipped" in b:
            say(f"{name}: skipped: {b['skipped']}")
            continue
        targets.append(Target(f"service:{name}", "service", name, out / name, list(args.service_flag)))
    first = next((t.backend for t in targets), backends[0])
    for text in args.layout:
        label, flags, checkout = parse_layout(text)
        targets.append(
            Target(f"layout:{label}", "service", first, out / f"layout-{label.replace(' ', '-')}", flags, checkout)
        )
    if not args.no_naive:
        targets.append(Target("naive", "naive", first, out, []))
    for peer in [p for p in args.peers.split(",") if p]:
        targets.append(Target(peer, peer, first, out, []))
    pipelines = [  # (b) once per backend, not again for each layout of the same backend
        p
        for t in targets
        if t.key.startswith("service:")
        if (p := load_in_process(t.backend, args, images)) is not None
    ]
    try:
        http, result["client_ceiling"], interrupted = http_sweeps(targets, args, payloads, pipelines)
    finally:
        for p in pipelines:
            p.selection.backend.close()
    for p in pipelines:
        result["backends"][p.name]["pipeline_interleaved"] = http[f"pipeline:{p.name}"]["steps"]
    for name, b in result["backends"].items():
        if "skipped" not in b:
            b["service"] = http.get(f"service:{name}", {"skipped": "not run"})
    if not args.no_naive:
        result["naive"] = http.get("naive", {"skipped": "not run"})
    for peer in [p for p in args.peers.split(",") if p]:
        result["peers"][peer] = http.get(peer, {"skipped": "not run"})
    result["layouts"] = {key.removeprefix("layout:"): value for key, value in http.items() if key.startswith("layout:")}
    if interrupted:
        result["interrupted"] = "stopped by a signal during the HTTP part: only the steps that finished are here"
    elif targets and targets[0].name == "service":  # the engine again: how much the host drifted meanwhile
        b = result["backends"][targets[0].backend]
        biggest = max(e["batch"] for e in b["engine"])
        b["engine_after"] = engine_after(targets[0].backend, args, biggest)
    lines, md = summarize(result)
    header = (
        f"Machine: {result['device_name']} ({result['host']['platform']}); images {args.images}, "
        f"kind {args.kind}, {args.duration_s:g} s per step"
    )
    (out / "bench.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "bench.md").write_text(header + "\n\n" + "\n".join(md) + "\n\n" + "\n".join(lines) + "\n")
    print(header)
    print("\n".join(lines))
    print()
    print("\n".join(md))
    print(f"\nwrote {out / 'bench.json'}, {out / 'bench.md'} and per-server reports under {out}")
    if interrupted:
        print(f"error: {result['interrupted']}", file=sys.stderr)
        return 130
    unmeasured = unmeasured_backends(result)
    if unmeasured:
        print(f"error: not measured through HTTP: {unmeasured}", file=sys.stderr)
        return 1
    return 0


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


if __name__ == "__main__":
    raise SystemExit(main())
