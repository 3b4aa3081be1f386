"""ONNX Runtime: the CUDA execution provider with I/O binding on a GPU, the CPU provider elsewhere."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from service.backends.base import Backend
from service.errors import BackendUnavailable

log = logging.getLogger(__name__)
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def available_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return ort.get_available_providers()


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, onnx_path: Path, device: str, max_batch_size: int, cpu_threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable("onnxruntime is not installed (pip install -e '.[cpu]' or '.[gpu]')") from exc
        if not Path(onnx_path).is_file():
            raise BackendUnavailable(
                f"{onnx_path}: no ONNX model; build it with `python export/to_onnx.py --out {onnx_path}`"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable("ONNX Runtime has no CUDAExecutionProvider (install onnxruntime-gpu)")
            providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
            self.device = "cuda:0"
        else:
            options.intra_op_num_threads = cpu_threads
            providers = ["CPUExecutionProvider"]
            self.device = "cpu"
        self._session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
        if device == "cuda" and self._session.get_providers()[0] != "CUDAExecutionProvider":
            raise BackendUnavailable(
                f"ONNX Runtime fell back to {self._session.get_providers()}; CUDA EP failed to load"
            )
        input_type = self._session.get_inputs()[0].type
        self.precision = "fp16" if "float16" in input_type else self._weight_precision(onnx_path)
        self.max_batch_size = max_batch_size
        self._ort = ort

    @staticmethod
    def _weight_precision(onnx_path: Path) -> str:
        import onnx

        model = onnx.load(str(onnx_path), load_external_data=False)
        if any(node.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv") for node in model.graph.node):
            return "int8"
        return "fp32"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self.device == "cpu":
            return self._session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        # On the GPU, bind the input once and let ORT allocate the output on the device, then copy
        # back only the logits: the session.run path would add an extra host staging copy.
        binding = self._session.io_binding()
        binding.bind_cpu_input(INPUT_NAME, batch)
        binding.bind_output(OUTPUT_NAME, "cuda")
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]
