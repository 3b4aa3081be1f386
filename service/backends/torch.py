"""PyTorch: fp16 + channels_last + CUDA graphs per batch bucket on a GPU, plain fp32 on the CPU."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch
from torch import nn

from service.backends.base import Backend, bucket_for, powers_of_two_up_to

log = logging.getLogger(__name__)


def cuda_graph_buckets(max_batch_size: int) -> tuple[int, ...]:
    """The batch sizes that each get one captured graph; the batcher pads up to the next one."""
    return powers_of_two_up_to(max_batch_size)


class TorchBackend(Backend):
    name = "torch"
    takes_tensors = True

    def __init__(
        self, model: nn.Module, device: str, precision: str, max_batch_size: int, input_size: int, cpu_threads: int
    ) -> None:
        self.max_batch_size = max_batch_size
        self.precision = precision
        self._input_size = input_size
        model = model.eval()
        if device == "cuda":
            self.device = "cuda:0"
            self._dtype = torch.float16 if precision == "fp16" else torch.float32
            self._model = model.to(self.device, dtype=self._dtype, memory_format=torch.channels_last)  # type: ignore[call-overload]
            self._buckets = cuda_graph_buckets(max_batch_size)
            self.batch_sizes = self._buckets
            self._stream = torch.cuda.Stream()
            # Every graph now, whatever --warmup says: a capture forbids unsafe CUDA calls from every
            # thread of the process (capture_error_mode "global"), and once the engine runs, its
            # prepare thread makes them (allocations, nvJPEG's synchronisation) at any moment.
            self._graphs = {n: self._capture(n) for n in self._buckets}
        else:
            self.device = "cpu"
            self.precision = "fp32"
            self._dtype = torch.float32
            torch.set_num_threads(cpu_threads)
            self._model = model

    def _capture(self, n: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor]:
        static_in = torch.zeros(
            (n, 3, self._input_size, self._input_size), device=self.device, dtype=self._dtype
        ).contiguous(memory_format=torch.channels_last)
        staging = torch.empty((n, 3, self._input_size, self._input_size), dtype=torch.float32).pin_memory()
        # static_in was zeroed on the current stream; the capture stream must not read it before that.
        self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream), torch.inference_mode():
            for _ in range(3):  # cuDNN picks its algorithms on the first runs, outside the graph
                self._model(static_in)
            self._stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                static_out = self._model(static_in)
        return graph, staging, static_in, static_out

    def _bucket(self, n: int) -> int:
        return bucket_for(n, self._buckets)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self.device == "cpu":
            with torch.inference_mode():
                return self._model(torch.from_numpy(batch)).numpy()
        n = batch.shape[0]
        bucket = self._bucket(n)  # the batcher pads to a bucket; a direct caller may not
        graph, staging, static_in, static_out = self._graphs[bucket]
        # One graph and one staging buffer per bucket, used by one thread at a time (max_concurrency 1):
        # the previous replay has finished (its .cpu() synchronized) before the buffer is rewritten.
        staging[:n].copy_(torch.from_numpy(batch))
        if n < bucket:
            staging[n:].zero_()
        with torch.cuda.stream(self._stream):
            static_in.copy_(staging.to(self.device, non_blocking=True))
            graph.replay()
            logits = static_out[:n].float().cpu()  # synchronizes the stream
        return logits.numpy()

    # -- the tensor path: the engine hands over a normalised batch already on this device ----------
    @property
    def input_dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def channels_last(self) -> bool:  # type: ignore[override]
        return self.device != "cpu"

    def stream_context(self):
        return torch.cuda.stream(self._stream) if self.device != "cpu" else contextlib.nullcontext()

    def infer_tensor(self, batch: torch.Tensor, ready: torch.cuda.Event | None = None) -> torch.Tensor:
        """See ``Backend.infer_tensor``; on CUDA the result is the graph's output buffer."""
        if self.device == "cpu":
            with torch.inference_mode():
                return self._model(batch)
        bucket = self._bucket(batch.shape[0])
        if bucket != batch.shape[0]:
            raise ValueError(f"batch of {batch.shape[0]} is not a bucket {self._buckets}")
        graph, _staging, static_in, static_out = self._graphs[bucket]
        producer = torch.cuda.current_stream(batch.device)  # the caller's; inside the block it is ours
        with torch.cuda.stream(self._stream):
            if ready is not None:
                self._stream.wait_event(ready)
            else:
                self._stream.wait_stream(producer)
            batch.record_stream(self._stream)  # its memory is not reused before this stream has read it
            static_in.copy_(batch)
            graph.replay()
        return static_out

    def close(self) -> None:
        if self.device != "cpu":
            self._graphs.clear()  # frees each graph's private memory pool
            torch.cuda.empty_cache()
