"""Start spawned processes without re-running the parent's ``__main__`` module in each.

A spawned child first imports the parent's main module (as ``__mp_main__``), so that what was pickled
by reference to it can be found. The load processes (``loadtest.multiproc``) need nothing from it: their
target and arguments live in other modules. Under ``python -m loadtest.bench`` that import is torch,
ONNX Runtime and the service's backends: 16 load processes each importing them made every benchmark step
take 72-97 s instead of 4 s on the H200 host (2026-12-04), 38 s instead of 3 s on a 2-core one.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

_ABSENT = object()


@contextmanager
def without_main_module() -> Iterator[None]:
    """Within it, a ``Process.start()`` of the spawn context does not import ``__main__`` in the child.

    Only for targets and arguments defined outside ``__main__``: the child could not unpickle the others.
    multiprocessing decides from ``__main__.__spec__`` (``python -m``) or ``__main__.__file__`` (a
    script) when the child is started; both are hidden for that moment and then put back.
    """
    main = sys.modules["__main__"]
    saved = {name: main.__dict__.get(name, _ABSENT) for name in ("__spec__", "__file__")}
    main.__spec__ = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is _ABSENT:
                main.__dict__.pop(name, None)
            else:
                main.__dict__[name] = value
