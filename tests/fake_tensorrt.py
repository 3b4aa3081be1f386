"""A stand-in for the ``tensorrt`` module: the names our code calls, recording the calls.

Every name here exists in the real bindings of both versions (checked with ``strings`` on
``tensorrt.so`` of tensorrt-cu12-bindings 10.13.3.9 and tensorrt-cu13-bindings 11.4.0.106):
Builder, create_network, NetworkDefinitionCreationFlag.STRONGLY_TYPED, OnnxParser, parse_from_file,
create_builder_config, set_memory_pool_limit, MemoryPoolType.WORKSPACE, BuilderFlag.FP16 (10 only)
and TF32, create_optimization_profile, set_shape, add_optimization_profile, create_timing_cache,
set_timing_cache, get_timing_cache, build_serialized_network, Runtime, deserialize_cuda_engine,
create_execution_context, num_io_tensors, get_tensor_name, get_tensor_mode, TensorIOMode,
get_tensor_dtype, get_tensor_profile_shape, set_input_shape, get_tensor_shape, set_tensor_address,
execute_async_v3, IProgressMonitor (phase_start(phase_name, parent_phase, num_steps),
step_complete(phase_name, step), phase_finish(phase_name)) and BuilderConfig.progress_monitor. It proves that our code calls them in a sensible order with sensible arguments;
whether TensorRT accepts the network is checked in tests/gpu/.

Its execution context runs a stand-in network (logits = each channel's mean, (N, C, H, W) float32
-> (N, C)) on the memory ``set_tensor_address`` points at, as TensorRT reads and writes device
memory: given CPU tensors' pointers, it shows the right buffers, shapes and layout were handed over.
"""

from __future__ import annotations

import ctypes
import math
from types import SimpleNamespace

import numpy as np


class FakeTensorRT:
    """``version`` 10 has BuilderFlag.FP16, 11 does not; ``cache_error`` makes ``create_timing_cache``
    refuse non-empty data as a cache from another TensorRT does (an exception, ``None`` or
    ``set_timing_cache`` returning False); ``profile`` is the engine's (min, opt, max) batch."""

    def __init__(
        self,
        version: int,
        cache_error: BaseException | str | None = None,
        profile: tuple[int, int, int] = (1, 32, 64),
    ) -> None:
        self.calls: list[tuple] = []
        self.refused_addresses: set[int] = set()  # set_tensor_address returns False for these
        fake = self
        self.__version__ = f"{version}.0.0"
        flags = {"TF32": "TF32"} | ({"FP16": "FP16", "INT8": "INT8"} if version == 10 else {})
        self.BuilderFlag = SimpleNamespace(**flags)
        self.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=0)
        self.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
        self.TensorIOMode = SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        self.DataType = SimpleNamespace(FLOAT="FLOAT", HALF="HALF")
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, level: None})
        rec = self.calls.append

        class IProgressMonitor:
            """As the bindings' trampoline: a subclass must call this __init__ (pybind11 refuses it otherwise)."""

            def __init__(self) -> None:
                self.initialised = True

        self.IProgressMonitor = IProgressMonitor

        class Cache:
            def __init__(self, data: bytes = b"") -> None:
                self.data = data

            def serialize(self):
                return b"timing-cache"

        class Config:
            def set_memory_pool_limit(self, pool, size):
                rec(("workspace", pool, size))

            def set_flag(self, flag):
                rec(("set_flag", flag))

            def clear_flag(self, flag):
                rec(("clear_flag", flag))

            def add_optimization_profile(self, profile):
                rec(("profile", profile.shapes))
                return 0

            def create_timing_cache(self, data):
                rec(("create_timing_cache", bytes(data)))
                if data and isinstance(cache_error, BaseException):
                    raise cache_error
                if data and cache_error == "none":
                    return None
                return Cache(bytes(data))

            def set_timing_cache(self, cache, ignore_mismatch):
                if cache is None:
                    raise TypeError("set_timing_cache(): incompatible function arguments")
                ok = not (cache.data and cache_error == "refused")
                rec(("set_timing_cache", cache.data, ok))
                return ok

            def get_timing_cache(self):
                return Cache()

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                self.shapes = (name, lo, opt, hi)

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                rec(("create_network", flags))
                return SimpleNamespace(num_layers=20)

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                rec(("build",))
                monitor = getattr(config, "progress_monitor", None)
                if monitor is not None and not report_progress(monitor):
                    rec(("build cancelled",))
                    return None
                return b"engine-bytes"

        def report_progress(monitor) -> bool:
            """A build's calls to its progress monitor: two nested phases; False where it asked to stop."""
            if not getattr(monitor, "initialised", False):
                raise TypeError("IProgressMonitor.__init__() must be called when overriding __init__")
            monitor.phase_start("Building engine", None, 2)
            monitor.phase_start("Tactic selection", "Building engine", 3)
            for phase, steps in (("Tactic selection", 3), ("Building engine", 2)):
                for step in range(steps):
                    if not monitor.step_complete(phase, step):
                        return False
                monitor.phase_finish(phase)
            return True

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                rec(("parse", path))
                return True

        trt = self

        class Engine:
            num_io_tensors = 2

            def get_tensor_name(self, i):
                return ("input", "logits")[i]

            def get_tensor_mode(self, name):
                return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

            def get_tensor_dtype(self, name):
                return trt.DataType.FLOAT

            def get_tensor_profile_shape(self, name, profile_index):
                return [(n, 3, 224, 224) for n in profile]

            def create_execution_context(self):
                return Context()

        class Context:
            def __init__(self) -> None:
                self.shape: tuple[int, ...] = ()
                self.addresses: dict[str, int] = {}

            def set_input_shape(self, name, shape):
                ok = profile[0] <= shape[0] <= profile[2]
                if ok:
                    self.shape = tuple(shape)
                return ok

            def get_tensor_shape(self, name):
                return self.shape if name == "input" else self.shape[:2]

            def set_tensor_address(self, name, address):
                if address in fake.refused_addresses:  # as TensorRT refuses e.g. a misaligned pointer
                    return False
                self.addresses[name] = address
                return True

            def execute_async_v3(self, stream_handle):
                rec(("execute", stream_handle, self.shape))
                x, y = (self._array(name) for name in ("input", "logits"))
                y[...] = x.mean(axis=(2, 3))
                return True

            def _array(self, name):
                shape = self.get_tensor_shape(name)
                memory = (ctypes.c_float * math.prod(shape)).from_address(self.addresses[name])
                return np.ctypeslib.as_array(memory).reshape(shape)

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                rec(("deserialize", bytes(data)))
                return Engine() if data == b"engine-bytes" else None

        self.Builder, self.OnnxParser, self.Runtime = Builder, OnnxParser, Runtime
