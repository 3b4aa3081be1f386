"""The benchmark: the service against its own ceilings and a naive baseline, in one run.

    python -m loadtest.bench                               # CPU: (a) (b) (c) (d), ~4 minutes on 2 cores
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
import signal
import sys
import time
from pathlib import Path

from loadtest import report
from loadtest.__main__ import build_payloads, host_description
from loadtest.bench_http import Target, http_sweeps, load_in_process
from loadtest.bench_summary import summarize, unmeasured_backends
from loadtest.ceilings import engine_ceiling, load_backend, pipeline_ceiling, preprocess_time_ms
from loadtest.corpus import build_corpus
from loadtest.progress import say
from model.arg_types import comma_separated, non_negative_float, positive_float, positive_int
from model.atomic_write import write_text_atomic
from model.help_format import DefaultsRawDescriptionHelpFormatter
from service.process import reuse_freed_memory

GPU_BACKENDS = ("torch", "onnxruntime", "tensorrt")
DEFAULT_CONCURRENCY = [1, 4, 16, 32]
GPU_CONCURRENCY = (1, 16, 32, 64, 128)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.bench", description=__doc__, formatter_class=DefaultsRawDescriptionHelpFormatter
    )
    p.add_argument(
        "--onnx",
        # Absolute: a --layout from another checkout runs its server in that checkout's folder.
        type=lambda text: Path(text).resolve(),
        default="artifacts/alexnet.onnx",
        help="ONNX model (exported, untrained, when missing)",
    )
    p.add_argument("--backends", default="onnxruntime", help="backends to measure, comma-separated")
    p.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="where (a), (b) and the servers run inference"
    )
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
        type=comma_separated(positive_int),
        default=DEFAULT_CONCURRENCY,
        help=f"(c) (d) sweep (--gpu: {','.join(map(str, GPU_CONCURRENCY))})",
    )
    p.add_argument("--duration-s", type=positive_float, default=8.0, help="measured seconds per step of (b) (c) (d)")
    p.add_argument("--warmup-s", type=non_negative_float, default=2.0, help="unmeasured seconds before each step")
    p.add_argument("--engine-batches", type=comma_separated(positive_int), default=[1, 8, 32], help="(a) batch sizes")
    p.add_argument("--engine-time-s", type=positive_float, default=3.0, help="(a) seconds per batch size")
    p.add_argument("--no-naive", action="store_true", help="skip (d)")
    p.add_argument(
        "--open-at",
        type=non_negative_float,
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
        type=parse_layout,
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
    """'LABEL:FLAGS' -> (label, service flags, checkout or None); a usage error names what is wrong."""
    label, sep, rest = text.partition(":")
    if not sep or not label.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL:FLAGS, e.g. '2 http:--http-workers=2'")
    flags, checkout = [], None
    for word in rest.split():
        if word.startswith("checkout="):
            checkout = Path(word.removeprefix("checkout=")).resolve()
            if not (checkout / "service" / "__main__.py").is_file():
                raise argparse.ArgumentTypeError(f"{label}: {checkout} is not a checkout of this repository")
        else:
            flags.append(word)
    return label.strip(), flags, checkout


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
    from service.errors import BackendUnavailable

    try:
        selection, settings = load_backend(backend_name, args.onnx, args.device)
    except BackendUnavailable as exc:
        return {"skipped": str(exc)}
    backend, meta = selection.backend, selection.metadata
    out = {"backend": backend.describe()}
    try:
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
    selection, _ = load_backend(backend_name, args.onnx, args.device)
    try:
        (e,) = engine_ceiling(selection.backend, selection.metadata.input_size, [batch], args.engine_time_s)
    finally:
        selection.backend.close()
    say(f"(a) engine again after the HTTP part, batch {batch}: {e['img_per_s']:.1f} img/s")
    return e


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    # A timeout's SIGTERM (gpu_check.sh) as a Ctrl-C; during the HTTP part it cancels the sweep
    # instead (bench_http), and the steps that finished are still written.
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
    for label, flags, checkout in args.layout:
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
    write_text_atomic(out / "bench.json", report.dumps(result))  # strict JSON: a NaN (no ok answer) is null
    write_text_atomic(out / "bench.md", header + "\n\n" + "\n".join(md) + "\n\n" + "\n".join(lines) + "\n")
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


if __name__ == "__main__":
    raise SystemExit(main())
