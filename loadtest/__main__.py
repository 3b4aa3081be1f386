"""Load-test a running instance: ``python -m loadtest --url http://127.0.0.1:8000 [flags]``.

    # closed loop: a concurrency sweep, 10 s per step after 2 s of warm-up
    python -m loadtest --url http://127.0.0.1:8000 --concurrency 1,4,16,32 --duration-s 10
    # open loop: Poisson arrivals at 20 and 40 requests/s (latency from the scheduled send time)
    python -m loadtest --mode open --rate 20,40 --arrival poisson --duration-s 15
    # several images per request, phone-sized photos (4 x ~3.2 MB; 8 would exceed the service's default
    # 20 MiB --max-body-bytes and get 413), raw body / OIP v2 kinds
    python -m loadtest --kind multipart --images-per-request 4 --images 4032x3024
    python -m loadtest --kind oip-binary
    # the client's own ceiling, against a trivial endpoint; --procs spreads the clients over processes
    python -m loadtest --kind healthz --concurrency 32
    python -m loadtest --kind healthz --concurrency 64 --procs auto

--procs N runs every step in N load processes that open one shared measured window and whose results
are merged exactly (HDR histograms by their counts); the output states how each step was split. Measured
on /healthz of a trivial server (python -m loadtest.client_ceiling), 2-core AMD EPYC: see docs/loadtest.md.

Writes report.json, steps.csv, latency_vs_throughput.png and latency_cdf.png into --out.

With ``ALEXNET_API_KEY`` set (as for the service), every request carries ``Authorization: Bearer <key>``;
the key is read from the environment only, never from a flag (a flag shows in ``ps``).

Exit status: 0 when every step ran within the limits (a sweep ended by --max-p99-ms included); 1 when a
step had more errors than --max-error-rate (which also stops the sweep), or no ok answer at all; 2 for
invalid arguments (an --out that cannot be written included); 130 on Ctrl-C or SIGTERM, having written
the steps that finished.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from loadtest import plots, report
from loadtest.auth import API_KEY_ENV, api_key_from_env, auth_headers
from loadtest.corpus import build_corpus, parse_spec
from loadtest.multiproc import procs_arg, run_sweep
from loadtest.payloads import KINDS, Payload, build_payload
from loadtest.progress import ProgressBar
from loadtest.sigterm import sigterm_cancels_this_task
from loadtest.step import ARRIVALS, MODES, StepConfig, StepResult
from model.arg_types import comma_separated, non_negative_float, positive_float, positive_int
from model.atomic_write import OutputPathError, check_output_folder
from model.help_format import DefaultsRawDescriptionHelpFormatter

if TYPE_CHECKING:
    from service.preprocess import PreprocessConfig


def _base_url(text: str) -> str:
    """An http(s) base URL with a host, e.g. http://127.0.0.1:8000 (no trailing slash)."""
    url = text.strip()
    parts = urllib.parse.urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        hint = f" (with its scheme: http://{url})" if "://" not in url else ""
        raise argparse.ArgumentTypeError(f"expected a base URL such as http://127.0.0.1:8000, got {text!r}{hint}")
    if parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(f"expected a base URL without ?query or #fragment, got {text!r}")
    return url.rstrip("/")


def _image_spec(text: str) -> str:
    try:
        parse_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest", description=__doc__, formatter_class=DefaultsRawDescriptionHelpFormatter
    )
    p.add_argument(
        "--url",
        type=_base_url,
        default="http://127.0.0.1:8000",
        help=f"server base URL, with http:// or https://; an API key comes from ${API_KEY_ENV}, not a flag",
    )
    p.add_argument("--kind", choices=KINDS, default="multipart", help="request kind (see loadtest/payloads.py)")
    p.add_argument("--images-per-request", type=positive_int, default=1, help="images in each request")
    p.add_argument(
        "--images",
        type=_image_spec,
        default="photos,500x375",
        help="corpus: 'photos' (shipped) and/or generated WIDTHxHEIGHT sizes, comma-separated",
    )
    p.add_argument("--generated-per-size", type=positive_int, default=4, help="generated images per size")
    p.add_argument("--mode", choices=MODES, default="closed", help="closed loop (clients) or open loop (rate)")
    p.add_argument(
        "--concurrency",
        type=comma_separated(positive_int),
        default=[1, 2, 4, 8, 16, 32],
        help="closed loop: concurrent clients per step, comma-separated",
    )
    p.add_argument(
        "--rate",
        type=comma_separated(positive_float),
        default=[10.0],
        help="open loop: requests/s per step, comma-separated",
    )
    p.add_argument("--arrival", choices=ARRIVALS, default="constant", help="open loop: inter-arrival times")
    p.add_argument("--duration-s", type=positive_float, default=10.0, help="measured seconds per step")
    p.add_argument(
        "--requests",
        type=positive_int,
        default=None,
        help="closed loop: measured requests per step instead of --duration-s",
    )
    p.add_argument("--warmup-s", type=non_negative_float, default=2.0, help="unmeasured seconds before each step")
    p.add_argument("--timeout-s", type=positive_float, default=30.0, help="per-request client timeout")
    p.add_argument("--max-in-flight", type=positive_int, default=2048, help="open loop: most requests outstanding")
    p.add_argument(
        "--max-error-rate",
        type=float,
        default=0.05,
        help="stop the sweep (and exit 1) after a step with more errors than this fraction",
    )
    p.add_argument("--max-p99-ms", type=float, default=None, help="stop the sweep after a step with a slower p99")
    p.add_argument("--model", default="alexnet", help="model name in OIP v2 paths")
    p.add_argument("--top-k", type=positive_int, default=5, help="top_k asked of /classify")
    p.add_argument("--no-validate", action="store_true", help="do not parse 200 answers (saves client CPU)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default results/loadtest-TIMESTAMP)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--seed", type=int, default=0, help="seed of the corpus and of Poisson arrivals")
    p.add_argument(
        "--procs",
        type=procs_arg,
        default=1,
        help="load processes sharing each step's clients (or rate), results merged exactly; "
        "'auto' = the CPUs this process may use",
    )
    return p


def build_payloads(
    kind: str,
    spec: str = "photos,500x375",
    per_request: int = 1,
    per_size: int = 4,
    model: str = "alexnet",
    top_k: int = 5,
    seed: int = 0,
    server: dict | None = None,
) -> list[Payload]:
    """Request bodies for a run, built once: each corpus image starts one request (cycling through).
    ``server`` (its /v1/models answer) gives oip-fp32 the model's own sizes and mean/std."""
    if per_request < 1:
        raise ValueError(f"images per request must be >= 1, got {per_request}")
    if kind == "healthz":
        return [build_payload(kind, [])]
    images = build_corpus(spec, per_size, seed)
    tensors = None
    if kind == "oip-fp32":
        from service.preprocess import preprocess

        preset = served_preset(server)
        tensors = [preprocess(im.data, preset) for im in images]
    payloads = []
    for start in range(len(images)):
        idx = [(start + j) % len(images) for j in range(per_request)]
        payloads.append(
            build_payload(
                kind, [images[i] for i in idx], model, top_k, [tensors[i] for i in idx] if tensors is not None else None
            )
        )
    return payloads


def served_preset(server: dict | None) -> PreprocessConfig:
    """The preprocessing a server applies, from its /v1/models ``input``: a model trained at other sizes
    (docs/training.md) takes FP32 tensors of its own crop size and refuses 224x224 ones. ImageNet's
    256/224 and mean/std when the server does not say (another server, or /v1/models unreachable)."""
    from service.preprocess import PreprocessConfig

    try:
        facts = (server or {})["models"][0]["input"]
        return PreprocessConfig(
            int(facts["resize_size"]), int(facts["crop_size"]), tuple(facts["mean"]), tuple(facts["std"])
        )
    except (TypeError, KeyError, IndexError, ValueError):
        return PreprocessConfig()


def step_configs(args) -> list[StepConfig]:
    common = dict(
        duration_s=args.duration_s,
        warmup_s=args.warmup_s,
        timeout_s=args.timeout_s,
        max_error_rate=max(args.max_error_rate, 0.5),
        seed=args.seed,
    )
    if args.mode == "closed":
        if args.requests:
            common["duration_s"] = None
        return [StepConfig("closed", concurrency=c, requests=args.requests, **common) for c in args.concurrency]
    return [
        StepConfig("open", rate=r, arrival=args.arrival, max_in_flight=args.max_in_flight, **common) for r in args.rate
    ]


def host_description() -> dict:
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


async def server_info(url: str, api_key: str | None = None) -> dict | None:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), headers=auth_headers(api_key)) as s:
            async with s.get(url.rstrip("/") + "/v1/models") as r:
                return await r.json() if r.status == 200 else None
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return None


def write_outputs(
    out: Path, meta: dict, results: list[StepResult], plots_too: bool = True, title: str = ""
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    rows = [report.row(r) for r in results]
    files = [out / "report.json", out / "steps.csv"]
    report.write_json(meta, results, files[0])
    report.write_csv(rows, files[1])
    answered = [r for r in results if r.ok]  # a step without one ok answer has no latency to plot
    pngs = [out / "latency_vs_throughput.png", out / "latency_cdf.png"]
    if plots_too and answered:
        files += pngs
        plots.latency_vs_throughput(answered, pngs[0], title)
        plots.latency_cdf(answered, pngs[1], title)
    else:  # an earlier run's plots in the same folder would pass for this run's
        for png in pngs:
            png.unlink(missing_ok=True)
    return files


async def run(args, api_key: str | None = None) -> int:
    """The run: a timeout's SIGTERM cancels it as Ctrl-C does (asyncio.run's SIGINT handler)."""
    with sigterm_cancels_this_task():
        return await _sweep_and_report(args, api_key)


async def _sweep_and_report(args, api_key: str | None) -> int:
    server = await server_info(args.url, api_key)
    payloads = build_payloads(
        args.kind,
        args.images,
        args.images_per_request,
        args.generated_per_size,
        args.model,
        args.top_k,
        args.seed,
        server,
    )
    configs = step_configs(args)
    out = args.out
    meta = {
        "url": args.url,
        "kind": args.kind,
        "images": args.images,
        "images_per_request": args.images_per_request,
        "procs": args.procs,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": vars(args),
        "host": host_description(),
        "server": server,
        "api_key_sent": api_key is not None,  # never the key itself
    }
    bar = None if args.quiet else ProgressBar(len(configs))
    print(
        f"loadtest: {args.kind} x{args.images_per_request} -> {args.url}, {len(configs)} steps, "
        f"{len(payloads)} distinct bodies" + (f", {args.procs} load processes" if args.procs > 1 else ""),
        file=sys.stderr,
    )

    def on_step(result: StepResult) -> None:
        if bar:
            bar.done()
            bar.next_step()
        r = report.row(result)
        p50, p99 = (f"{r[k]} ms" if r[k] is not None else "-" for k in ("p50_ms", "p99_ms"))
        print(
            f"  {r['step']}: {r['requests']} req, {r['errors']} err, {r['req_per_s']} req/s, p50 {p50}, p99 {p99}"
            + (f"; {r['procs']} processes: {r['split']}" if r["procs"] > 1 else ""),
            file=sys.stderr,
        )

    finished: list[StepResult] = []

    def record(result: StepResult) -> None:
        finished.append(result)
        on_step(result)

    title = f"{args.kind} -> {args.url}"
    if bar:
        bar.next_step()
    try:
        results = await run_sweep(
            args.url,
            args.kind,
            payloads,
            configs,
            args.procs,
            validate=not args.no_validate,
            timeout_s=args.timeout_s,
            max_error_rate=args.max_error_rate,
            max_p99_ms=args.max_p99_ms,
            progress=bar,
            on_step=record,
            api_key=api_key,
        )
    except asyncio.CancelledError:
        if finished:
            meta["interrupted"] = "stopped by a signal: only the steps that finished are here"
            files = write_outputs(out, meta, finished, not args.no_plots, title)
            print(
                f"\nloadtest: interrupted; wrote the {len(finished)} finished step(s): "
                + ", ".join(str(f) for f in files),
                file=sys.stderr,
            )
        else:
            print("\nloadtest: interrupted before a step finished; nothing written", file=sys.stderr)
        raise
    files = write_outputs(out, meta, results, not args.no_plots, title)
    print(report.table([report.row(r) for r in results]))
    print(
        "latency in ms; srv (ms per answered request), batch, qwait, prep and infer (ms, the last two per "
        "batch) are the server's own means from /metrics"
        + ("; cli% is summed over the load processes" if args.procs > 1 else "")
        + "\nwrote: "
        + ", ".join(str(f) for f in files)
        + ("" if args.no_plots or any(r.ok for r in results) else " (no plots: no request was answered ok)")
    )
    failed = failures(results, args.max_error_rate)
    for line in failed:
        print(f"loadtest: failed: {line}", file=sys.stderr)
    for line in hints(results, api_key is not None):
        print(f"loadtest: {line}", file=sys.stderr)
    return 1 if failed else 0


def error_summary(result: StepResult) -> str:
    """A step's errors, most frequent first, each counted with what was seen: "20 x 401 Unauthorized:
    missing or wrong API key ...", "3 x connection: ClientConnectorError: Cannot connect to host ..."."""
    parts = []
    for outcome, n in sorted(result.errors.items(), key=lambda item: (-item[1], item[0])):
        example = result.error_examples.get(outcome)
        if example is None:
            seen = outcome
        elif outcome.isdigit():  # an HTTP status: the example starts with it
            seen = example
        else:
            seen = f"{outcome}: {example}"
        parts.append(f"{n} x {seen}")
    return "; ".join(parts)


def failures(results: list[StepResult], max_error_rate: float) -> list[str]:
    """Why the run failed, one line per failed step: no request counted, none ok, or more errors than
    ``max_error_rate`` (the limit that stops the sweep), with what the errors were. Empty when the run
    passed."""
    out = []
    for r in results:
        if r.counted == 0:
            out.append(f"{r.config.label}: no request was answered in the measured window")
        elif r.ok == 0:
            out.append(f"{r.config.label}: all {r.counted} requests failed: {error_summary(r)}")
        elif r.error_rate > max_error_rate or r.stopped_by_errors:
            out.append(
                f"{r.config.label}: error rate {r.error_rate:.1%} > --max-error-rate {max_error_rate:g}: "
                f"{error_summary(r)}"
            )
    return out


def hints(results: list[StepResult], api_key_sent: bool) -> list[str]:
    """What to do about errors whose cause is on this side: an API key missing or refused (401)."""
    if not any("401" in r.errors for r in results):
        return []
    everything = all(r.counted and r.errors.get("401") == r.counted for r in results)
    which = "every request was" if everything else "requests were"
    if api_key_sent:
        return [f"{which} refused with 401: the server did not accept the key in ${API_KEY_ENV}; check it"]
    return [
        f"{which} refused with 401: the server wants an API key; set ${API_KEY_ENV} to it "
        "(sent as 'Authorization: Bearer <key>')"
    ]


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.kind == "raw" and args.images_per_request != 1:
        parser.error("--kind raw carries one image per request; use --kind multipart for several")
    if args.mode == "open" and args.requests:
        # Ignored, it would run each rate for the default --duration-s instead of the count asked for.
        parser.error("--requests counts a closed loop's requests; an open loop runs each --rate for --duration-s")
    try:
        api_key = api_key_from_env()
    except ValueError as exc:
        parser.error(str(exc))
    args.out = args.out or Path("results") / time.strftime("loadtest-%Y%m%d-%H%M%S")
    try:  # now, not after the sweep it would lose
        check_output_folder(args.out, "--out")
    except OutputPathError as exc:
        parser.error(str(exc))
    try:
        return asyncio.run(run(args, api_key))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C; SIGTERM
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
