"""Soak test: steady load for a bounded time; the server's memory must stay flat and nothing be lost.

    python -m loadtest.soak --minutes 10 --concurrency 8            # starts its own server on 127.0.0.1
    python -m loadtest.soak --url http://127.0.0.1:8000 --pid 1234  # an instance you started

Every ``--sample-s`` it records the server's RSS (its process and children, from /proc) and the
latencies since the last sample. After the warm-up it reports RSS growth, latency drift (first vs
last interval), errors by status, and lost requests (sent but never answered: a connection reset or
a truncated response). Exit status 1 when RSS grew by ``--max-rss-growth`` (5%) or more, or any
request was lost. Loopback only. With ``ALEXNET_API_KEY`` set, every request carries it as a bearer token.
"""

from __future__ import annotations

import argparse
import io
import json
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from loadtest import servers
from loadtest.auth import api_key_from_env, auth_headers
from model.help_format import DefaultsHelpFormatter


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its child processes (uvicorn workers), from /proc."""
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    total = 0
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def sample_jpeg(width: int = 500, height: int = 375) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@dataclass
class Interval:
    t_s: float  # since the start
    rss_mib: float
    requests: int
    p50_ms: float | None
    p99_ms: float | None


@dataclass
class Report:
    duration_s: float
    concurrency: int
    sent: int = 0
    answered: int = 0
    lost: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    rss_after_warmup_mib: float = 0.0
    rss_end_mib: float = 0.0
    rss_max_mib: float = 0.0
    rss_growth: float = 0.0  # (end - after warm-up) / after warm-up
    p50_first_ms: float | None = None
    p50_last_ms: float | None = None
    p99_first_ms: float | None = None
    p99_last_ms: float | None = None
    intervals: list[Interval] = field(default_factory=list)


class Load:
    """``concurrency`` threads, each with its own keep-alive connection, sending until stopped."""

    def __init__(self, url: str, body: bytes, concurrency: int, api_key: str | None = None) -> None:
        self.url = url
        self.body = body
        self.headers = auth_headers(api_key if api_key is not None else api_key_from_env())
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.latencies_ms: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.sent = 0
        self.lost = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)]

    def _run(self) -> None:
        with httpx.Client(timeout=60, headers=self.headers) as client:
            while not self.stop.is_set():
                start = time.perf_counter()
                with self.lock:
                    self.sent += 1
                try:
                    r = client.post(self.url + "/classify", files={"file": ("soak.jpg", self.body, "image/jpeg")})
                    status = str(r.status_code)
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.lost += 1
                        self.statuses[type(exc).__name__] += 1
                    continue
                elapsed = (time.perf_counter() - start) * 1000
                with self.lock:
                    self.statuses[status] += 1
                    if status == "200":
                        self.latencies_ms.append(elapsed)

    def take_latencies(self) -> list[float]:
        with self.lock:
            taken, self.latencies_ms = self.latencies_ms, []
        return taken


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def soak(url: str, pid: int, duration_s: float, warmup_s: float, sample_s: float, concurrency: int) -> Report:
    load = Load(url, sample_jpeg(), concurrency)
    report = Report(duration_s=duration_s, concurrency=concurrency)
    start = time.monotonic()
    for thread in load.threads:
        thread.start()
    next_sample = start + sample_s
    try:
        while (now := time.monotonic()) < start + duration_s:
            time.sleep(max(0.0, min(next_sample, start + duration_s) - now))
            next_sample += sample_s
            latencies = load.take_latencies()
            interval = Interval(
                round(time.monotonic() - start, 1),
                round(rss_bytes(pid) / 2**20, 1),
                len(latencies),
                _percentile(latencies, 50),
                _percentile(latencies, 99),
            )
            report.intervals.append(interval)
            phase = "warm-up" if interval.t_s <= warmup_s else "steady"
            print(
                f"[soak] {interval.t_s:7.1f} s  {phase:7}  rss {interval.rss_mib:8.1f} MiB  "
                f"{interval.requests / sample_s:7.1f} req/s  p50 {interval.p50_ms} ms  p99 {interval.p99_ms} ms",
                flush=True,
            )
    finally:
        load.stop.set()
        for thread in load.threads:
            thread.join(60)
    report.sent, report.lost = load.sent, load.lost
    report.statuses = dict(load.statuses)
    report.answered = sum(n for status, n in load.statuses.items() if status.isdigit())
    steady = [i for i in report.intervals if i.t_s > warmup_s] or report.intervals
    report.rss_after_warmup_mib = steady[0].rss_mib
    report.rss_end_mib = steady[-1].rss_mib
    report.rss_max_mib = max(i.rss_mib for i in steady)
    report.rss_growth = round((report.rss_end_mib - report.rss_after_warmup_mib) / report.rss_after_warmup_mib, 4)
    report.p50_first_ms, report.p99_first_ms = steady[0].p50_ms, steady[0].p99_ms
    report.p50_last_ms, report.p99_last_ms = steady[-1].p50_ms, steady[-1].p99_ms
    return report


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.soak",
        description=__doc__.split("\n\n")[0],
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--url", help="a running instance (loopback); without it a server is started")
    parser.add_argument("--pid", type=int, help="the running instance's process id (for its RSS)")
    parser.add_argument(
        "--onnx", type=Path, default=Path("artifacts/alexnet.onnx"), help="model for the started server"
    )
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for the started server")
    parser.add_argument("--minutes", type=float, default=10.0, help="total duration, warm-up included")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="excluded from the growth figures")
    parser.add_argument("--sample-s", type=float, default=10.0, help="sampling interval")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients")
    parser.add_argument("--max-rss-growth", type=float, default=0.05, help="fail above this fraction")
    parser.add_argument("--out", type=Path, default=Path("results/soak.json"), help="JSON report")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        api_key_from_env()  # with ALEXNET_API_KEY set, every request carries it
    except ValueError as exc:
        parser.error(str(exc))
    server = None
    if args.url:
        if not args.url.startswith(("http://127.0.0.1", "http://localhost")):
            raise SystemExit("soak tests target loopback only")
        if args.pid is None:
            raise SystemExit("--pid is needed with --url (to read the server's RSS)")
        url, pid = args.url, args.pid
    else:
        server = servers.start(
            "service", args.out.parent, args.onnx, extra=["--log-level", "warning", *args.server_arg]
        )
        url, pid = server.url, server.process.pid
    try:
        report = soak(url, pid, args.minutes * 60, args.warmup_s, args.sample_s, args.concurrency)
    finally:
        if server is not None:
            server.stop(60)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(asdict(report), indent=2))
    ok = report.rss_growth < args.max_rss_growth and report.lost == 0
    print(f"[soak] {report.sent} sent, {report.answered} answered, {report.lost} lost, statuses {report.statuses}")
    print(
        f"[soak] RSS after warm-up {report.rss_after_warmup_mib} MiB -> end {report.rss_end_mib} MiB "
        f"(growth {report.rss_growth:+.2%}, max {report.rss_max_mib} MiB)"
    )
    print(
        f"[soak] p50 {report.p50_first_ms} -> {report.p50_last_ms} ms, p99 {report.p99_first_ms} -> "
        f"{report.p99_last_ms} ms (first vs last steady interval)"
    )
    print(f"[soak] {'PASS' if ok else 'FAIL'} (growth < {args.max_rss_growth:.0%}, nothing lost); report {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
