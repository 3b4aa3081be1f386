"""The Open Inference Protocol (KServe v2) over HTTP, on the same pipeline and batcher as /classify.

Endpoints: ``/v2`` (server metadata), ``/v2/health/{live,ready}``, and for the served model, with or
without ``/versions/{version}``: metadata, ``/ready`` and ``/infer``. The codec is ``service.oip``;
errors are the protocol's ``{"error": message}`` with our status codes. See docs/oip.md.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute

from service import oip, oip_signature, responses
from service.errors import ServiceError, TooManyImages, error_response
from service.pipeline import Pipeline
from service.responses import PROTOCOL_ERRORS
from service.routes.hangup import by_deadline, infer_while_connected, prepare_while_connected
from service.settings import Settings
from service.state import ServiceState, State

log = logging.getLogger("service")

# Triton's platform names, so its tools recognise the backend.
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan", "torch": "pytorch_libtorch"}


class _ProtocolErrors(APIRoute):
    """Answers ServiceErrors on v2 routes with the protocol's ``{"error": ...}`` body, same status and headers."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except ServiceError as exc:
                request.app.state.service.observe(("error", exc.kind))
                log.debug("%s %s -> %d %s", request.method, request.url.path, exc.status, exc.kind)
                return error_response(exc, protocol=True)

        return handle


router = APIRouter(
    prefix="/v2", tags=["open inference protocol"], route_class=_ProtocolErrors, responses=PROTOCOL_ERRORS
)


def _check_model(state: ServiceState, name: str, version: str | None) -> None:
    s = state.settings
    if name != s.model_name:
        raise oip.ModelNotFound(f"unknown model '{name}'; this server serves '{s.model_name}'")
    if version is not None and version != s.model_version:
        raise oip.ModelNotFound(f"model '{name}' has no version '{version}'; it has '{s.model_version}'")


@router.get("", response_model=responses.ServerMetadata)
async def server_metadata(request: Request) -> dict:
    """Server metadata: name, version and the protocol extensions supported."""
    return {"name": request.app.title, "version": request.app.version, "extensions": list(oip.EXTENSIONS)}


@router.get("/health/live", response_model=responses.Live)
async def live() -> dict:
    """Live: the process answers HTTP."""
    return {"live": True}


@router.get("/health/ready", response_model=responses.Ready)
async def ready(state: State) -> dict:
    """Ready: 200 when the model can serve, 503 otherwise."""
    await state.client.refresh_status()
    if not state.ready:
        raise state.not_ready()
    return {"ready": True}


# Each model route twice: without a version (the served one) and with one (which must be it). Two
# handlers each, so that neither documents a parameter it does not take.
@router.get("/models/{model_name}", response_model=responses.ModelMetadataResponse)
async def model_metadata(state: State, model_name: str) -> dict:
    """Model metadata: inputs and outputs with datatypes and shapes (-1 for the batch)."""
    return _model_metadata(state, model_name, None)


@router.get("/models/{model_name}/versions/{model_version}", response_model=responses.ModelMetadataResponse)
async def model_version_metadata(state: State, model_name: str, model_version: str) -> dict:
    """Model metadata of one version: inputs and outputs with datatypes and shapes (-1 for the batch)."""
    return _model_metadata(state, model_name, model_version)


def _model_metadata(state: ServiceState, model_name: str, model_version: str | None) -> dict:
    _check_model(state, model_name, model_version)
    model = state.client.model
    if model is None:
        raise state.not_ready()
    s = state.settings
    platform = PLATFORMS.get(model.backend["name"], model.backend["name"])
    return oip_signature.model_metadata(s.model_name, s.model_version, platform, model.input_size, len(model.labels))


@router.get("/models/{model_name}/ready", response_model=responses.ModelReady)
async def model_ready(state: State, model_name: str) -> dict:
    """Model ready: 200 when it can serve, 503 otherwise."""
    return await _model_ready(state, model_name, None)


@router.get("/models/{model_name}/versions/{model_version}/ready", response_model=responses.ModelReady)
async def model_version_ready(state: State, model_name: str, model_version: str) -> dict:
    """Model version ready: 200 when it can serve, 503 otherwise."""
    return await _model_ready(state, model_name, model_version)


def model_ready_paths(settings: Settings) -> frozenset[str]:
    """The served model's readiness probes, exactly (the routes above with its name and version): health
    checks like /v2/health/ready, open with it under --open-health. Other versions and names stay closed."""
    model = f"/v2/models/{settings.model_name}"
    return frozenset({f"{model}/ready", f"{model}/versions/{settings.model_version}/ready"})


async def _model_ready(state: ServiceState, model_name: str, model_version: str | None) -> dict:
    _check_model(state, model_name, model_version)
    await state.client.refresh_status()
    if not state.ready:
        raise state.not_ready()
    return {"name": model_name, "ready": True}


# The body is parsed by service.oip (JSON or JSON + binary sections); declared here for the OpenAPI
# document, so clients and schemathesis see the protocol's inference request.
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"enum": list(oip.DATATYPES)},
        "parameters": {"type": "object"},
        "data": {"type": "array"},
    },
}
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {"type": "array", "minItems": 1, "items": _TENSOR},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                            },
                        },
                    },
                }
            }
        },
    }
}
# The answer is written by service.oip (JSON, or JSON + binary sections); declared for the document.
INFER_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "model": responses.InferResponse,
        "description": "the outputs; with binary outputs the JSON header is followed by their bytes",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post("/models/{model_name}/infer", openapi_extra=INFER_BODY, responses=INFER_ANSWER)
async def infer(request: Request, state: State, model_name: str) -> Response:
    """Inference: ``input`` (FP32 [N,3,S,S]) or ``image`` (BYTES [N]) in, ``logits`` [N,C] out."""
    return await _infer(request, state, model_name, None)


@router.post("/models/{model_name}/versions/{model_version}/infer", openapi_extra=INFER_BODY, responses=INFER_ANSWER)
async def infer_version(request: Request, state: State, model_name: str, model_version: str) -> Response:
    """Inference on one version: ``input`` (FP32 [N,3,S,S]) or ``image`` (BYTES [N]) in, ``logits`` [N,C] out."""
    return await _infer(request, state, model_name, model_version)


def _parse_within_budget(
    pipeline: Pipeline, body: bytes, json_length: int | None, max_images: int, abandoned: threading.Event
) -> oip.InferRequest:
    oip.check_json_counts(body, max_images, json_length)  # before the budget is held
    with pipeline.budget.hold(oip.parse_peak_bytes(len(body), json_length), abandoned=abandoned):
        return oip.parse_request(body, json_length, max_images)


async def _infer(request: Request, state: ServiceState, model_name: str, model_version: str | None) -> Response:
    started = time.monotonic()
    settings = state.settings
    _check_model(state, model_name, model_version)
    if not state.ready:
        raise state.not_ready()
    deadline = started + settings.request_timeout_s
    pipeline = state.pipeline
    meta = pipeline.model
    if request.headers.get("content-type", "").lower().startswith("multipart/"):
        raise oip.ProtocolError(
            "this route takes the Open Inference Protocol's JSON (or its binary extension), not a form "
            "upload; send images as multipart/form-data to /classify"
        )

    body = await by_deadline(request.body(), deadline, "while its body was received")
    json_length = oip.header_length(request.headers.get(oip.HEADER_LENGTH), len(body))
    # A JSON tensor of a full batch is megabytes of text: parse it off the event loop, within the
    # server's decode memory budget (JSON takes up to ~36x its size while parsed) and the deadline.
    abandoned = threading.Event()
    try:
        parsed = await by_deadline(
            asyncio.to_thread(
                _parse_within_budget, pipeline, body, json_length, settings.max_images_per_request, abandoned
            ),
            deadline,
            "while its body was parsed",
        )
    except BaseException:  # the deadline, or a hang-up: a parse still waiting for the budget gives up
        abandoned.set()
        raise
    if parsed.timeout_s is not None:  # a client's own deadline may only shorten ours
        deadline = min(deadline, started + parsed.timeout_s)
    tensor = oip_signature.model_input(parsed, meta.input_size)
    outputs = oip_signature.requested_outputs(parsed, min(settings.max_top_k, len(meta.labels)))
    count = tensor.shape[0]
    if count > settings.max_images_per_request:
        raise TooManyImages.in_batch(count, settings.max_images_per_request)

    if tensor.datatype == "BYTES":
        staged = await prepare_while_connected(request, pipeline, [bytes(e) for e in tensor.data], deadline)
    else:
        staged = pipeline.stage_tensors(np.ascontiguousarray(tensor.data, dtype=np.float32))

    results = await infer_while_connected(request, pipeline, staged, deadline, top_k=0, want_logits=True)
    logits = np.stack([r.logits for r in results])  # type: ignore[misc]  # (N, num_classes) float32

    encoded = []
    for out in outputs:
        data = oip.classification(logits, meta.labels, out.classification) if out.classification else logits
        binary = parsed.binary_output if out.binary is None else out.binary
        encoded.append(oip.OutputTensor(out.name, data, binary))
    body, headers = oip.encode_response(settings.model_name, settings.model_version, parsed.id, encoded)
    return Response(body, headers=headers, media_type=headers.pop("Content-Type"))
