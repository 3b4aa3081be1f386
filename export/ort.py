"""ONNX Runtime, or an error that names the extra installing it.

``onnxruntime`` is not a base dependency: the CPU build (extra ``cpu``) and the CUDA build (extra
``gpu``) provide the same module and must not be installed together, so a plain ``pip install .``
has neither. Exporting (``to_onnx.py`` checks its output with ONNX Runtime) and the service's
``onnxruntime`` backend need one.
"""

from __future__ import annotations

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
