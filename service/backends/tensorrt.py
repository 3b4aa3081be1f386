"""TensorRT: a serialized engine checked against this GPU, torch CUDA tensors as its I/O buffers.

Written against the API common to TensorRT 10 and 11 (named I/O tensors, ``execute_async_v3``).
Without TensorRT or a CUDA GPU the constructor raises BackendUnavailable, and ``auto`` moves on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.backends.base import Backend
from service.errors import BackendUnavailable

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, engine_path: Path, max_batch_size: int) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailable("tensorrt is not installed (use the Docker image, or pip install -e '.[gpu]')") from exc
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("TensorRT needs a CUDA GPU and none is visible")
        if not Path(engine_path).is_file():
            raise BackendUnavailable(f"{engine_path}: no engine; build one with `python export/to_trt.py`")
        from export.trt_sidecar import EngineMismatch, check_engine_compatible

        try:
            check_engine_compatible(engine_path)
        except (EngineMismatch, FileNotFoundError, ValueError) as exc:
            raise BackendUnavailable(f"{engine_path}: {exc}; rebuild it with `python export/to_trt.py`") from exc
        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self._engine is None:
            raise BackendUnavailable(f"{engine_path}: TensorRT could not deserialize the engine")
        self._context = self._engine.create_execution_context()
        _, _, profile_max = self._engine.get_tensor_profile_shape(INPUT_NAME, 0)
        if max_batch_size > profile_max[0]:
            raise BackendUnavailable(
                f"max_batch_size {max_batch_size} exceeds the engine's profile maximum {profile_max[0]}; "
                "lower it or rebuild the engine with a larger --max-batch"
            )
        dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        self._input_dtype = dtypes[self._engine.get_tensor_dtype(INPUT_NAME)]
        self._output_dtype = dtypes[self._engine.get_tensor_dtype(OUTPUT_NAME)]
        self._num_classes = self._engine.get_tensor_shape(OUTPUT_NAME)[1]
        self._stream = torch.cuda.Stream()
        self._input = torch.empty(tuple(profile_max[:1]) + tuple(profile_max[1:]), device="cuda", dtype=self._input_dtype)
        self._output = torch.empty((profile_max[0], self._num_classes), device="cuda", dtype=self._output_dtype)
        self.device = "cuda:0"
        self.precision = "fp16" if self._input_dtype == torch.float16 else "fp32"
        self.max_batch_size = max_batch_size

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        n = batch.shape[0]
        with torch.cuda.stream(self._stream):
            inp = self._input[:n]
            out = self._output[:n]
            inp.copy_(torch.from_numpy(batch).pin_memory().to("cuda", non_blocking=True))
            self._context.set_input_shape(INPUT_NAME, tuple(inp.shape))
            self._context.set_tensor_address(INPUT_NAME, inp.data_ptr())
            self._context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            return out.float().cpu().numpy()  # .cpu() synchronizes the stream
