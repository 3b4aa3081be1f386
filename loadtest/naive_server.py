"""The naive baseline: FastAPI calling the same backend once per request, no batching, no queue.

What a first version of the service would look like, kept to show what batching buys:

    python -m loadtest.naive_server --port 8001 --onnx artifacts/alexnet.onnx

Each request's images are decoded and preprocessed (``service.preprocess``), then run as one backend
call on Starlette's thread pool; concurrent requests run concurrently on the backend, each at its own
batch size. Answers have the service's ``results[i].predictions`` shape.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from model.help_format import DefaultsHelpFormatter
from service.backends import select_backend
from service.errors import ServiceError
from service.postprocess import top_k
from service.preprocess import PreprocessConfig, preprocess
from service.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    selection = select_backend(settings)
    meta = selection.metadata
    backend = selection.backend
    backend.warmup(meta.input_size)
    config = PreprocessConfig(resize_size=meta.resize_size, crop_size=meta.input_size, mean=meta.mean, std=meta.std)
    app = FastAPI(title="alexnet naive baseline")

    def work(images: list[bytes], k: int) -> list[list[dict]]:
        batch = np.stack([preprocess(data, config) for data in images])  # (N, 3, 224, 224)
        logits = backend.infer(batch)
        return [top_k(row, meta.labels, k) for row in logits]

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"status": "ready"}

    @app.post("/classify")
    async def classify(request: Request, top_k: int = 5):
        """Top-k labels for each image: multipart ``file`` fields or a raw image body."""
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            images = [await f.read() for f in form.getlist("file") if isinstance(f, UploadFile)]
        else:
            images = [await request.body()]
        if not images or not all(images):
            return JSONResponse({"error": "no image", "kind": "no_images"}, status_code=400)
        try:
            predictions = await run_in_threadpool(work, images, top_k)
        except ServiceError as exc:
            return JSONResponse({"error": exc.message, "kind": exc.kind}, status_code=exc.status)
        return {"results": [{"predictions": p} for p in predictions]}

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.naive_server",
        description=__doc__.split("\n")[0],
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--onnx", default="artifacts/alexnet.onnx")
    p.add_argument("--backend", default="onnxruntime", choices=["auto", "onnxruntime", "torch", "tensorrt"])
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    args = p.parse_args(argv)
    logging.basicConfig(level="INFO")
    settings = Settings(onnx=args.onnx, backend=args.backend, device=args.device)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
