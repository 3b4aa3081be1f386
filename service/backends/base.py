"""The one small interface every inference backend implements."""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from typing import Any

import numpy as np


def powers_of_two_up_to(limit: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to ``limit``, and ``limit`` itself: the batch shapes warmed up or captured."""
    return tuple(sorted({2**i for i in range(limit.bit_length()) if 2**i <= limit} | {limit}))


def bucket_for(n: int, buckets: tuple[int, ...] | None) -> int:
    """The smallest batch size in ``buckets`` that holds ``n`` (``n`` itself when ``buckets`` is None:
    any size runs); ValueError when ``n`` is over the largest."""
    if not buckets:
        return n
    bucket = next((b for b in buckets if b >= n), None)
    if bucket is None:
        raise ValueError(f"batch of {n} is over max_batch_size {buckets[-1]}")
    return bucket


class Backend(ABC):
    """Runs preprocessed batches; knows nothing of HTTP, queues or labels.

    ``infer`` is called from one worker thread per ``max_concurrency`` slot, never concurrently on
    the same slot. ``batch_sizes`` lists the shapes it can run (the batcher pads up to the next one);
    ``None`` means any size from 1 to ``max_batch_size``.

    A backend with ``takes_tensors`` also runs ``infer_tensor`` on PyTorch tensors already on its
    ``device``: the engine then sends uint8 crops there, normalises them there into ``input_dtype``
    (and ``channels_last`` layout), may decode JPEGs there, and reads back only top-k rows.
    """

    name: str  # e.g. "onnxruntime"
    device: str  # "cpu" or "cuda:0"
    precision: str  # "fp32", "fp16", "int8"
    max_batch_size: int
    batch_sizes: tuple[int, ...] | None = None
    max_concurrency: int = 1

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 -> (N, num_classes) float32 logits."""

    takes_tensors: bool = False
    input_dtype: Any = None  # a torch.dtype, where takes_tensors
    channels_last: bool = False

    def infer_tensor(self, batch: Any, ready: Any = None) -> Any:
        """(B, 3, S, S) torch tensor in ``input_dtype`` on ``device``, B one of ``batch_sizes`` -> (B, classes)
        logits on ``device``, valid until the next call: read them inside ``stream_context()``. ``ready``:
        a ``torch.cuda.Event`` the input's producer recorded on its own stream (None: the input was made on
        the caller's current stream, which the backend's then waits for)."""
        raise NotImplementedError(f"the {self.name} backend takes host batches only (takes_tensors is False)")

    def stream_context(self) -> contextlib.AbstractContextManager:
        """Where work on ``infer_tensor``'s outputs must be queued (the backend's CUDA stream)."""
        return contextlib.nullcontext()

    def warmup(self, input_size: int, stop: threading.Event | None = None) -> None:
        """Run every batch shape the service will use once, so the first requests pay no compile cost;
        return early, between two batches, once ``stop`` is set (the engine was told to stop)."""
        for n in self.batch_sizes or powers_of_two_up_to(self.max_batch_size):
            if stop is not None and stop.is_set():
                return
            self.infer(np.zeros((n, 3, input_size, input_size), dtype=np.float32))

    def describe(self) -> dict:
        return {
            "name": self.name,
            "device": self.device,
            "precision": self.precision,
            "max_batch_size": self.max_batch_size,
            "batch_sizes": list(self.batch_sizes) if self.batch_sizes else None,
        }

    def close(self) -> None:
        """Free device memory and threads."""
