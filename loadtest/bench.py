"""The benchmark: the service against its own ceilings and a naive baseline, in one run.

    python -m loadtest.bench                               # CPU: (a) (b) (c) (d), ~3 minutes
    python -m loadtest.bench --peers litserve,mosec        # + the peer frameworks (pip install -e '.[bench]')
    python -m loadtest.bench --gpu --out results/gpu-h100  # CUDA host: (a) (b) (c) per GPU backend

(a) engine ceiling: the backend alone on preprocessed batches, img/s per batch size
(b) pipeline ceiling: decode + preprocess + batch + infer in this process, no HTTP
(c) the service through HTTP (``python -m service`` started here on 127.0.0.1), a concurrency sweep
(d) the naive baseline (``loadtest/naive_server.py``): FastAPI, one backend call per request

Prints the ratios (c)/(a), (c)/(b), (c)/(d) against the targets, and a Markdown table for the README;
writes bench.json, bench.md and each sweep's report/CSV/plots under --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from pathlib import Path

from loadtest import report, servers
from loadtest.__main__ import build_payloads, host_description, write_outputs
from loadtest.ceilings import engine_ceiling, pipeline_ceiling, preprocess_time_ms
from loadtest.corpus import build_corpus
from loadtest.progress import ProgressBar
from loadtest.runner import LoadClient, StepConfig, sweep

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
    p.add_argument("--onnx", type=Path, default=Path("artifacts/alexnet.onnx"),
                   help="ONNX model (exported, untrained, when missing)")
    p.add_argument("--backends", default="onnxruntime", help="backends to measure, comma-separated")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--gpu", action="store_true",
                   help=f"CUDA host preset: --device cuda --backends {','.join(GPU_BACKENDS)} (those that load), "
                        "a sweep to 128 clients, no naive baseline, no peers")
    p.add_argument("--kind", default="multipart", choices=["multipart", "raw"], help="request kind for (c) (d) peers")
    p.add_argument("--images", default="photos,500x375", help="corpus (see python -m loadtest --help)")
    p.add_argument("--concurrency", type=_ints, default=DEFAULT_CONCURRENCY,
                   help=f"(c) (d) sweep (--gpu: {','.join(map(str, GPU_CONCURRENCY))})")
    p.add_argument("--duration-s", type=float, default=8.0, help="measured seconds per step of (b) (c) (d)")
    p.add_argument("--warmup-s", type=float, default=2.0, help="unmeasured seconds before each step")
    p.add_argument("--engine-batches", type=_ints, default=[1, 8, 32], help="(a) batch sizes")
    p.add_argument("--engine-time-s", type=float, default=3.0, help="(a) seconds per batch size")
    p.add_argument("--no-naive", action="store_true", help="skip (d)")
    p.add_argument("--peers", default="", help="peer frameworks to run as well: litserve,mosec")
    p.add_argument("--service-flag", action="append", default=[],
                   help="extra flag for python -m service (repeat), e.g. --service-flag=--max-delay-ms=4")
    p.add_argument("--out", type=Path, default=None, help="output folder (default results/bench-TIMESTAMP)")
    return p


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
    import platform

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPU cores"


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
            say(f"    {r['img_per_s']:.1f} img/s, p50 {r['latency_ms']['p50']:.1f} ms, batch {r['batch_size_mean'] or 0:.1f}")
            out["pipeline"].append(r)
    finally:
        backend.close()
    return out


def http_sweep(name: str, args, payloads, out_dir: Path, extra: list[str] = (), backend: str = "onnxruntime",
               ceiling: bool = False) -> dict:
    """Start a server, (optionally) measure the client's ceiling on /healthz, run the sweep, stop it."""
    say(f"starting {name} ({backend}, {args.device})")
    try:
        server = servers.start(name, out_dir / "logs", args.onnx, backend, args.device, extra)
    except Exception as exc:  # a peer that will not start is reported, not fatal
        say(f"{name} failed to start: {exc}")
        return {"skipped": f"failed to start: {str(exc)[:500]}"}
    configs = [StepConfig("closed", concurrency=c, duration_s=args.duration_s, warmup_s=args.warmup_s,
                          max_error_rate=0.5) for c in args.concurrency]
    out: dict = {"url": server.url}

    async def go():
        if ceiling:
            async with LoadClient(server.url, "healthz") as client:
                c = max(args.concurrency)
                r = (await sweep(client, build_payloads("healthz"), [StepConfig(
                    "closed", concurrency=c, duration_s=min(3.0, args.duration_s), warmup_s=0.5)]))[0]
                out["client_ceiling"] = {"concurrency": c, "req_per_s": r.rps,
                                         "p50_ms": r.latency.percentile_ms(50)}
                say(f"client ceiling: GET /healthz at c={c}: {r.rps:.0f} req/s")
        bar = ProgressBar(len(configs))
        bar.next_step()

        def on_step(result):
            bar.done()
            bar.next_step()
            r = report.row(result)
            say(f"    {name} {r['step']}: {r['img_per_s']} img/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
                f"{r['errors']} errors")

        async with LoadClient(server.url, args.kind) as client:
            return await sweep(client, payloads, configs, 0.5, None, bar, on_step)

    try:
        results = asyncio.run(go())
    finally:
        server.stop()
    write_outputs(out_dir / name, {"server": name, "backend": backend, "device": args.device}, results,
                  title=f"{name} ({backend}, {args.device})")
    out["steps"] = [report.row(r) for r in results]
    return out


def _best(steps: list[dict], lo: int = 16, hi: int = 32) -> dict | None:
    """The step with the most img/s among concurrency lo..hi (any step when none is in range)."""
    ok = [s for s in steps if s["requests"]]
    in_range = [s for s in ok if lo <= (s["concurrency"] or 0) <= hi] or ok
    return max(in_range, key=lambda s: s["img_per_s"], default=None)


def _at(steps: list[dict], c: int) -> dict | None:
    return next((s for s in steps if s["concurrency"] == c and s["requests"]), None)


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
            md.append(f"| (a) engine {name}, batch {e['batch']} | {e['img_per_s']:.1f} | "
                      f"{e['ms_per_batch']:.1f} | - | ms per batch |")
        md.append(f"| preprocess one image (1 thread) | - | {b['preprocess_ms']:.1f} | - | decode+resize+normalize |")
        for p in b["pipeline"]:
            md.append(f"| (b) pipeline {name}, {p['concurrency']} in-process callers | {p['img_per_s']:.1f} | "
                      f"{p['latency_ms']['p50']:.1f} | {p['latency_ms']['p99']:.1f} | "
                      f"mean batch {p['batch_size_mean'] or 0:.1f} |")
        service = b.get("service", {})
        if "steps" not in service:
            lines.append(f"{name}: service not measured ({service.get('skipped')})")
            continue
        for s in service["steps"]:
            md.append(f"| (c) service {name}, c={s['concurrency']} | {s['img_per_s']:.1f} | {s['p50_ms']:.1f} | "
                      f"{s['p99_ms']:.1f} | mean batch {s['server_batch_size_mean'] or 0:.1f}, {s['errors']} errors |")
        best = _best(service["steps"])
        c1 = _at(service["steps"], 1)
        lines.append(f"{name}: service best at c={best['concurrency']}: {best['img_per_s']:.1f} img/s, "
                     f"p50 {best['p50_ms']:.1f} ms, p99 {best['p99_ms']:.1f} ms")
        # Upper bounds, each as if it had the host to itself: which one the service sits under names the limit.
        cores = result["host"]["cpu_count"] or 1
        lines.append(f"  bounds: decode <= {cores * 1000 / b['preprocess_ms']:.0f} img/s ({cores} cores x 1 image per "
                     f"{b['preprocess_ms']:.1f} ms), engine <= {engine_peak['img_per_s']:.0f} img/s, "
                     f"client <= {result.get('client_ceiling', {}).get('req_per_s', float('nan')):.0f} req/s")
        ratio = best["img_per_s"] / engine_peak["img_per_s"]
        lines.append(f"  (c)/(a) {ratio:.2f}  (engine at batch {engine_peak['batch']}: {engine_peak['img_per_s']:.1f} img/s)")
        ratio = best["img_per_s"] / pipe_peak["img_per_s"]
        ok = "MET" if ratio >= TARGETS["vs_pipeline"] else "MISSED"
        lines.append(f"  (c)/(b) {ratio:.2f}  target >= {TARGETS['vs_pipeline']}: {ok}  "
                     f"(pipeline {pipe_peak['img_per_s']:.1f} img/s at {pipe_peak['concurrency']} callers)")
        if "steps" in naive:
            nbest = _best(naive["steps"])
            ratio = best["img_per_s"] / nbest["img_per_s"] if nbest["img_per_s"] else math.inf
            ok = "MET" if ratio >= TARGETS["vs_naive"] else "MISSED"
            lines.append(f"  (c)/(d) {ratio:.2f}  target >= {TARGETS['vs_naive']}: {ok}  "
                         f"(naive best {nbest['img_per_s']:.1f} img/s at c={nbest['concurrency']}, p99 {nbest['p99_ms']:.1f} ms)")
        if c1:
            ratio = c1["p50_ms"] / pipe_c1["latency_ms"]["p50"]
            ok = "MET" if ratio <= TARGETS["c1_p50_over_pipeline"] else "MISSED"
            lines.append(f"  c=1 p50 {c1['p50_ms']:.1f} ms vs in-process {pipe_c1['latency_ms']['p50']:.1f} ms: "
                         f"x{ratio:.2f}, target <= {TARGETS['c1_p50_over_pipeline']}: {ok}")
    for label in ["naive", *result.get("peers", {})]:
        entry = naive if label == "naive" else result["peers"][label]
        if "steps" not in entry:
            if label != "naive" or entry:
                md.append(f"| {label} | - | - | - | {entry.get('skipped', 'not run')[:100]} |")
            continue
        tag = "(d) naive" if label == "naive" else f"peer {label}"
        for s in entry["steps"]:
            md.append(f"| {tag}, c={s['concurrency']} | {s['img_per_s']:.1f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
                      f"{s['errors']} errors |")
        pbest = _best(entry["steps"])
        lines.append(f"{label}: best {pbest['img_per_s']:.1f} img/s at c={pbest['concurrency']}, "
                     f"p99 {pbest['p99_ms']:.1f} ms")
        if label != "naive":
            for name, b in result["backends"].items():
                best = _best(b.get("service", {}).get("steps", []))
                if best and pbest["img_per_s"]:
                    ahead = "ahead" if best["img_per_s"] > pbest["img_per_s"] else "BEHIND"
                    lines.append(f"  (c) {name} / {label}: {best['img_per_s'] / pbest['img_per_s']:.2f} ({ahead})")
    ceiling = result.get("client_ceiling")
    if ceiling:
        md.append(f"| client ceiling, GET /healthz c={ceiling['concurrency']} | {ceiling['req_per_s']:.0f} req/s | "
                  f"{ceiling['p50_ms']:.1f} | - | the load generator's own limit |")
    return lines, md


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
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
    result: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": host_description(),
                    "device": args.device, "device_name": device_name(args.device), "args": vars(args),
                    "backends": {}, "peers": {}}
    for name in backends:
        b = measure_in_process(name, args, images)
        result["backends"][name] = b
        if "skipped" in b:
            say(f"{name}: skipped: {b['skipped']}")
            continue
        b["service"] = http_sweep("service", args, payloads, out / name, args.service_flag, name,
                                  ceiling="client_ceiling" not in result)
        if "client_ceiling" in b["service"]:
            result["client_ceiling"] = b["service"].pop("client_ceiling")
    if not args.no_naive:
        result["naive"] = http_sweep("naive", args, payloads, out, backend=backends[0])
    for peer in [p for p in args.peers.split(",") if p]:
        result["peers"][peer] = http_sweep(peer, args, payloads, out, backend=backends[0])
    lines, md = summarize(result)
    header = (f"Machine: {result['device_name']} ({result['host']['platform']}); images {args.images}, "
              f"kind {args.kind}, {args.duration_s:g} s per step")
    (out / "bench.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "bench.md").write_text(header + "\n\n" + "\n".join(md) + "\n\n" + "\n".join(lines) + "\n")
    print(header)
    print("\n".join(lines))
    print()
    print("\n".join(md))
    print(f"\nwrote {out / 'bench.json'}, {out / 'bench.md'} and per-server reports under {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
