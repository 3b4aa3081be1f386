"""torchvision's modules for the tests: the full package where it loads, else its pure-Python files.

PyPI's torchvision wheel is built against PyPI's CUDA torch. Beside this project's CPU torch wheel its
``__init__`` fails while registering the compiled ops (``operator torchvision::nms does not exist``),
but the transforms, the presets and the model definitions are plain Python that need none of it: they
import under a bare ``torchvision`` package whose ``__path__`` is the installed one, so that
``__init__`` never runs. ``make install`` installs the wheel with ``pip install --no-deps`` for this
(with its dependencies pip would replace the CPU torch by a CUDA one).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types


@functools.cache
def full_torchvision_error() -> str | None:
    """None when ``import torchvision`` works here (compiled ops and all), else why it does not."""
    try:
        importlib.import_module("torchvision")
    except Exception as exc:  # a missing package, or one built for another torch: RuntimeError, OSError
        _forget_torchvision()
        return f"{type(exc).__name__}: {exc}"
    return None


def _forget_torchvision() -> None:
    # A failed package import leaves the submodules it had already imported in sys.modules.
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]


def import_torchvision(name: str) -> types.ModuleType:
    """``torchvision.<name>`` (e.g. ``transforms._presets``): from the full package where it imports,
    else from its installed files under a bare package (stays in ``sys.modules`` for this process).

    Raises ImportError saying why when torchvision is not installed at all or the module needs more.
    """
    if full_torchvision_error() is not None and not isinstance(sys.modules.get("torchvision"), types.ModuleType):
        spec = importlib.util.find_spec("torchvision")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(
                "torchvision is not installed; `make install` installs it (pip install --no-deps torchvision)"
            )
        bare = types.ModuleType(
            "torchvision", "torchvision's files without its __init__ (tests/torchvision_modules.py)"
        )
        bare.__path__ = list(spec.submodule_search_locations)
        sys.modules["torchvision"] = bare
    try:
        return importlib.import_module(f"torchvision.{name}")
    except Exception as exc:
        raise ImportError(f"torchvision.{name} does not import here: {type(exc).__name__}: {exc}") from exc
