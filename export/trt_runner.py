"""Run a serialized TensorRT engine on a numpy batch (TensorRT 10 and 11 name-based I/O API).

Device buffers are torch CUDA tensors, so nothing beyond ``tensorrt`` and the CUDA build of torch is
needed (TensorRT's own samples use cuda-python for the same job). Imported only where TensorRT runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class EngineRunError(RuntimeError):
    """The engine could not be loaded or run."""


class TrtEngineRunner:
    """One engine, one execution context, one CUDA stream; ``infer`` is not thread-safe."""

    def __init__(self, trt: Any, serialized_engine: bytes, device: int = 0) -> None:
        import torch

        self._torch = torch
        self._device = torch.device("cuda", device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(serialized_engine)
        if self.engine is None:
            raise EngineRunError(
                "TensorRT could not deserialize the engine (built by another TensorRT version "
                "or for another GPU?); rebuild it with export/to_trt.py on this host"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineRunError(f"expected one input and one output, engine has {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        try:
            self._in_dtype = dtypes[self.engine.get_tensor_dtype(self.input_name)]
            self._out_dtype = dtypes[self.engine.get_tensor_dtype(self.output_name)]
        except KeyError as exc:
            raise EngineRunError(f"unsupported engine I/O data type {exc}") from None
        self._stream = torch.cuda.Stream(device=self._device)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, classes) float32 for ``batch`` (N, C, H, W) float32; N within the engine's profile."""
        torch = self._torch
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self._device, self._in_dtype, non_blocking=False)
            if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
                raise EngineRunError(f"input shape {tuple(x.shape)} is outside the engine's optimization profile")
            out_shape = tuple(self.context.get_tensor_shape(self.output_name))
            y = torch.empty(out_shape, dtype=self._out_dtype, device=self._device)
            self.context.set_tensor_address(self.input_name, x.data_ptr())
            self.context.set_tensor_address(self.output_name, y.data_ptr())
            if not self.context.execute_async_v3(self._stream.cuda_stream):
                raise EngineRunError("execute_async_v3 failed; see TensorRT's log above")
            self._stream.synchronize()
            return y.float().cpu().numpy()
