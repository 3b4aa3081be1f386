"""TensorRT: a serialized engine checked against this GPU (its sidecar), run by export.trt_runner.

Without TensorRT, a CUDA GPU, or an engine built for this GPU and TensorRT version, the constructor
raises BackendUnavailable and ``auto`` moves on to the next backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.backends.base import Backend
from service.errors import BackendUnavailable


class TensorRTBackend(Backend):
    name = "tensorrt"
    device = "cuda:0"

    def __init__(self, engine_path: Path, max_batch_size: int, onnx_path: Path) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailable(
                "tensorrt is not installed (use the Docker image, or pip install -e '.[gpu]')"
            ) from exc
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("TensorRT needs a CUDA GPU and none is visible")
        from export.trt_runner import EngineRunError, TrtEngineRunner
        from export.trt_sidecar import SidecarError, check_engine_compatible, file_sha256, read_sidecar

        try:
            # Hashed only once TensorRT and a GPU are known to be here: the engine must have been built
            # from this very ONNX file, or its answers could differ from it.
            check_engine_compatible(engine_path, onnx_sha256=file_sha256(onnx_path))
            self.precision = read_sidecar(engine_path).precision
            self._runner = TrtEngineRunner(trt, Path(engine_path).read_bytes())
        except (SidecarError, EngineRunError) as exc:
            raise BackendUnavailable(f"{exc}; rebuild it with `python export/to_trt.py`") from exc
        engine = self._runner.engine
        _, _, profile_max = engine.get_tensor_profile_shape(self._runner.input_name, 0)
        if max_batch_size > profile_max[0]:
            raise BackendUnavailable(
                f"max_batch_size {max_batch_size} exceeds the engine's profile maximum {profile_max[0]}; "
                "lower it or rebuild the engine with a larger --max-batch"
            )
        self.max_batch_size = max_batch_size

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self._runner.infer(batch)
