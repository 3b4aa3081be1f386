"""Latency recording: an HDR histogram in microseconds, and the percentile summary every report uses.

HdrHistogram keeps 3 significant digits over 1 us .. 10 min in a few tens of kB, so a step of any length
costs the same memory and its percentiles are exact to 0.1% (no sampling, no reservoir).
"""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 600_000_000  # 10 min: anything slower is recorded as this
SIGNIFICANT_DIGITS = 3
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
# Points of the latency CDF stored per step (and plotted): dense near the tail.
CDF_PERCENTILES = tuple(sorted({*range(0, 100, 2), 90.0, 95.0, 97.5, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0}))


def pct_key(p: float) -> str:
    """50.0 -> "p50", 99.9 -> "p99.9"."""
    return "p" + (f"{p:g}")


class LatencyHistogram:
    """Record latencies in seconds; read percentiles in milliseconds."""

    def __init__(self) -> None:
        self._h = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)

    def record(self, seconds: float) -> None:
        us = round(max(seconds, 0.0) * 1e6)
        self._h.record_value(min(max(us, LOWEST_US), HIGHEST_US))

    def add(self, other: LatencyHistogram) -> None:
        """Add ``other``'s recorded counts to this one's, bucket by bucket: the result is exactly the
        histogram of both sets of values (percentiles are never averaged)."""
        if other.count:  # hdrh would take an empty histogram's min (0) as the merged min
            self._h.add(other._h)

    @classmethod
    def merged(cls, parts: list[LatencyHistogram]) -> LatencyHistogram:
        """One histogram holding every value recorded in ``parts`` (e.g. one per load process)."""
        out = cls()
        for part in parts:
            out.add(part)
        return out

    def counts(self) -> dict[int, int]:
        """{bucket value in us: count} of every non-empty bucket: two histograms with equal counts here
        give equal percentiles, min, max and mean."""
        return {item.value_iterated_to: item.count_at_value_iterated_to for item in self._h.get_recorded_iterator()}

    @property
    def count(self) -> int:
        return self._h.get_total_count()

    def percentile_ms(self, p: float) -> float:
        return self._h.get_value_at_percentile(p) / 1000 if self.count else float("nan")

    def summary_ms(self) -> dict[str, float]:
        """{"p50", "p90", "p95", "p99", "p99.9", "max", "min", "mean"} in ms (NaN when empty)."""
        if not self.count:
            nan = float("nan")
            return {**{pct_key(p): nan for p in PERCENTILES}, "max": nan, "min": nan, "mean": nan}
        values = self._h.get_percentile_to_value_dict(list(PERCENTILES))
        out = {pct_key(p): values[p] / 1000 for p in PERCENTILES}
        out["max"] = self._h.get_max_value() / 1000
        out["min"] = self._h.get_min_value() / 1000
        out["mean"] = self._h.get_mean_value() / 1000
        return out

    def cdf_ms(self) -> list[tuple[float, float]]:
        """[(percentile, latency_ms)] at CDF_PERCENTILES, for plots."""
        if not self.count:
            return []
        values = self._h.get_percentile_to_value_dict([float(p) for p in CDF_PERCENTILES])
        return [(float(p), values[float(p)] / 1000) for p in CDF_PERCENTILES if float(p) in values]

    def encode(self) -> str:
        """The histogram in HdrHistogram's compressed base64 form (any HdrHistogram library decodes it)."""
        return self._h.encode().decode("ascii")

    @classmethod
    def decode(cls, text: str) -> LatencyHistogram:
        out = cls()
        out._h.decode_and_add(text.encode("ascii"))
        return out
