"""Atomic file writes: a file appears under its name whole and checked, or not at all.

Every artifact the project writes (checkpoints, ONNX, engines and their sidecars, timing caches)
goes through ``atomic_output``: write to a temporary file in the same folder (so ``os.replace`` is a
rename on one file system), run the checks on it, then move it into place. ``mkstemp`` makes its
files 0600; they end 0644 because the service may run as another user than the exporter (the image
runs as uid 10001 and reads files an operator built).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FILE_MODE = 0o644


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends normally it replaces ``path``
    (mode 0644), when it raises it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes | memoryview) -> Path:
    """``path.write_bytes(data)``, atomically and 0644."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``path.write_text(text)``, atomically and 0644."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)
