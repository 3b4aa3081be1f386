"""ONNX Runtime, or an error that names the extra installing it.

``onnxruntime`` is not a base dependency: the CPU build (extra ``cpu``) and the CUDA build (extra
``gpu``) provide the same module and must not be installed together, so a plain ``pip install .``
has neither. Exporting (``to_onnx.py`` checks its output with ONNX Runtime) and the service's
``onnxruntime`` backend need one.
"""

from __future__ import annotations

import functools
from types import ModuleType

INSTALL_HINT = (
    "install the project with an extra: pip install '.[cpu]' from a checkout (or 'alexnet-serve[cpu]'), "
    "'.[gpu]' on an NVIDIA GPU host (onnxruntime-gpu and tensorrt)"
)


class MissingExtra(ModuleNotFoundError):
    """A module that an extra of the project provides is not installed; the message says which extra.

    A user-fixable failure: ``export/cli.py``'s ``run_main`` prints it as one ``[tool] error:`` line.
    """


def import_onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module; MissingExtra saying which extra to install if it is missing."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingExtra(f"onnxruntime is not installed: {INSTALL_HINT}", name="onnxruntime") from exc
    return onnxruntime


# x86 CPU flags with which ONNX Runtime's int8 kernels (u8s8 dot products) cannot saturate.
_EXACT_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_kernels_saturate(cpuinfo: str | None = None) -> str | None:
    """Why ONNX Runtime's fused int8 kernels give wrong answers on this CPU, or None where they do not.

    On x86 CPUs without VNNI (AVX2 only: many AMD EPYC and older Xeons) they multiply pairs of u8 x s8
    products into saturating 16-bit sums (``vpmaddubsw``): measured on a 2-core AMD EPYC with AVX2 only,
    an int8 AlexNet whose Q/DQ math agrees 100% with fp32 agreed 31% through them. ``cpuinfo`` is the
    text of /proc/cpuinfo (read once per process when None); other architectures and unreadable files say None."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    if cpuinfo is None:
        cpuinfo = _proc_cpuinfo()
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), None)
    if flags is None or any(flag in flags for flag in _EXACT_INT8_FLAGS):
        return None
    return (
        "this CPU has no AVX-VNNI, AVX512-VNNI or AMX: ONNX Runtime's fused int8 kernels saturate here "
        "and can give wrong answers"
    )


@functools.cache
def _proc_cpuinfo() -> str:
    """/proc/cpuinfo, read once per process ("" where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""
