"""The server's own view of a step: its Prometheus counters and histograms, scraped before and after.

Only differences matter (the server was running before the step), so a histogram's buckets, count and
sum are subtracted; quantiles are then estimated from the bucket bounds the way Prometheus'
``histogram_quantile`` does (linear within a bucket).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

BATCH = "alexnet_batch_size"
QUEUE_WAIT = "alexnet_queue_wait_seconds"
INFERENCE = "alexnet_inference_duration_seconds"
PREPARE = "alexnet_batch_prepare_duration_seconds"
PREPROCESS = "alexnet_preprocess_duration_seconds"
# On CUDA, each stage's span per batch on its CUDA stream (CUDA events), where PREPARE and INFERENCE are
# host time: an upper bound on the GPU's work (host gaps while the stream had nothing queued count).
PREPARE_GPU = "alexnet_batch_prepare_gpu_seconds"
INFERENCE_GPU = "alexnet_inference_gpu_seconds"
ERRORS = "alexnet_errors_total"
IMAGES = "alexnet_images_total"
# Images by where they were decoded (cpu, gpu, tensor) and JPEGs the GPU decoder declined (then counted
# again under cpu): a GPU figure whose images went back to the CPU is a CPU figure.
DECODED = "alexnet_images_decoded_total"
# Labelled by route and status: its answered (200) requests on every route but /metrics (the scrapes),
# summed into one histogram under this name: the server's own time per request, from its front end's
# middleware to the last byte handed to uvicorn. The client's latency less this is the client's and the
# kernel's share, and uvicorn's parsing.
REQUEST = "alexnet_request_duration_seconds"
REQUEST_OK = REQUEST + "{status=200}"


@dataclass
class Histogram:
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count
    count: float = 0.0
    sum: float = 0.0

    def minus(self, before: Histogram) -> Histogram:
        return Histogram(
            {le: c - before.buckets.get(le, 0.0) for le, c in self.buckets.items()},
            self.count - before.count,
            self.sum - before.sum,
        )

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else float("nan")

    def quantile(self, q: float) -> float:
        """Estimated q-quantile (0..1), linear within the bucket; the last finite bound caps it."""
        if self.count <= 0:
            return float("nan")
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for le in sorted(self.buckets):
            cumulative = self.buckets[le]
            if cumulative >= rank:
                if math.isinf(le):
                    return lower_bound
                width = cumulative - lower_count
                return lower_bound + (le - lower_bound) * ((rank - lower_count) / width if width else 1.0)
            lower_bound, lower_count = le, cumulative
        return lower_bound


@dataclass
class Snapshot:
    histograms: dict[str, Histogram] = field(default_factory=dict)
    counters: dict[str, dict[tuple, float]] = field(default_factory=dict)  # name -> labels -> value


def parse(text: str) -> Snapshot:
    """Prometheus text exposition -> histograms (unlabelled ones) and counters by label values."""
    snap = Snapshot()
    for family in text_string_to_metric_families(text):
        if family.type == "histogram" and family.name == REQUEST:
            snap.histograms[REQUEST_OK] = _answered_requests(family.samples)
        elif family.type == "histogram":
            hist = Histogram()
            for sample in family.samples:
                if sample.labels.keys() - {"le"}:
                    continue  # labelled histograms are not needed here
                if sample.name.endswith("_bucket"):
                    hist.buckets[float(sample.labels["le"])] = sample.value
                elif sample.name.endswith("_count"):
                    hist.count = sample.value
                elif sample.name.endswith("_sum"):
                    hist.sum = sample.value
            snap.histograms[family.name] = hist
        elif family.type == "counter":
            values = snap.counters.setdefault(family.name + "_total", {})
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    values[tuple(sorted(sample.labels.items()))] = sample.value
    return snap


def _answered_requests(samples) -> Histogram:
    """REQUEST's samples -> one histogram of its 200s on every route but /metrics (see REQUEST_OK)."""
    hist = Histogram()
    for sample in samples:
        if sample.labels.get("status") != "200" or sample.labels.get("route") == "/metrics":
            continue
        if sample.name.endswith("_bucket"):
            le = float(sample.labels["le"])
            hist.buckets[le] = hist.buckets.get(le, 0.0) + sample.value
        elif sample.name.endswith("_count"):
            hist.count += sample.value
        elif sample.name.endswith("_sum"):
            hist.sum += sample.value
    return hist


def step_summary(before: Snapshot, after: Snapshot) -> dict:
    """What the server did between two scrapes: batches, batch size, queue wait, inference, its own time
    per answered request, errors."""
    out: dict = {}
    if BATCH in after.histograms:
        batch = after.histograms[BATCH].minus(before.histograms.get(BATCH, Histogram()))
        out["batches"] = int(batch.count)
        out["batch_size_mean"] = batch.mean
        out["batch_size_p50"] = batch.quantile(0.5)
        out["batch_size_max_bucket"] = (
            next((le for le in sorted(batch.buckets) if batch.buckets[le] >= batch.count), float("nan"))
            if batch.count
            else float("nan")
        )
    for name, key in (
        (QUEUE_WAIT, "queue_wait"),
        (PREPARE, "prepare"),
        (INFERENCE, "inference"),
        (PREPARE_GPU, "prepare_gpu"),
        (INFERENCE_GPU, "inference_gpu"),
        (PREPROCESS, "preprocess"),
        (REQUEST_OK, "request"),
    ):
        if name in after.histograms:
            h = after.histograms[name].minus(before.histograms.get(name, Histogram()))
            out[f"{key}_mean_ms"] = h.mean * 1000
            out[f"{key}_p50_ms"] = h.quantile(0.5) * 1000
            out[f"{key}_p99_ms"] = h.quantile(0.99) * 1000
    if IMAGES in after.counters:
        out["images"] = int(sum(after.counters[IMAGES].values()) - sum(before.counters.get(IMAGES, {}).values()))
    if ERRORS in after.counters:
        out["errors"] = _deltas(before, after, ERRORS, "kind")
    if DECODED in after.counters:
        out["decoded"] = _deltas(before, after, DECODED, "path")
    return out


def _deltas(before: Snapshot, after: Snapshot, name: str, label: str) -> dict[str, int]:
    """A labelled counter's increase over the step, by the value of ``label``; those that did not move left out."""
    deltas = {}
    for labels, value in after.counters[name].items():
        delta = value - before.counters.get(name, {}).get(labels, 0.0)
        if delta:
            deltas[dict(labels).get(label, "?")] = int(delta)
    return deltas
