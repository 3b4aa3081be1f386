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


class OutputPathError(ValueError):
    """An output path that cannot be written, found before the work that would fill it."""


def _folder_problem(folder: Path) -> str | None:
    """Why files cannot be written in ``folder`` (made when first written to), or None when they can:
    a file was created and removed in it, or in the nearest folder above it that exists. Nothing is
    left behind, not even ``folder``."""
    existing = folder
    try:  # exists() and is_dir() raise what is not "no such file" (a name too long, no permission)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            return f"{existing} is a file, not a folder"
    except OSError as exc:
        return f"cannot look at {existing} ({exc.strerror or exc})"
    try:
        fd, name = tempfile.mkstemp(dir=existing, prefix=".write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return f"cannot write in {existing} ({exc.strerror or exc})"
    return None


def check_output_folder(folder: str | Path, flag: str) -> Path:
    """``folder`` once files could be written in it (it need not exist yet); else OutputPathError naming
    ``flag``. For the start of long work: a typo then costs nothing, not the run's results."""
    folder = Path(folder)
    if (problem := _folder_problem(folder)) is not None:
        raise OutputPathError(f"{flag} {folder}: {problem}")
    return folder


def check_output_file(path: str | Path, flag: str, example_name: str) -> Path:
    """``path`` once it is no folder and a file could be written where it goes (its folder need not
    exist yet); else OutputPathError naming ``flag`` (with ``example_name``: a file to pass instead of
    a folder)."""
    path = Path(path)
    try:
        is_dir = path.is_dir()
    except OSError as exc:  # as in _folder_problem
        raise OutputPathError(f"{flag} {path}: cannot look at it ({exc.strerror or exc})") from None
    if is_dir:
        raise OutputPathError(f"{flag} {path} is a folder; pass a file name, e.g. {path / example_name}")
    if (problem := _folder_problem(path.parent)) is not None:
        raise OutputPathError(f"{flag} {path}: {problem}")
    return path
