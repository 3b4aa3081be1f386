"""TensorRT: a serialized engine checked against this GPU (its sidecar), run by export.trt_runner.

The engine must have been built on this GPU model by this TensorRT version, from the very ONNX file
its sidecar names (``alexnet.fp16.onnx`` for the fp16 engine the entrypoint builds, or the fp32
export), unchanged since, holding the weights of the ONNX model the service describes. Without
TensorRT, a CUDA GPU, or such an engine, the constructor raises BackendUnavailable and ``auto`` moves
on to the next backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.backends.base import Backend, powers_of_two_up_to
from service.errors import BackendUnavailable


def engine_batch_sizes(max_batch_size: int, profile_min: int, profile_max: int) -> tuple[int, ...]:
    """The batch shapes warmed up and padded to on an engine whose profile runs profile_min..profile_max:
    the powers of two up to ``max_batch_size`` (and it), none below the profile's minimum."""
    if not profile_min <= max_batch_size <= profile_max:
        raise BackendUnavailable(
            f"max_batch_size {max_batch_size} is outside the engine's profile ({profile_min}..{profile_max}); "
            f"set it within, or rebuild the engine with python export/to_trt.py --max-batch {max_batch_size}"
        )
    return tuple(n for n in powers_of_two_up_to(max_batch_size) if n >= profile_min)


class TensorRTBackend(Backend):
    name = "tensorrt"
    device = "cuda:0"
    takes_tensors = True  # the engine reads and writes device memory: batches stay on the GPU

    def __init__(self, engine_path: Path, max_batch_size: int, weights_sha256: str, precision: str = "auto") -> None:
        """``weights_sha256``: of the ONNX model the service takes its labels from; ``precision``: what
        was asked for (``auto`` takes the engine's own, which the entrypoint builds fp16)."""
        get = "use the Docker image, or pip install -e '.[gpu]'"
        try:
            import tensorrt as trt
        except ModuleNotFoundError as exc:
            raise BackendUnavailable(f"tensorrt is not installed ({get})") from exc
        except (ImportError, OSError) as exc:  # the bindings without the libraries they load
            raise BackendUnavailable(f"tensorrt is installed but cannot load its libraries ({exc}); {get}") from exc
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("TensorRT needs a CUDA GPU and none is visible")
        from export.trt_runner import EngineRunError, TrtEngineRunner
        from export.trt_sidecar import SidecarError, check_engine_compatible, file_sha256, read_sidecar, source_onnx

        try:
            sidecar = read_sidecar(engine_path)
            # Hashed only once TensorRT and a GPU are known to be here: the engine must come from the ONNX
            # file its sidecar names, unchanged, or its answers could differ from that file's.
            check_engine_compatible(engine_path, onnx_sha256=file_sha256(source_onnx(engine_path, sidecar)))
        except SidecarError as exc:
            raise BackendUnavailable(str(exc)) from exc
        rebuild = f"rebuild it with python export/to_trt.py --out {engine_path} (the entrypoint does on start)"
        if sidecar.model_metadata.get("weights_sha256") != weights_sha256:
            raise BackendUnavailable(
                f"{engine_path} holds weights {sidecar.model_metadata.get('weights')!r}, not those of the "
                f"ONNX model being served; {rebuild}"
            )
        if precision != "auto" and sidecar.precision != precision:
            raise BackendUnavailable(
                f"{engine_path} is an {sidecar.precision} engine and precision {precision} was asked for; "
                f"{rebuild} from the {precision} ONNX"
            )
        try:
            self._runner = TrtEngineRunner(trt, Path(engine_path).read_bytes())
        except EngineRunError as exc:
            raise BackendUnavailable(f"{exc}; {rebuild}") from exc
        profile = self._runner.engine.get_tensor_profile_shape(self._runner.input_name, 0)  # min, opt, max
        self.batch_sizes = engine_batch_sizes(max_batch_size, profile[0][0], profile[2][0])
        self.max_batch_size = max_batch_size
        self.precision = sidecar.precision

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self._runner.infer(batch)

    @property
    def input_dtype(self):
        return self._runner.input_dtype

    def stream_context(self):
        import torch

        return torch.cuda.stream(self._runner.stream)

    def infer_tensor(self, batch, ready=None):
        return self._runner.infer_tensor(batch, ready)
