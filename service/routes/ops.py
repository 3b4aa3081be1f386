"""Operations: liveness, readiness, Prometheus metrics and model metadata."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.state import State

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict:
    """Live: the process answers HTTP."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: State) -> JSONResponse:
    """Ready: the model is loaded and warm and the backend is healthy (503 otherwise)."""
    if state.ready:
        return JSONResponse({"status": "ready"})
    if state.startup_error:
        reason = state.startup_error
    elif not state.warm:
        reason = "loading or warming up"
    else:
        reason = "backend unhealthy (failing or stalled)"
    return JSONResponse({"status": "not ready", "reason": reason}, status_code=503, headers={"Retry-After": "5"})


@router.get("/metrics")
async def metrics(state: State) -> Response:
    """Prometheus metrics."""
    if state.batcher is not None:
        state.metrics.queue_depth.set(state.batcher.depth)
    state.metrics.ready.set(1 if state.ready else 0)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
async def models(state: State) -> dict:
    """The served model: arch, weights provenance, backend, precision and batch settings."""
    s = state.settings
    entry: dict = {"name": s.model_name, "version": s.model_version, "ready": state.ready}
    if state.selection is not None:
        meta = state.selection.metadata
        entry.update(
            {
                "arch": meta.arch,
                "weights": meta.weights,
                "untrained": meta.untrained,
                "weights_sha256": meta.weights_sha256,
                "num_classes": len(meta.labels),
                "input": {
                    "resize_size": meta.resize_size,
                    "crop_size": meta.input_size,
                    "mean": list(meta.mean),
                    "std": list(meta.std),
                },
                "backend": state.selection.backend.describe(),
                "backend_reason": state.selection.reason,
                "backends_skipped": state.selection.skipped,
            }
        )
    entry["batching"] = {
        "max_batch_size": s.max_batch_size,
        "max_delay_ms": s.max_delay_ms,
        "queue_capacity": s.queue_capacity,
        "request_timeout_s": s.request_timeout_s,
    }
    entry["limits"] = {
        "max_body_bytes": s.max_body_bytes,
        "max_image_pixels": s.max_image_pixels,
        "max_images_per_request": s.max_images_per_request,
        "max_top_k": s.max_top_k,
    }
    return {"models": [entry]}
