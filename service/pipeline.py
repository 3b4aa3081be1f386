"""The transport-independent request path: decode -> batch -> infer -> top-k.

Routes (``/classify`` and the Open Inference Protocol) call this; nothing here knows about HTTP.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from export.onnx_metadata import ModelMetadata
from service.batcher import Batcher, InferenceResult
from service.errors import DeadlineExceeded, ServiceError
from service.metrics import Metrics
from service.postprocess import top_k
from service.preprocess import PreprocessConfig, preprocess


@dataclass
class Prepared:
    tensor: np.ndarray  # (3, crop, crop) float32
    preprocess_ms: float


class Pipeline:
    def __init__(
        self,
        batcher: Batcher,
        metadata: ModelMetadata,
        preprocess_config: PreprocessConfig,
        decode_threads: int,
        metrics: Metrics,
    ) -> None:
        self.batcher = batcher
        self.metadata = metadata
        self.preprocess_config = preprocess_config
        self._decoder = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode")
        self._metrics = metrics

    def close(self) -> None:
        self._decoder.shutdown(wait=False, cancel_futures=True)

    def _prepare_one(self, data: bytes) -> Prepared:
        start = time.perf_counter()
        tensor = preprocess(data, self.preprocess_config)
        elapsed = time.perf_counter() - start
        self._metrics.preprocess_time.observe(elapsed)
        return Prepared(tensor, elapsed * 1000)

    async def prepare(self, images: list[bytes]) -> list[Prepared]:
        """Decode and preprocess every image on the decode threads, off the event loop.

        The first bad image's ServiceError is raised, naming which image it was when there are several.
        """
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(
            *(loop.run_in_executor(self._decoder, self._prepare_one, data) for data in images),
            return_exceptions=True,
        )
        for index, result in enumerate(results):
            if isinstance(result, ServiceError):
                if len(images) > 1:
                    result.message = f"image {index}: {result.message}"
                raise result
            if isinstance(result, BaseException):
                raise result
        return results  # type: ignore[return-value]

    async def infer(self, tensors: list[np.ndarray], deadline: float) -> list[InferenceResult]:
        """Queue the tensors, wait for their logits until ``deadline`` (time.monotonic())."""
        futures = self.batcher.submit(tensors, deadline)
        try:
            _done, pending = await asyncio.wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()  # the batcher skips cancelled images: no batch slot is spent on them
            raise
        if pending:
            for future in futures:
                future.cancel()
            raise DeadlineExceeded("the request's deadline passed before inference finished; retry later")
        return [future.result() for future in futures]

    def classify(self, results: list[InferenceResult], k: int) -> list[list[dict]]:
        return [top_k(result.logits, self.metadata.labels, k) for result in results]
