"""What one load step is: its configuration (closed or open loop, for how long), the share of it one
load process runs, and its result (HDR histograms, counts, errors by kind)."""

from __future__ import annotations

from dataclasses import dataclass, field

from loadtest.histogram import LatencyHistogram

MODES = ("closed", "open")
ARRIVALS = ("constant", "poisson")


@dataclass
class StepConfig:
    mode: str = "closed"
    concurrency: int = 1  # closed loop: clients
    rate: float = 0.0  # open loop: requests per second
    arrival: str = "constant"
    duration_s: float | None = 10.0
    requests: int | None = None  # closed loop: instead of duration
    warmup_s: float = 1.0
    timeout_s: float = 30.0
    max_in_flight: int = 2048  # open loop: past this the sender waits (and the wait counts as latency)
    max_error_rate: float = 1.0  # abort the step once this fraction of >= 20 answers are errors
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.arrival not in ARRIVALS:
            raise ValueError(f"arrival must be one of {ARRIVALS}, got {self.arrival!r}")
        if self.mode == "closed" and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.mode == "open" and not self.rate > 0:
            raise ValueError(f"open loop needs a rate > 0 requests/s, got {self.rate}")
        if self.mode == "open" and not self.duration_s:
            raise ValueError("open loop runs for a duration; give duration_s")
        if not self.duration_s and not self.requests:
            raise ValueError("give a duration_s or a request count")

    @property
    def label(self) -> str:
        if self.mode == "closed":
            return f"c={self.concurrency}"
        return f"rate={self.rate:g}/s" + (" poisson" if self.arrival == "poisson" else "")


@dataclass(frozen=True)
class Share:
    """The part of a step that one of ``procs`` load processes runs; ``Share.whole`` is all of it.

    Closed loop: ``clients`` of the step's clients, numbered from ``first_client`` (so the payloads rotate
    as they would in one process), and ``requests`` of a by-count step. Open loop: every ``procs``-th
    arrival of the step's schedule from arrival ``index`` on, with ``max_in_flight`` of the step's slots.
    """

    index: int = 0
    procs: int = 1
    clients: int = 1
    first_client: int = 0
    requests: int | None = None
    max_in_flight: int = 2048

    @classmethod
    def whole(cls, config: StepConfig) -> Share:
        return cls(0, 1, config.concurrency, 0, config.requests or None, config.max_in_flight)


ERROR_RATE_STOP = "error rate"  # how StepResult.stopped begins for a step cut short by its errors


def error_rate_stop(rate: float, limit: float) -> str:
    """``StepResult.stopped`` for a step whose errors went over ``limit``."""
    return f"{ERROR_RATE_STOP} {rate:.1%} > {limit:.1%}, where a step is cut short"


@dataclass
class StepResult:
    config: StepConfig
    latency: LatencyHistogram  # of ok answers only: a fast 503 must not make an overloaded server look quick
    error_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    counted: int = 0  # requests in the step (ok + errors)
    ok: int = 0
    images_ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # "503", "timeout", "connection", "bad_response"
    error_kinds: dict[str, int] = field(default_factory=dict)  # the server's JSON "kind" of each error
    # One example of what each error outcome was: the status and the server's message, or the exception
    error_examples: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0  # the measured window
    abandoned: int = 0
    schedule_lag: LatencyHistogram | None = None  # open loop: actual send time - scheduled time
    scheduled: int = 0  # open loop: requests the schedule held inside the window
    server: dict | None = None
    stopped: str | None = None  # why the step ended early, if it did
    client_cpu_s: float = 0.0  # CPU time the client process(es) spent in the window (all their threads)
    procs: int = 1  # load processes that ran the step (loadtest/multiproc.py)
    split: str = ""  # how the step was shared among them, e.g. "3+2 clients"
    start_lag_s: float | None = None  # how late the latest process began its window (several processes)
    parts: list[dict] | None = None  # per process: requests, ok, elapsed, CPU, start lag

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def ips(self) -> float:
        return self.images_ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def error_rate(self) -> float:
        return (self.counted - self.ok) / self.counted if self.counted else 0.0

    @property
    def stopped_by_errors(self) -> bool:
        """Cut short by its error rate, in this process or (merged) in any of several."""
        return (self.stopped or "").startswith(ERROR_RATE_STOP)
