"""PNG plots of a run: latency percentiles against throughput, and the latency CDF of each step."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
from matplotlib.ticker import ScalarFormatter

from loadtest.histogram import PERCENTILES, pct_key
from loadtest.step import StepResult
from model.atomic_write import atomic_output


def latency_vs_throughput(results: list[StepResult], path: Path, title: str = "") -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    ordered = sorted(results, key=lambda r: r.rps)
    x = [r.rps for r in ordered]
    for p in PERCENTILES:
        ax.plot(x, [r.latency.percentile_ms(p) for r in ordered], marker="o", label=pct_key(p))
    for r in ordered:
        ax.annotate(
            r.config.label,
            (r.rps, r.latency.percentile_ms(50)),
            fontsize=7,
            alpha=0.7,
            textcoords="offset points",
            xytext=(3, -10),
        )
    ax.set_xlabel("throughput, requests/s")
    ax.set_ylabel("latency, ms")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="latency")
    ax.set_title(title or "Latency percentiles vs throughput")
    fig.tight_layout()
    _save(fig, path)


def latency_cdf(results: list[StepResult], path: Path, title: str = "") -> None:
    """x: latency (log); y: percentile on a 'nines' scale, so the tail is as readable as the median."""
    import math

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        points = [(p, ms) for p, ms in r.latency.cdf_ms() if p < 100]
        if not points:
            continue
        ax.plot([ms for _, ms in points], [-math.log10(1 - p / 100) for p, _ in points], label=r.config.label)
    ticks = [0, 50, 90, 99, 99.9, 99.99]
    ax.set_yticks([-math.log10(1 - t / 100) for t in ticks], [f"{t:g}%" for t in ticks])
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("latency, ms")
    ax.set_ylabel("percentile")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Latency CDF per step")
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    """The PNG whole or not at all (a run stopped while it is written leaves no half a plot), then closed."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
