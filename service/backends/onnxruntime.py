"""ONNX Runtime: the CUDA execution provider with I/O binding on a GPU, the CPU provider elsewhere.

On CUDA (with PyTorch present, as it is wherever the CUDA provider finds its libraries) the backend
takes tensors: the engine's batch is bound to ONNX Runtime by its device pointer, and ONNX Runtime
runs on the backend's own CUDA stream (``user_compute_stream``), so normalising, inference and
top-k stay on the GPU in order, with no host round trip between them.

On CUDA, batches are padded to the powers of two that warm-up ran (``batch_sizes``): cuDNN searches
its algorithms for each new input shape, which must happen before ``/readyz`` says ready, not on a
client's request. On the CPU any size runs unpadded: there a new batch size costs no more on its
first run (measured on the 2-core host: batch 17 took 113 ms the first time and after), and padding
17 to 32 would double the work.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from export.onnx_metadata import INPUT_NAME, OUTPUT_NAME
from export.ort import import_onnxruntime, int8_kernels_saturate
from service.backends.base import Backend, powers_of_two_up_to
from service.errors import BackendUnavailable

log = logging.getLogger(__name__)
QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv")


def onnx_precision(onnx_path: Path) -> str:
    """``int8`` (Q/DQ or QLinear nodes), ``fp16`` (float16 weights, or a float16 input), else ``fp32``,
    read from the graph itself: an fp16 export keeps a float32 input and output around float16 weights."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    graph = model.graph
    if any(node.op_type in QUANTIZED_OPS for node in graph.node):
        return "int8"
    float16 = onnx.TensorProto.FLOAT16
    if any(i.data_type == float16 for i in graph.initializer) or any(
        i.type.tensor_type.elem_type == float16 for i in graph.input
    ):
        return "fp16"
    return "fp32"


@contextmanager
def _output_collected() -> Iterator[list[str]]:
    """Collect what is written to file descriptors 1 and 2 inside the block, and Python warnings.

    ONNX Runtime says why its CUDA provider did not load (a missing libcudnn, a CUDA version it was
    not built for) only in its C++ log on stderr, and ``preload_dlls`` prints to stdout; both are
    captured so the refusal can quote them, and written back out afterwards so nothing is hidden.
    """
    lines: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        saved = os.dup(1), os.dup(2)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            sys.stderr.write(text)
            lines.extend(line.strip() for line in text.splitlines() if line.strip())
            for warning in caught:
                log.warning("%s", warning.message)
                lines.append(str(warning.message))


def _why(lines: list[str], limit_chars: int = 600) -> str:
    """The lines that explain a provider failure, or all of them; shortened to ``limit_chars``."""
    telling = [line for line in lines if any(w in line.lower() for w in ("cuda", "cudnn", "fail", "error", "provider"))]
    text = " | ".join(telling or lines) or "ONNX Runtime logged no reason"
    return text if len(text) <= limit_chars else text[: limit_chars - 3] + "..."


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, onnx_path: Path, device: str, max_batch_size: int, cpu_threads: int) -> None:
        try:
            ort = import_onnxruntime()
        except ImportError as exc:
            raise BackendUnavailable(str(exc)) from exc
        if not Path(onnx_path).is_file():
            raise BackendUnavailable(
                f"{onnx_path}: no ONNX model; build it with `python export/to_onnx.py --out {onnx_path}`"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        self.max_batch_size = max_batch_size
        self.precision = onnx_precision(onnx_path)
        if device != "cuda" and self.precision == "int8" and (why := int8_kernels_saturate()) is not None:
            # Right answers first: the Q/DQ pairs stay unfused (float math on int8-rounded values).
            log.warning("%s: %s; running it unfused, slower than the fp32 model would be", onnx_path, why)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self._stream = None
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable("ONNX Runtime has no CUDAExecutionProvider (install onnxruntime-gpu)")
            self.device = "cuda:0"
            self.batch_sizes = powers_of_two_up_to(max_batch_size)
            self._session, self._stream = self._cuda_session(ort, onnx_path, options)
            self.takes_tensors = self._stream is not None
            if self.takes_tensors:
                self._tensor_io  # noqa: B018  # an input or output it cannot bind is refused now, not on a batch
        else:
            options.intra_op_num_threads = cpu_threads
            self.device = "cpu"
            self._session = ort.InferenceSession(
                str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
            )

    @staticmethod
    def _cuda_session(ort, onnx_path: Path, options):
        """(a session on the CUDA provider, the torch CUDA stream it runs on or None without PyTorch), or
        BackendUnavailable quoting ONNX Runtime's reason."""
        cuda_options: dict[str, object] = {"device_id": 0}
        stream = None
        try:
            import torch  # loads CUDA and cuDNN as torch's wheels ship them: ORT finds them
        except ImportError:
            pass
        else:
            if torch.cuda.is_available():
                # Not the default stream: ONNX Runtime takes a handle of 0 as "none given".
                stream = torch.cuda.Stream(device=0)
                cuda_options["user_compute_stream"] = str(stream.cuda_stream)
        providers = [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
        with _output_collected() as said:
            try:
                if hasattr(ort, "preload_dlls"):  # 1.21+: CUDA and cuDNN from the nvidia-* wheels
                    ort.preload_dlls()
                session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
            except Exception as exc:  # ORT raises several types (Fail, RuntimeException, RuntimeError)
                failure: Exception | None = exc
            else:
                failure = None
        if failure is not None:
            raise BackendUnavailable(
                f"ONNX Runtime could not start its CUDA provider: {type(failure).__name__}: {failure} ({_why(said)})"
            ) from failure
        if session.get_providers()[0] != "CUDAExecutionProvider":
            raise BackendUnavailable(
                f"ONNX Runtime fell back to {session.get_providers()}; its CUDA provider did not load: {_why(said)}"
            )
        return session, stream

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self.device == "cpu":
            return self._session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        # On the GPU, bind the input once and let ORT allocate the output on the device, then copy
        # back only the logits: the session.run path would add an extra host staging copy.
        binding = self._session.io_binding()
        binding.bind_cpu_input(INPUT_NAME, batch)
        binding.bind_output(OUTPUT_NAME, "cuda")
        self._session.run_with_iobinding(binding)
        if self._stream is not None:  # ORT does not wait for a stream it was handed (user_compute_stream)
            self._stream.synchronize()  # before the copy back, which does not order itself after it
        return binding.copy_outputs_to_cpu()[0]

    # -- the tensor path (on CUDA; the CPU provider runs it too, on CPU tensors) -----------------------
    @functools.cached_property
    def _tensor_io(self) -> tuple:
        """(input torch dtype, its numpy dtype, output torch dtype, its numpy dtype, classes), read once."""
        inputs, output = self._session.get_inputs()[0], self._session.get_outputs()[0]
        return (*_tensor_dtypes(inputs.type), *_tensor_dtypes(output.type), output.shape[1])

    @property
    def input_dtype(self):
        return self._tensor_io[0]

    def stream_context(self):
        if self._stream is None:
            return contextlib.nullcontext()
        import torch

        return torch.cuda.stream(self._stream)

    def infer_tensor(self, batch, ready=None):
        """See ``Backend.infer_tensor``: ``batch`` is bound by its pointer and the logits are written into a
        tensor on the same device; on CUDA both on the backend's stream, after ``ready``."""
        import torch

        in_torch, in_numpy, out_torch, out_numpy, classes = self._tensor_io
        if batch.dtype != in_torch or not batch.is_contiguous():
            raise ValueError(f"ONNX Runtime takes a contiguous {in_torch} batch, not {batch.dtype} in this layout")
        device = batch.device
        producer = torch.cuda.current_stream(device) if self._stream is not None else None  # the caller's
        with self.stream_context():
            if self._stream is not None:
                if ready is not None:
                    self._stream.wait_event(ready)
                else:
                    self._stream.wait_stream(producer)
                batch.record_stream(self._stream)  # its memory is not reused before ONNX Runtime has read it
            logits = torch.empty((batch.shape[0], classes), dtype=out_torch, device=device)
        binding = self._session.io_binding()
        index = device.index or 0
        binding.bind_input(INPUT_NAME, device.type, index, in_numpy, tuple(batch.shape), batch.data_ptr())
        binding.bind_output(OUTPUT_NAME, device.type, index, out_numpy, tuple(logits.shape), logits.data_ptr())
        self._session.run_with_iobinding(binding)
        return logits


def _tensor_dtypes(onnx_type: str):
    """(torch dtype, numpy dtype) of an ONNX Runtime tensor type such as ``tensor(float)``."""
    import torch

    known = {"tensor(float)": (torch.float32, np.float32), "tensor(float16)": (torch.float16, np.float16)}
    if onnx_type not in known:
        raise BackendUnavailable(f"the ONNX model's input and output must be float or float16, not {onnx_type}")
    return known[onnx_type]
