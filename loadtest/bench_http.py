"""``loadtest.bench``'s HTTP part: start every server, sweep the concurrencies interleaved, then one
open-loop step per server; (b), the in-process pipeline, takes its turn in the same rotation."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest import report, servers
from loadtest.__main__ import write_outputs
from loadtest.ceilings import load_backend, run_pipeline
from loadtest.multiproc import healthz_ceiling, load_pool
from loadtest.progress import ProgressBar, say
from loadtest.runner import sweep_steps
from loadtest.sigterm import Sigterm, sigterm_cancels_this_task
from loadtest.step import StepConfig, StepResult


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
    from service.errors import BackendUnavailable

    try:
        selection, settings = load_backend(name, args.onnx, args.device)
    except BackendUnavailable:
        return None
    return InProcess(name, selection, settings, images)


def start_failure(exc: Exception, limit: int = 500) -> str:
    """Why a server did not start, for bench.json and the report: its first words say what failed and
    its end (the server log's last lines) why, so a long one keeps both ends."""
    reason = str(exc)
    return reason if len(reason) <= limit else f"{reason[:150]} [...] {reason[-(limit - 157) :]}"


def http_sweeps(
    targets: list[Target], args, payloads, pipelines: list[InProcess] = ()
) -> tuple[dict[str, dict], dict | None, bool]:
    """Start every server, then run the concurrency sweep *interleaved*: at each concurrency, one step
    on each server in turn (the order rotating from step to step). On a shared or throttled host, load
    from elsewhere then falls on all servers alike instead of on whichever ran during a busy minute.
    Idle servers cost memory, not CPU. Returns ({key: {"url", "steps"} or {"skipped"}}, client ceiling,
    interrupted): on Ctrl-C or SIGTERM (both cancel the sweep) the steps that finished are kept.
    """
    out: dict[str, dict] = {}
    started: dict[str, servers.Started] = {}
    serving: dict[str, dict] = {}  # what each service says it serves (servers.served)
    for t in targets:
        say(f"starting {t.key} ({t.backend}, {args.device})")
        try:
            started[t.key] = servers.start(
                t.name, t.out_dir / "logs", args.onnx, t.backend, args.device, t.extra, cwd=t.cwd
            )
        except Exception as exc:  # a peer that will not start is reported, not fatal
            say(f"{t.key} failed to start: {exc}")
            out[t.key] = {"skipped": f"failed to start: {start_failure(exc)}"}
            continue
        if t.name == "service" and (facts := servers.served(started[t.key].url)) is not None:
            serving[t.key] = facts
            say(f"  {t.key} serves {servers.served_text(facts)}")
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
        async with contextlib.AsyncExitStack() as stack:
            # Each server's load processes started once, for all its steps: started again at each step,
            # 16 of them made a step of 5 s take 19-23 s on the H200 host (2026-12-04).
            pools = {}
            for t in (t for t in live if t.name != "pipeline"):
                t0 = time.monotonic()
                pools[t.key] = await stack.enter_async_context(
                    load_pool(started[t.key].url, args.kind, payloads, args.procs)
                )
                if pools[t.key].procs > 1:
                    say(f"  {t.key}: {pools[t.key].procs} load processes ready in {time.monotonic() - t0:.1f} s")
            await sweeps(pools)

    async def sweeps(pools: dict) -> None:
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
                (r,) = await sweep_steps(pools[t.key].run_step, [config], max_error_rate=0.5, progress=bar)
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
                (r,) = await sweep_steps(pools[t.key].run_step, [config], max_error_rate=0.5)
                open_loop[t.key] = r
                row = report.row(r)
                say(
                    f"    {t.key} open loop at {args.open_at:g} x {peak:.1f} req/s: {row['img_per_s']} img/s, "
                    f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, {row['errors']} errors"
                )

    sigterm = Sigterm()

    async def go_until_sigterm():
        """``go``, cancelled by a SIGTERM through the event loop, not by ``main``'s handler (see sigterm)."""
        with sigterm_cancels_this_task(sigterm):
            await go()

    interrupted = False
    try:
        asyncio.run(go_until_sigterm())
    except KeyboardInterrupt:  # Ctrl-C: asyncio.run turns SIGINT into a cancellation, then this
        interrupted = True
    except asyncio.CancelledError:
        if not sigterm.came:
            raise
    finally:
        for server in started.values():  # all told at once, then waited for (a SIGTERM's time limit is short)
            server.begin_stop()
        for server in started.values():
            server.stop()
    interrupted = interrupted or sigterm.came
    if interrupted:
        say("interrupted: keeping the steps that finished")
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
        if t.key in serving:
            out[t.key]["serving"] = serving[t.key]
        if tail:
            out[t.key]["open_loop"] = {**report.row(tail[0]), "peak_req_per_s": round(open_peak[t.key], 3)}
    return out, ceiling, interrupted
