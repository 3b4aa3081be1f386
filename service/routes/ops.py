"""Operations: liveness, readiness, Prometheus metrics and model metadata."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.responses import ERRORS, Health, ModelList, Readiness
from service.state import State

router = APIRouter(tags=["operations"])


# HEAD too: some load balancers and monitors probe with it (the answer without its body). A route of
# its own, out of the schema: one route of two methods gives both operations the same operation ID.
@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", response_model=Health)
async def healthz() -> dict:
    """Live: the process answers HTTP."""
    return {"status": "ok"}


@router.head("/readyz", include_in_schema=False)
@router.get("/readyz", responses={200: {"model": Readiness}, 503: {"model": Readiness, "description": "not ready"}})
async def readyz(state: State) -> JSONResponse:
    """Ready: the engine is connected, its model loaded and warm and its backend healthy (503 otherwise)."""
    await state.client.refresh_status()
    if state.ready:
        return JSONResponse({"status": "ready"})
    return JSONResponse(
        {"status": "not ready", "reason": state.not_ready_reason()}, status_code=503, headers={"Retry-After": "5"}
    )


@router.get("/metrics", response_class=PlainTextResponse, responses=ERRORS)
async def metrics(state: State) -> Response:
    """Prometheus metrics of the whole service (every front end and the engine)."""
    return Response(await state.client.metrics_text(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", response_model=ModelList, response_model_exclude_unset=True, responses=ERRORS)
async def models(state: State) -> dict:
    """The served model: arch, weights provenance, backend, precision, batch settings, whether it warmed up."""
    s = state.settings
    entry: dict = {"name": s.model_name, "version": s.model_version, "ready": state.ready}
    status = state.client.status
    if status is not None:
        entry["warmed_up"] = bool(status.extra.get("warmed_up", False))
    model = state.client.model
    if model is not None:
        entry.update(
            {
                "arch": model.arch,
                "weights": model.weights,
                "untrained": model.untrained,
                "weights_sha256": model.weights_sha256,
                "weights_provenance": model.weights_provenance,
                "num_classes": len(model.labels),
                "input": {
                    "resize_size": model.resize_size,
                    "crop_size": model.input_size,
                    "mean": list(model.mean),
                    "std": list(model.std),
                },
                "backend": model.backend,
                "backend_reason": model.backend_reason,
                "backends_skipped": model.backends_skipped,
                "decode": {"where": model.decode, "reason": model.decode_reason},
            }
        )
    entry["batching"] = {
        "max_batch_size": s.max_batch_size,
        "max_delay_ms": s.max_delay_ms,
        "batches_overlap": model.batches_overlap if model is not None else None,
        "queue_capacity": s.queue_capacity,
        "request_timeout_s": s.request_timeout_s,
    }
    entry["processes"] = {"http_workers": s.frontends, "decode_threads_per_worker": s.decoder_threads}
    entry["limits"] = {
        "max_body_bytes": s.max_body_bytes,
        "max_image_pixels": s.max_image_pixels,
        "max_images_per_request": s.max_images_per_request,
        "max_top_k": s.max_top_k,
    }
    return {"models": [entry]}
