"""Running one load step: a closed loop (N clients, each sends when its answer arrives) or an open loop
(requests sent on a fixed schedule, constant or Poisson, whatever the server does).

Open-loop latency is counted from each request's *scheduled* send time, so a server that stalls is
charged for the requests it made the client hold back (no coordinated omission); how late the client
actually sent them is reported as ``schedule_lag``.

Which requests a step counts:
- closed loop, by duration: those that *complete* inside the measured window (after the warm-up);
  requests still in flight at its end are awaited (so the next step starts on an idle server) but not
  counted, and reported as ``abandoned``.
- closed loop, by request count: exactly that many requests, issued after the warm-up, all awaited.
- open loop: every request *scheduled* inside the window, all awaited, however late they finish.

A step can also be run by several processes at once (``--procs``, loadtest/multiproc.py): each runs its
``Share`` of the clients or of the schedule over the same window, and their results are merged.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import aiohttp

from loadtest import prom
from loadtest.auth import api_key_from_env, auth_headers
from loadtest.histogram import LatencyHistogram
from loadtest.payloads import BadResponse, Payload, check_response
from loadtest.step import Share, StepConfig, StepResult, error_rate_stop


def arrival_offsets(rate: float, duration_s: float, arrival: str, seed: int = 0) -> list[float]:
    """Send times (s from the start) of an open-loop schedule over ``duration_s``."""
    if arrival == "constant":
        return [i / rate for i in range(math.floor(duration_s * rate))]
    rng = random.Random(seed)
    out, t = [], rng.expovariate(rate)
    while t < duration_s:
        out.append(t)
        t += rng.expovariate(rate)
    return out


class Answer(NamedTuple):
    """What one request came to: ``outcome`` "ok", the HTTP status ("503") or "timeout", "connection",
    "bad_response"; the images answered; the server's error ``kind``; and, for a failure, what was seen
    (the server's error message or the exception), for the report."""

    outcome: str
    images: int
    kind: str | None = None
    detail: str | None = None


DETAIL_CHARS = 300  # of a server's error message or an exception, kept as the example of its outcome
# A keep-alive connection idle longer than this is closed, not reused: under the servers' own idle
# close (uvicorn's default, which the service and LitServe keep, is 5 s). A request sent on a connection
# in the moment its server closes it fails (seen between two steps 4.99 s apart), and that failure is
# the client's doing, not the server's.
KEEPALIVE_S = 2.0


def _error_detail(status: int, reason: str | None, body: bytes) -> tuple[str | None, str]:
    """(the server's error kind, "401 Unauthorized: its message") of a non-200 answer."""
    kind, message = None, ""
    if body[:1] == b"{":
        try:
            doc = json.loads(body)
            kind, message = doc.get("kind"), str(doc.get("error") or doc.get("detail") or "")
        except (ValueError, AttributeError):
            pass
    if not message:
        message = body[:DETAIL_CHARS].decode("utf-8", "replace").strip().splitlines()[0] if body.strip() else ""
    head = f"{status} {reason or ''}".rstrip()
    return kind, (f"{head}: {message}" if message else head)[:DETAIL_CHARS]


class LoadClient:
    """One aiohttp session against a server; ``send`` returns an ``Answer``.

    Every request carries ``Authorization: Bearer <api_key>``; ``api_key`` None means the one in
    ``ALEXNET_API_KEY`` (loadtest/auth.py), none when it is unset.
    """

    def __init__(
        self,
        url: str,
        kind: str,
        validate: bool = True,
        timeout_s: float = 30.0,
        api_key: str | None = None,
        keepalive_s: float = KEEPALIVE_S,
    ) -> None:
        self.url = url.rstrip("/")
        self.kind = kind
        self.validate = validate
        self.timeout_s = timeout_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.headers = auth_headers(api_key if api_key is not None else api_key_from_env())
        self.keepalive_s = keepalive_s
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LoadClient:
        # limit=0: one keep-alive connection per concurrent request; the client never queues internally.
        connector = aiohttp.TCPConnector(
            limit=0, ttl_dns_cache=None, use_dns_cache=True, keepalive_timeout=self.keepalive_s
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=self.timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
            headers=self.headers,  # on every request: the load, and the /metrics scrapes
        )
        return self

    async def __aexit__(self, *exc) -> None:
        await self.session.close()

    async def send(self, payload: Payload) -> Answer:
        try:
            async with self.session.request(
                payload.method, self.url + payload.path, data=payload.body or None, headers=payload.headers
            ) as response:
                body = await response.read()
                if response.status != 200:
                    kind, detail = _error_detail(response.status, response.reason, body)
                    return Answer(str(response.status), 0, kind, detail)
                if self.validate:
                    check_response(self.kind, body, response.headers, payload.images)
                return Answer("ok", payload.images)
        except BadResponse as exc:
            return Answer("bad_response", 0, None, str(exc)[:DETAIL_CHARS])
        except TimeoutError:
            return Answer("timeout", 0, None, f"no answer within {self.timeout_s:g} s (--timeout-s)")
        except aiohttp.ClientError as exc:
            return Answer("connection", 0, None, f"{type(exc).__name__}: {exc}"[:DETAIL_CHARS])

    async def scrape(self) -> prom.Snapshot | None:
        """The server's /metrics, or None when it has none (a peer framework, the naive baseline)."""
        try:
            async with self.session.get(self.url + "/metrics") as response:
                if response.status != 200:
                    return None
                return prom.parse(await response.text())
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return None


class _Tally:
    def __init__(self, result: StepResult) -> None:
        self.r = result
        self.errors: Counter = Counter()
        self.kinds: Counter = Counter()
        self.examples: dict[str, str] = {}

    def add(self, answer: Answer, latency_s: float) -> None:
        r = self.r
        r.counted += 1
        if answer.outcome == "ok":
            r.latency.record(latency_s)
            r.ok += 1
            r.images_ok += answer.images
        else:
            r.error_latency.record(latency_s)
            self.errors[answer.outcome] += 1
            if answer.kind:
                self.kinds[answer.kind] += 1
            if answer.detail and answer.outcome not in self.examples:
                self.examples[answer.outcome] = answer.detail

    def finish(self) -> None:
        self.r.errors = dict(self.errors)
        self.r.error_kinds = dict(self.kinds)
        self.r.error_examples = dict(self.examples)

    def too_many_errors(self, limit: float) -> bool:
        return limit < 1.0 and self.r.counted >= 20 and self.r.error_rate > limit


ProgressFn = Callable[[StepResult, float, float], None]  # (partial result, elapsed_s, planned_s)


async def run_step(
    client: LoadClient, payloads: list[Payload], config: StepConfig, progress: ProgressFn | None = None
) -> StepResult:
    """Warm up, scrape /metrics, run the measured window, scrape again."""
    share = Share.whole(config)
    await warm_up(client, payloads, config, share)
    before = await client.scrape()
    result = await measure(client, payloads, config, share, progress=progress)
    after = await client.scrape()
    if before is not None and after is not None:
        result.server = prom.step_summary(before, after)
    return result


async def warm_up(
    client: LoadClient, payloads: list[Payload], config: StepConfig, share: Share, start_at: float | None = None
) -> None:
    """``config.warmup_s`` of unmeasured load (this share of it), from ``start_at`` (perf_counter) or now."""
    if config.warmup_s > 0:
        warm = StepResult(config, LatencyHistogram(), schedule_lag=LatencyHistogram())
        runner = _closed if config.mode == "closed" else _open
        await runner(client, payloads, config, share, _Tally(warm), config.warmup_s, None, None, start_at, None)


async def measure(
    client: LoadClient,
    payloads: list[Payload],
    config: StepConfig,
    share: Share,
    start_at: float | None = None,
    stop: asyncio.Event | None = None,
    progress: ProgressFn | None = None,
) -> StepResult:
    """The measured window of one step (this share of it), opening at ``start_at`` (perf_counter) or now;
    ``stop`` ends it early from outside (another process gave up on the step)."""
    result = StepResult(config, LatencyHistogram())
    if config.mode == "open":
        result.schedule_lag = LatencyHistogram()
    tally = _Tally(result)
    runner = _closed if config.mode == "closed" else _open
    cpu0 = time.process_time()
    await runner(client, payloads, config, share, tally, config.duration_s, share.requests, progress, start_at, stop)
    result.client_cpu_s = time.process_time() - cpu0
    tally.finish()
    return result


async def _begin(start_at: float | None, result: StepResult) -> float:
    """Wait for the window's opening time; how late this process got there is ``result.start_lag_s``."""
    if start_at is None:
        return time.perf_counter()
    await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    result.start_lag_s = time.perf_counter() - start_at
    return start_at


async def _ticker(result: StepResult, start: float, planned_s: float, progress: ProgressFn | None) -> None:
    while progress is not None:
        await asyncio.sleep(0.25)
        progress(result, time.perf_counter() - start, planned_s)


async def _closed(
    client: LoadClient,
    payloads: list[Payload],
    config: StepConfig,
    share: Share,
    tally: _Tally,
    duration_s: float | None,
    requests: int | None,
    progress: ProgressFn | None,
    start_at: float | None,
    stop: asyncio.Event | None,
) -> None:
    result = tally.r
    start = await _begin(start_at, result)
    end = start + duration_s if duration_s and requests is None else math.inf
    issued = 0
    if stop is None:
        stop = asyncio.Event()
    offset = random.Random(config.seed).randrange(len(payloads))

    async def worker(worker_id: int) -> None:
        nonlocal issued
        i = offset + share.first_client + worker_id  # as in one process: client k starts at payload k
        while not stop.is_set():
            if requests is not None:
                if issued >= requests:
                    return
                issued += 1
            payload = payloads[i % len(payloads)]
            i += config.concurrency
            sent = time.perf_counter()
            answer = await client.send(payload)
            done = time.perf_counter()
            if done > end:
                result.abandoned += 1
                stop.set()
                return
            tally.add(answer, done - sent)
            if tally.too_many_errors(config.max_error_rate):
                result.stopped = error_rate_stop(result.error_rate, config.max_error_rate)
                stop.set()

    async def timer() -> None:
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        stop.set()

    ticker = asyncio.create_task(_ticker(result, start, duration_s or 0.0, progress))
    timers = [asyncio.create_task(timer())] if math.isfinite(end) else []
    await asyncio.gather(*(worker(w) for w in range(share.clients)))
    for task in (ticker, *timers):
        task.cancel()
    # By duration the window is exactly [start, end]; by count it closes with the last answer.
    result.elapsed_s = (min(end, time.perf_counter()) if math.isfinite(end) else time.perf_counter()) - start


async def _open(
    client: LoadClient,
    payloads: list[Payload],
    config: StepConfig,
    share: Share,
    tally: _Tally,
    duration_s: float | None,
    requests: int | None,
    progress: ProgressFn | None,
    start_at: float | None,
    stop: asyncio.Event | None,
) -> None:
    # One schedule for the step; a process sends every procs-th arrival of it, so the processes together
    # send exactly the arrivals (and payloads) that one process would.
    offsets = arrival_offsets(config.rate, duration_s, config.arrival, config.seed)[share.index :: share.procs]
    result = tally.r
    result.scheduled = len(offsets)
    slots = asyncio.Semaphore(share.max_in_flight)
    tasks: set[asyncio.Task] = set()
    start = await _begin(start_at, result)
    last_done = start

    async def one(payload: Payload, scheduled: float) -> None:
        nonlocal last_done
        try:
            answer = await client.send(payload)
        finally:
            slots.release()
        done = time.perf_counter()
        last_done = max(last_done, done)
        tally.add(answer, done - scheduled)  # from the schedule, not from the actual send

    ticker = asyncio.create_task(_ticker(result, start, duration_s, progress))
    for i, offset in enumerate(offsets):
        scheduled = start + offset
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if stop is not None and stop.is_set():
            result.scheduled = i
            break
        await slots.acquire()
        result.schedule_lag.record(time.perf_counter() - scheduled)
        task = asyncio.create_task(one(payloads[(share.index + i * share.procs) % len(payloads)], scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if tally.too_many_errors(config.max_error_rate):
            result.stopped = error_rate_stop(result.error_rate, config.max_error_rate)
            result.scheduled = i + 1
            break
    if tasks:
        await asyncio.gather(*tasks)
    ticker.cancel()
    # The window is the schedule's length, or longer when the server took longer to answer it.
    cut = result.stopped or (stop is not None and stop.is_set())
    result.elapsed_s = max(duration_s if not cut else 0.0, last_done - start)


async def sweep(
    client: LoadClient,
    payloads: list[Payload],
    configs: list[StepConfig],
    max_error_rate: float = 1.0,
    max_p99_ms: float | None = None,
    progress: ProgressFn | None = None,
    on_step: Callable[[StepResult], None] | None = None,
) -> list[StepResult]:
    """Run the steps in order; stop after a step over the error-rate or p99 ceiling (that step is kept)."""

    async def step(config: StepConfig, progress: ProgressFn | None) -> StepResult:
        return await run_step(client, payloads, config, progress)

    return await sweep_steps(step, configs, max_error_rate, max_p99_ms, progress, on_step)


StepFn = Callable[[StepConfig, ProgressFn | None], Awaitable[StepResult]]


async def sweep_steps(
    step: StepFn,
    configs: list[StepConfig],
    max_error_rate: float = 1.0,
    max_p99_ms: float | None = None,
    progress: ProgressFn | None = None,
    on_step: Callable[[StepResult], None] | None = None,
) -> list[StepResult]:
    """``sweep`` with any way of running a step (one process, or several: loadtest/multiproc.py)."""
    results = []
    for config in configs:
        result = await step(config, progress)
        if result.stopped is None and result.counted and result.error_rate > max_error_rate:
            result.stopped = error_rate_stop(result.error_rate, max_error_rate)
        p99 = result.latency.percentile_ms(99)
        if result.stopped is None and max_p99_ms is not None and p99 > max_p99_ms:
            result.stopped = f"p99 {p99:.1f} ms > {max_p99_ms:g} ms"
        results.append(result)
        if on_step is not None:
            on_step(result)
        if result.stopped:
            break
    return results
