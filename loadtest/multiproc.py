"""One load step run by several processes at once, their results merged exactly (``--procs N``).

    python -m loadtest --kind healthz --concurrency 64 --procs auto    # auto: the CPUs we may run on

One asyncio process tops out at a few thousand requests/s: aiohttp, HTTP parsing and the bookkeeping
all hold its one GIL. With ``procs`` > 1 the parent spawns that many load processes, each with its own
keep-alive connections, and runs every step with all of them (the arithmetic of shares and
merging is loadtest/step_parts.py's):

1. each gets its ``Share`` (``shares``): closed loop, the clients as evenly as possible (5 over 2 = 3+2,
   numbered on so that payloads rotate as in one process) and a by-count step's requests in proportion
   to its clients; open loop, every ``procs``-th arrival of the step's one schedule (together they send
   exactly the arrivals and payloads of one process) and its part of the in-flight slots;
2. warm-up: all begin at one wall-clock time the parent names, and the parent waits for all of them
   (a barrier) before it scrapes the server's /metrics;
3. the measured window: the parent names a start time ``START_AHEAD_S`` ahead; every process opens
   its window at that wall-clock moment (on its own ``perf_counter``) and reports how late it got there
   (``start_lag_s``), so all count the same interval;
4. ``merge``: HDR histograms by their recorded counts (the merged percentiles are those of all the
   values, never an average of percentiles), requests, ok, images, errors by status and by the server's
   kind summed, the window the longest of the parts (they share one start), client CPU summed. Then the
   parent scrapes /metrics again.

A process that gives up on a step (too many errors) makes the parent stop the others, as one process
stops all its clients. ``procs`` = 1 runs each step in this process (``runner.run_step``), as before.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from loadtest import prom
from loadtest.auth import api_key_from_env
from loadtest.histogram import LatencyHistogram
from loadtest.payloads import Payload, build_payload
from loadtest.runner import LoadClient, ProgressFn, measure, run_step, sweep_steps, warm_up
from loadtest.spawn import without_main_module
from loadtest.step import Share, StepConfig, StepResult
from loadtest.step_parts import describe, merge, pack, shares, unpack
from service.cpus import usable_cpus

# How far ahead the parent names a start time: enough for every process to read it and be waiting.
START_AHEAD_S = 0.2
PROGRESS_EVERY_S = 0.5  # a process's partial counts and histogram to the parent, for the progress bar
READY_TIMEOUT_S = 120.0  # spawning: a fresh interpreter importing aiohttp, numpy, hdrh
CLOSE_TIMEOUT_S = 10.0  # for all of them to end after "close", before they are terminated


class LoadProcessError(RuntimeError):
    """A load process exited or did not start."""


def resolve_procs(value: int | str) -> int:
    """``"auto"``: the CPUs this process may use (``service.cpus.usable_cpus``); else an int >= 1."""
    if value == "auto":
        return usable_cpus()
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"procs must be an integer >= 1 or 'auto', got {value!r}")
    return n


def procs_arg(text: str) -> int:
    """``resolve_procs`` as an argparse type: a bad value is the flag's error, not a traceback."""
    try:
        return resolve_procs(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- a load process ---------------------------------------------------------------------------------------


def _perf_at(wall_time: float) -> float:
    """A wall-clock moment (time.time) on this process's perf_counter."""
    return time.perf_counter() + (wall_time - time.time())


def _process_main(
    conn: Connection,
    url: str,
    kind: str,
    validate: bool,
    timeout_s: float,
    payloads: list[Payload],
    api_key: str | None = None,
) -> None:
    """Entry point of a spawned load process: run steps as the parent says until it says close or goes away.

    Its arguments come over the spawn pipe, not its command line, so ``api_key`` does not show in ``ps``.
    """
    try:
        asyncio.run(_serve(conn, url, kind, validate, timeout_s, payloads, api_key))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports it
        pass
    finally:
        conn.close()


async def _serve(
    conn: Connection,
    url: str,
    kind: str,
    validate: bool,
    timeout_s: float,
    payloads: list[Payload],
    api_key: str | None,
) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple] = asyncio.Queue()
    stop = [asyncio.Event()]  # the running step's; replaced at each "go"
    closing = [False]  # "close" came: the running step stops, and a step queued behind it never starts

    def close() -> None:
        closing[0] = True
        stop[0].set()
        inbox.put_nowait(("close",))

    def readable() -> None:
        try:
            while conn.poll():
                message = conn.recv()
                if message[0] == "stop":  # handled at once: the step that it stops is running
                    stop[0].set()
                elif message[0] == "close":  # also at once (a cancelled sweep): not after a queued "go"
                    close()
                else:
                    inbox.put_nowait(message)
        except (EOFError, OSError):  # the parent is gone
            loop.remove_reader(conn.fileno())
            close()

    last_sent = [0.0]

    def progress(result: StepResult, elapsed_s: float, planned_s: float) -> None:
        if time.monotonic() - last_sent[0] >= PROGRESS_EVERY_S:
            last_sent[0] = time.monotonic()
            conn.send(("progress", result.counted, result.ok, result.latency.encode()))

    loop.add_reader(conn.fileno(), readable)
    try:
        async with LoadClient(url, kind, validate, timeout_s, api_key) as client:
            conn.send(("ready",))
            while True:
                message = await inbox.get()
                if closing[0]:
                    return
                verb, config, share, wall_time, want_progress = message
                if verb == "warm":
                    await warm_up(client, payloads, config, share, _perf_at(wall_time))
                    conn.send(("warm",))
                elif verb == "go":
                    stop[0] = asyncio.Event()
                    result = await measure(
                        client,
                        payloads,
                        config,
                        share,
                        _perf_at(wall_time),
                        stop[0],
                        progress if want_progress else None,
                    )
                    conn.send(("done", pack(result)))
    finally:
        loop.remove_reader(conn.fileno())


# -- the parent -------------------------------------------------------------------------------------------


class LoadProcesses:
    """``procs`` spawned load processes against one server, running steps together.

    ``async with LoadProcesses(url, kind, payloads, 4) as pool: result = await pool.run_step(config)``
    gives the merged result of each step, with the server's /metrics scraped before and after its window.
    """

    def __init__(
        self,
        url: str,
        kind: str,
        payloads: list[Payload],
        procs: int,
        validate: bool = True,
        timeout_s: float = 30.0,
        api_key: str | None = None,
    ) -> None:
        if procs < 1:
            raise ValueError(f"procs must be >= 1, got {procs}")
        self.url, self.kind, self.payloads, self.procs = url, kind, payloads, procs
        self.validate, self.timeout_s = validate, timeout_s
        # Resolved here and handed to each process: they need not share this one's environment.
        self.api_key = api_key if api_key is not None else api_key_from_env()
        self._conns: list[Connection] = []
        self._processes: list[BaseProcess] = []
        self._inbox: asyncio.Queue[tuple[int, tuple]] = asyncio.Queue()
        self._scraper = LoadClient(url, kind, validate, timeout_s, self.api_key)  # /metrics only

    async def __aenter__(self) -> LoadProcesses:
        # spawn, not fork: the parent may run an event loop and threads (bench: ONNX Runtime) that a fork
        # would copy half-way.
        ctx = multiprocessing.get_context("spawn")
        loop = asyncio.get_running_loop()
        try:
            for i in range(self.procs):
                parent_end, child_end = ctx.Pipe()
                process = ctx.Process(
                    target=_process_main,
                    args=(child_end, self.url, self.kind, self.validate, self.timeout_s, self.payloads, self.api_key),
                    name=f"loadtest-{i}",
                    daemon=True,
                )
                with without_main_module():  # python -m loadtest.bench's imports are not theirs to make
                    process.start()
                child_end.close()
                self._conns.append(parent_end)
                self._processes.append(process)
                loop.add_reader(parent_end.fileno(), self._readable, i)
            await self._scraper.__aenter__()
            await asyncio.wait_for(self._gather("ready"), READY_TIMEOUT_S)
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self._close()

    async def run_step(self, config: StepConfig, progress: ProgressFn | None = None) -> StepResult:
        """Warm up together, scrape /metrics, measure one shared window, merge, scrape again."""
        parts = shares(config, self.procs)
        if config.warmup_s > 0:
            self._send_each("warm", config, parts, time.time() + START_AHEAD_S, False)
            await self._gather("warm")
        before = await self._scraper.scrape()
        start = time.time() + START_AHEAD_S
        self._send_each("go", config, parts, start, progress is not None)
        done: dict[int, StepResult] = {}
        partial: dict[int, tuple[int, int, LatencyHistogram]] = {}
        shown = 0.0
        while len(done) < self.procs:
            i, message = await self._next()
            if message[0] == "progress" and progress is not None:
                partial[i] = (message[1], message[2], LatencyHistogram.decode(message[3]))
                if time.monotonic() - shown >= 0.25:
                    shown = time.monotonic()
                    now = StepResult(config, LatencyHistogram.merged([h for _, _, h in partial.values()]))
                    now.counted = sum(c for c, _, _ in partial.values())
                    now.ok = sum(ok for _, ok, _ in partial.values())
                    progress(now, time.time() - start, config.duration_s or 0.0)
            elif message[0] == "done":
                done[i] = unpack(config, message[1])
                if done[i].stopped:  # one gave up on the step: so do the others, as one process's clients would
                    for j in range(self.procs):
                        if j not in done:
                            self._send(j, ("stop",))
        result = merge(config, [done[i] for i in range(self.procs)], describe(config, parts))
        after = await self._scraper.scrape()
        if before is not None and after is not None:
            result.server = prom.step_summary(before, after)
        return result

    def _readable(self, i: int) -> None:
        conn = self._conns[i]
        try:
            while conn.poll():
                self._inbox.put_nowait((i, conn.recv()))
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
            self._inbox.put_nowait((i, ("exit",)))

    async def _next(self) -> tuple[int, tuple]:
        i, message = await self._inbox.get()
        if message[0] == "exit":
            process = self._processes[i]
            await asyncio.to_thread(process.join, 5)
            raise LoadProcessError(f"load process {i} exited (code {process.exitcode}); see its traceback above")
        return i, message

    async def _gather(self, verb: str) -> None:
        """Wait until every process has said ``verb`` (a barrier)."""
        seen: set[int] = set()
        while len(seen) < self.procs:
            i, message = await self._next()
            if message[0] == verb:
                seen.add(i)

    def _send(self, i: int, message: tuple) -> None:
        self._conns[i].send(message)

    def _send_each(self, verb: str, config: StepConfig, parts: list[Share], wall_time: float, progress: bool) -> None:
        for i, share in enumerate(parts):
            self._send(i, (verb, config, share, wall_time, progress))

    async def _close(self) -> None:
        loop = asyncio.get_running_loop()
        for conn in self._conns:
            try:
                loop.remove_reader(conn.fileno())
                conn.send(("close",))  # a step still running (a cancelled sweep) ends now, not at its end
            except (OSError, ValueError):  # already gone
                pass
        # One deadline for all of them (they stop together), not 10 s each: then terminate the rest.
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        for process in self._processes:
            await asyncio.to_thread(process.join, max(0.0, deadline - time.monotonic()))
        for process in self._processes:
            if process.is_alive():
                process.terminate()
                await asyncio.to_thread(process.join, 5)
        for conn in self._conns:
            conn.close()
        if self._scraper.session is not None:
            await self._scraper.__aexit__(None, None, None)


# -- what the CLI and the bench call ------------------------------------------------------------------


class OneProcess:
    """``LoadProcesses``' interface for ``procs`` = 1: each step runs in this process (``runner.run_step``)."""

    def __init__(
        self,
        url: str,
        kind: str,
        payloads: list[Payload],
        validate: bool = True,
        timeout_s: float = 30.0,
        api_key: str | None = None,
    ) -> None:
        self.payloads, self.procs = payloads, 1
        self._client = LoadClient(url, kind, validate, timeout_s, api_key)

    async def __aenter__(self) -> OneProcess:
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        await self._client.__aexit__(*exc)

    async def run_step(self, config: StepConfig, progress: ProgressFn | None = None) -> StepResult:
        return await run_step(self._client, self.payloads, config, progress)


def load_pool(
    url: str,
    kind: str,
    payloads: list[Payload],
    procs: int | str = 1,
    *,
    validate: bool = True,
    timeout_s: float = 30.0,
    api_key: str | None = None,
) -> OneProcess | LoadProcesses:
    """What runs the steps against one server: ``async with load_pool(...) as pool: await pool.run_step(c)``.
    ``procs`` an int or "auto"; 1 runs in this process. One pool serves any number of steps, so a caller
    that interleaves steps against several servers (loadtest.bench) starts each server's processes once.
    ``api_key``: sent as ``Authorization: Bearer`` by every process; None = ``ALEXNET_API_KEY``'s."""
    n = resolve_procs(procs)
    if n == 1:
        return OneProcess(url, kind, payloads, validate, timeout_s, api_key)
    return LoadProcesses(url, kind, payloads, n, validate, timeout_s, api_key)


async def run_sweep(
    url: str,
    kind: str,
    payloads: list[Payload],
    configs: list[StepConfig],
    procs: int | str = 1,
    *,
    validate: bool = True,
    timeout_s: float = 30.0,
    max_error_rate: float = 1.0,
    max_p99_ms: float | None = None,
    progress: ProgressFn | None = None,
    on_step: Callable[[StepResult], None] | None = None,
    api_key: str | None = None,
) -> list[StepResult]:
    """``runner.sweep`` over a ``load_pool``: ``procs`` load processes (an int, or "auto"), or this one."""
    async with load_pool(url, kind, payloads, procs, validate=validate, timeout_s=timeout_s, api_key=api_key) as pool:
        return await sweep_steps(pool.run_step, configs, max_error_rate, max_p99_ms, progress, on_step)


async def healthz_ceiling(
    url: str, concurrency: int = 32, duration_s: float = 3.0, warmup_s: float = 0.5, procs: int | str = 1
) -> dict:
    """The load generator's own limit: ``GET /healthz`` in a closed loop of ``concurrency`` clients over
    ``procs`` processes. {"concurrency", "procs", "split", "req_per_s", "p50_ms", "p99_ms", "errors",
    "client_cpu_pct" (summed over the processes, % of one core)}."""
    config = StepConfig("closed", concurrency=concurrency, duration_s=duration_s, warmup_s=warmup_s)
    (r,) = await run_sweep(url, "healthz", [build_payload("healthz", [])], [config], procs)
    return {
        "concurrency": concurrency,
        "procs": r.procs,
        "split": r.split or f"{concurrency} clients",
        "req_per_s": r.rps,
        "p50_ms": r.latency.percentile_ms(50),
        "p99_ms": r.latency.percentile_ms(99),
        "errors": r.counted - r.ok,
        "client_cpu_pct": 100 * r.client_cpu_s / r.elapsed_s if r.elapsed_s else None,
    }
