"""POST /classify: images in (multipart ``file`` fields or a raw ``image/*`` body), top-k labels out."""

from __future__ import annotations

import re
import time
from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError
from starlette.datastructures import UploadFile

from service.errors import BadParameter, NoImages, TooManyImages, UnsupportedMediaType
from service.responses import ERRORS, ClassifyResponse
from service.routes.hangup import by_deadline, infer_while_connected, prepare_while_connected
from service.state import ServiceState, State

router = APIRouter(tags=["classification"])

RAW_TYPES = ("image/", "application/octet-stream")
QUERY_PARAMETERS = frozenset({"top_k"})  # a misspelt one (?topk=1) is refused, not ignored
DECIMAL = re.compile(r"[+-]?[0-9]+")


def _decimal_text(value: object) -> object:
    """Query text must be a plain decimal integer: pydantic's own parsing takes '1.0', ' 1' and '1_0' as 1
    or 10, and a client that sends them has made a mistake worth a 422 (README: a non-integer top_k)."""
    if isinstance(value, str) and not DECIMAL.fullmatch(value):
        raise PydanticCustomError("int_parsing", "Input should be a valid integer")
    return value


# The OpenAPI document still says integer: the check runs before pydantic's.
QueryInt = Annotated[int, BeforeValidator(_decimal_text)]


async def read_images(request: Request, state: ServiceState) -> list[tuple[str | None, bytes]]:
    """(filename, bytes) of each image in the request, by its content type."""
    limit = state.settings.max_images_per_request
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        # max_files is generous so that *we* answer "too many images" (413), not the form parser (400).
        form = await request.form(max_files=limit * 4 + 16, max_fields=64)
        uploads = form.getlist("file")
        if not uploads:
            raise NoImages("no image in the form: send each image as a multipart field named 'file'")
        if len(uploads) > limit:
            raise TooManyImages(f"{len(uploads)} images in one request; the limit is {limit}")
        images = []
        for upload in uploads:
            if not isinstance(upload, UploadFile):
                raise NoImages("the 'file' field must be a file upload, not a text value")
            images.append((upload.filename, await upload.read()))
        return images
    if media_type.startswith(RAW_TYPES):
        return [(None, await request.body())]
    raise UnsupportedMediaType(
        f"content type {media_type or '(none)'} is not accepted; send multipart/form-data with 'file' "
        "fields, or the image itself with an image/* content type"
    )


# The body is read by hand (several content types, size and count limits), so it is declared here
# for the OpenAPI document: clients, docs and schemathesis see what the route accepts.
CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                },
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post("/classify", openapi_extra=CLASSIFY_BODY, response_model=ClassifyResponse, responses=ERRORS)
async def classify(request: Request, state: State, top_k: QueryInt = 5) -> dict:
    """Top-k ImageNet labels with probabilities for each image sent."""
    started = time.monotonic()
    settings = state.settings
    if unknown := sorted(set(request.query_params) - QUERY_PARAMETERS):
        raise BadParameter(
            f"unknown query parameter {', '.join(map(repr, unknown))}: /classify takes {', '.join(QUERY_PARAMETERS)}"
        )
    if not 1 <= top_k <= settings.max_top_k:
        raise BadParameter(f"top_k must be between 1 and {settings.max_top_k}, got {top_k}")
    if not state.ready:
        raise state.not_ready()
    deadline = started + settings.request_timeout_s
    images = await by_deadline(read_images(request, state), deadline, "while its body was received")
    pipeline = state.pipeline
    staged = await prepare_while_connected(request, pipeline, [data for _, data in images], deadline)
    results = await infer_while_connected(request, pipeline, staged, deadline, top_k)
    model = pipeline.model
    backend = model.backend
    return {
        "model": {
            "name": settings.model_name,
            "version": settings.model_version,
            "arch": model.arch,
            "weights": model.weights,
        },
        "backend": {"name": backend["name"], "device": backend["device"], "precision": backend["precision"]},
        "results": [
            {
                "filename": filename,
                "predictions": pipeline.predictions(result),
                "batch_size": result.batch_size,
                "decode": result.decode,
                "timings_ms": {
                    "preprocess": round(stage.preprocess_ms, 3),
                    "queue": round(result.queue_ms, 3),
                    "inference": round(result.inference_ms, 3),
                    "batch_size": result.batch_size,  # deprecated: not a timing; use results[].batch_size
                },
            }
            for (filename, _), stage, result in zip(images, staged, results, strict=True)
        ],
        "timings_ms": {"total": round((time.monotonic() - started) * 1000, 3)},
    }
