"""The same model served by peer frameworks, for ``python -m loadtest.bench --peers litserve,mosec``.

Each adapter serves the SAME backend (``service.backends.select_backend``: ONNX Runtime on the CPU by
default, same ONNX file), the same preprocessing (``service.preprocess``) and the same top-k
(``service.postprocess``), with the framework's own batching set like ours (32 images, 2 ms), and
answers ``POST /classify`` (multipart ``file``) with the service's ``results[i].predictions`` shape.
They need the optional extra: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import os

from export.onnx_metadata import ModelMetadata
from service.backends import select_backend
from service.backends.base import Backend
from service.preprocess import PreprocessConfig
from service.settings import Settings

MAX_BATCH_SIZE = int(os.environ.get("LOADTEST_PEER_MAX_BATCH", "32"))
MAX_DELAY_MS = float(os.environ.get("LOADTEST_PEER_MAX_DELAY_MS", "2"))


def load_backend() -> tuple[Backend, ModelMetadata, PreprocessConfig]:
    """The backend named by LOADTEST_ONNX / LOADTEST_BACKEND / LOADTEST_DEVICE, warmed up."""
    settings = Settings(
        onnx=os.environ.get("LOADTEST_ONNX", "artifacts/alexnet.onnx"),
        backend=os.environ.get("LOADTEST_BACKEND", "onnxruntime"),
        device=os.environ.get("LOADTEST_DEVICE", "cpu"),
        max_batch_size=MAX_BATCH_SIZE,
    )
    selection = select_backend(settings)
    meta = selection.metadata
    selection.backend.warmup(meta.input_size)
    config = PreprocessConfig(resize_size=meta.resize_size, crop_size=meta.input_size, mean=meta.mean, std=meta.std)
    return selection.backend, meta, config


def multipart_files(body: bytes) -> list[bytes]:
    """The contents of each ``file`` field of a multipart/form-data body (boundary read from its first line).

    For frameworks that hand a worker the raw body without its headers (Mosec).
    """
    first = body.split(b"\r\n", 1)[0]
    if not first.startswith(b"--"):
        raise ValueError("not a multipart body")
    files = []
    for part in body.split(first)[1:]:
        if part.startswith(b"--"):
            break
        head, _, content = part.partition(b"\r\n\r\n")
        if b'name="file"' in head:
            files.append(content[:-2] if content.endswith(b"\r\n") else content)
    return files
