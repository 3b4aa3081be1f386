"""Prometheus metrics of the whole service, held by the engine process (its own registry, so tests can
run several engines in one process).

Front ends do not keep a registry: they send what they observe (request latency, errors, decode
time) to the engine in ``Observe`` messages, which ``apply`` records here. So ``/metrics`` on any
front end is one view over every process, and a front end that dies takes nothing with it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
GPU_BUCKETS_S = (0.0001, 0.00025, 0.0005, *LATENCY_BUCKETS_S)  # AlexNet at batch 1: 0.24 ms on an H100
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_latency = Histogram(
            "alexnet_request_duration_seconds",
            "HTTP request latency",
            ["route", "status"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "alexnet_batch_size", "Images per backend call (before padding)", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("alexnet_queue_depth", "Images waiting for inference", registry=r)
        self.queue_wait = Histogram(
            "alexnet_queue_wait_seconds",
            "Time from enqueue to the start of its batch",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.prepare_time = Histogram(
            "alexnet_batch_prepare_duration_seconds",
            "Per batch, assembling the backend's input: stacking and normalising crops; on the GPU path also "
            "decoding, resizing and cropping its JPEGs",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.inference_time = Histogram(
            "alexnet_inference_duration_seconds",
            "Per batch the backend ran: the backend call, softmax and top-k (its preparation is "
            "alexnet_batch_prepare_duration_seconds)",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        # CUDA events: each stage's span on its CUDA stream, where the two above are the threads' host time
        # (batch_runner): an upper bound on the GPU's work, host gaps included.
        self.prepare_gpu_time = Histogram(
            "alexnet_batch_prepare_gpu_seconds",
            "Per batch on CUDA: its preparation's span on the prepare stream (CUDA events), from before its "
            "first work to its input ready: decoding, resizing, normalising, and host work in between",
            buckets=GPU_BUCKETS_S,
            registry=r,
        )
        self.inference_gpu_time = Histogram(
            "alexnet_inference_gpu_seconds",
            "Per batch on CUDA: its inference's span on the backend's stream (CUDA events), from its input "
            "ready to its logits, host work in between (launches, the runtime's own calls) included",
            buckets=GPU_BUCKETS_S,
            registry=r,
        )
        self.preprocess_time = Histogram(
            "alexnet_preprocess_duration_seconds",
            "Front-end time per image: decode, resize and crop on the CPU path; the header check of a JPEG "
            "sent to the GPU decoder (observed again when it is declined and decoded on the CPU)",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.decode_memory_wait = Histogram(
            "alexnet_decode_memory_wait_seconds",
            "Time a large image waited for the server's decode memory budget (decode_memory_mb) before decoding",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.images = Counter(
            "alexnet_images_total",
            "Images through a batch the backend ran (a JPEG the engine declined there counts again when its "
            "crop comes back)",
            registry=r,
        )
        self.errors = Counter("alexnet_errors_total", "Requests answered with an error, by kind", ["kind"], registry=r)
        self.backend_failures = Counter("alexnet_backend_failures_total", "Batches whose inference raised", registry=r)
        self.ready = Gauge("alexnet_ready", "1 when the model is loaded, warm and healthy", registry=r)
        self.decoded = Counter(
            "alexnet_images_decoded_total",
            "Images by where they were decoded: cpu (a front end), gpu (nvJPEG in the engine), tensor (sent "
            "as float32); declined: JPEGs the GPU decoder did not take, sent back to a front end and counted "
            "again under cpu",
            ["path"],
            registry=r,
        )
        self.frontends = Gauge("alexnet_frontends_connected", "HTTP front-end processes connected", registry=r)

    def apply(self, events: list[tuple]) -> None:
        """Record the events a front end observed (``EngineClient.observe``, sent in ``Observe`` messages)."""
        for event in events:
            if event[0] == "request":
                _, route, status, seconds = event
                self.request_latency.labels(route, status).observe(seconds)
            elif event[0] == "error":
                self.errors.labels(event[1]).inc()
            elif event[0] == "preprocess":
                self.preprocess_time.observe(event[1])
            elif event[0] == "decode_memory_wait":
                self.decode_memory_wait.observe(event[1])

    def observe_gpu_seconds(self, prepare: float, inference: float) -> None:
        """One batch's two stages' spans on their CUDA streams (``EngineRunner.on_gpu_seconds``)."""
        self.prepare_gpu_time.observe(prepare)
        self.inference_gpu_time.observe(inference)

    def render(self) -> bytes:
        return generate_latest(self.registry)
