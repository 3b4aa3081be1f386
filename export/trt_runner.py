"""Run a serialized TensorRT engine on a numpy batch or a CUDA tensor (TensorRT 10 and 11 name-based I/O API).

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
        self.stream = torch.cuda.Stream(device=self._device)  # TensorRT's work is queued here

    @property
    def input_dtype(self):
        """The engine's input dtype, as a torch.dtype (float32 for the engines export/to_trt.py builds)."""
        return self._in_dtype

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, classes) float32 for ``batch`` (N, C, H, W) float32; N within the engine's profile."""
        torch = self._torch
        with torch.cuda.stream(self.stream):
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self._device, self._in_dtype)
            logits = self.infer_tensor(x).float().cpu()  # .cpu() waits for the stream
        return logits.numpy()

    def infer_tensor(self, x, ready=None):
        """Logits (N, classes), in the engine's output dtype, for ``x`` (N, C, H, W): a contiguous tensor in
        ``input_dtype`` on this runner's GPU, N within the profile. TensorRT reads ``x`` and writes the
        result on ``stream``, after ``ready`` (an event the input's producer recorded; without one, after
        the current stream's work): read the result on ``stream`` too."""
        torch = self._torch
        if x.dtype != self._in_dtype or not x.is_contiguous():
            raise ValueError(f"the engine takes a contiguous {self._in_dtype} batch, not {x.dtype} in this layout")
        stream = self.stream
        if ready is not None:
            stream.wait_event(ready)
        else:
            stream.wait_stream(torch.cuda.current_stream(x.device))
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise EngineRunError(f"input shape {tuple(x.shape)} is outside the engine's optimization profile")
        with torch.cuda.stream(stream):  # the output's memory belongs to the stream that writes it
            y = torch.empty(
                tuple(self.context.get_tensor_shape(self.output_name)), dtype=self._out_dtype, device=x.device
            )
        for name, tensor in ((self.input_name, x), (self.output_name, y)):
            if not self.context.set_tensor_address(name, tensor.data_ptr()):
                raise EngineRunError(f"TensorRT refused the address of {name!r}; see TensorRT's log above")
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineRunError("execute_async_v3 failed; see TensorRT's log above")
        if x.is_cuda:
            x.record_stream(stream)  # x's memory is not reused before TensorRT has read it
        return y
