"""The two ceilings a served model is measured against, both in this process, without HTTP:

(a) engine:   ``backend.infer`` alone on preprocessed batches; img/s per batch size.
(b) pipeline: the best in-process overlap of decoding and batched inference: decode threads, one
              per usable CPU (the service's own ``preprocess``), feeding the service's ``Batcher``,
              one inference thread, driven by N concurrent in-process callers. No HTTP, no
              processes, no IPC: what one process could do if serving cost nothing. The bench
              runs it with the service's malloc settings (``service.process.reuse_freed_memory``).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from export.onnx_metadata import ModelMetadata
from loadtest.histogram import LatencyHistogram
from service.backends import Selection, select_backend
from service.backends.base import Backend
from service.batcher import Batcher
from service.cpus import usable_cpus
from service.metrics import Metrics
from service.postprocess import top_k
from service.preprocess import PreprocessConfig, preprocess
from service.settings import Settings


def load_backend(name: str, onnx: Path, device: str) -> tuple[Selection, Settings]:
    """(selection, settings): backend ``name`` loaded and warmed in this process as the service would
    load it from ``onnx`` on ``device``. Raises ``service.errors.BackendUnavailable`` where it cannot
    load here; each caller decides whether that skips a row or fails the run."""
    settings = Settings(onnx=onnx, backend=name, device=device)
    selection = select_backend(settings)
    try:
        selection.backend.warmup(selection.metadata.input_size)
    except BaseException:
        selection.backend.close()
        raise
    return selection, settings


def engine_ceiling(
    backend: Backend, input_size: int, batch_sizes: list[int], time_s: float = 3.0, min_iters: int = 3
) -> list[dict]:
    """[{"batch", "img_per_s", "ms_per_batch"}]: each size warmed once, then run for ``time_s``."""
    out = []
    rng = np.random.default_rng(0)
    for n in batch_sizes:
        if n > backend.max_batch_size:
            continue
        batch = rng.standard_normal((n, 3, input_size, input_size), dtype=np.float32)
        backend.infer(batch)  # warm: allocations, kernel choice
        iters, start = 0, time.perf_counter()
        while iters < min_iters or time.perf_counter() - start < time_s:
            backend.infer(batch)
            iters += 1
        elapsed = time.perf_counter() - start
        out.append({"batch": n, "img_per_s": n * iters / elapsed, "ms_per_batch": elapsed / iters * 1000})
    return out


def preprocess_time_ms(images: list[bytes], config: PreprocessConfig, rounds: int = 3) -> float:
    """Mean single-thread decode + preprocess time of one image, ms."""
    start = time.perf_counter()
    for _ in range(rounds):
        for data in images:
            preprocess(data, config)
    return (time.perf_counter() - start) / (rounds * len(images)) * 1000


async def run_pipeline(
    backend: Backend,
    meta: ModelMetadata,
    settings: Settings,
    images: list[bytes],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
) -> dict:
    metrics = Metrics()
    batcher = Batcher(
        backend,
        metrics,
        settings.max_batch_size,
        settings.max_delay_ms,
        settings.queue_capacity,
        stall_after_s=settings.request_timeout_s,
    )
    batcher.start()
    config = PreprocessConfig.for_model(meta, settings.max_image_pixels, settings.jpeg_draft)
    # One process's decode threads: ALEXNET_DECODE_THREADS, else every CPU it may use. Not the service's
    # per-front-end share (settings.decoder_threads): with 15 front ends on 16 CPUs that is 1 thread,
    # which held the H200 host's pipeline to ~230 img/s at batch 1.0 (2026-12-04).
    decoder = ThreadPoolExecutor(settings.decode_threads or usable_cpus(), thread_name_prefix="decode")
    loop = asyncio.get_running_loop()
    latency = LatencyHistogram()
    t0 = time.perf_counter()
    measure_from, end = t0 + warmup_s, t0 + warmup_s + duration_s
    done = 0

    async def caller(index: int) -> None:
        nonlocal done
        i = index
        while (now := time.perf_counter()) < end:
            data = images[i % len(images)]
            i += concurrency
            tensor = await loop.run_in_executor(decoder, preprocess, data, config)
            (future,) = batcher.submit([tensor], time.monotonic() + settings.request_timeout_s)
            top_k((await future).logits, meta.labels, 5)
            finished = time.perf_counter()
            if now >= measure_from and finished <= end:
                latency.record(finished - now)
                done += 1

    try:
        await asyncio.gather(*(caller(c) for c in range(concurrency)))
    finally:
        await batcher.stop()
        decoder.shutdown(wait=False, cancel_futures=True)
    batch = metrics.batch_size.collect()[0].samples
    count = next(s.value for s in batch if s.name.endswith("_count"))
    total = next(s.value for s in batch if s.name.endswith("_sum"))
    return {
        "concurrency": concurrency,
        "images": done,
        "img_per_s": done / duration_s,
        "latency_ms": latency.summary_ms(),
        "batch_size_mean": total / count if count else None,
    }


def pipeline_ceiling(
    backend: Backend,
    meta: ModelMetadata,
    settings: Settings,
    images: list[bytes],
    concurrency: int,
    duration_s: float = 5.0,
    warmup_s: float = 1.0,
) -> dict:
    """{"concurrency", "images", "img_per_s", "latency_ms": {...}, "batch_size_mean"}; one image per call."""
    return asyncio.run(run_pipeline(backend, meta, settings, images, concurrency, duration_s, warmup_s))
