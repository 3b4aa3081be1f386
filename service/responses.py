"""The JSON answers of the HTTP API as pydantic models, so the OpenAPI document describes them.

The routes build plain dicts and declare these as ``response_model``: FastAPI checks each answer
against its model and writes it out, and schemathesis checks the answers against the document
(``response_schema_conformance``). Field names and shapes are the API's; change them here and in
the README together.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorBody(BaseModel):
    """Every error outside the Open Inference Protocol's routes (service.errors.error_response)."""

    error: str = Field(description="what is wrong and what to do")
    kind: str = Field(description="stable name of the error (the README's error table)")


class ProtocolErrorBody(BaseModel):
    """An error on the Open Inference Protocol's routes, in the protocol's shape."""

    error: str


# -- operations -----------------------------------------------------------------------------------
class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    reason: str | None = Field(None, description="why not, when not ready")


# -- /classify ------------------------------------------------------------------------------------
class ModelRef(BaseModel):
    name: str
    version: str
    arch: str
    weights: str = Field(description='"untrained", or where the weights came from')


class BackendRef(BaseModel):
    name: str
    device: str
    precision: str


class Prediction(BaseModel):
    label: str
    index: int = Field(description="ImageNet class index")
    probability: float


class ImageTimings(BaseModel):
    preprocess: float = Field(description="decode + resize + crop in the front end, ms")
    queue: float = Field(description="waiting for a batch, ms")
    inference: float = Field(
        description="the batch's preparation and backend call (where batches overlap, also its wait for "
        "the batch before it), ms"
    )
    batch_size: int = Field(deprecated=True, description="not a timing: use results[].batch_size (kept one release)")


class ClassifiedImage(BaseModel):
    filename: str | None = Field(description="the multipart field's filename; null for a raw body")
    predictions: list[Prediction] = Field(description="the top_k most probable labels, most probable first")
    batch_size: int = Field(description="how many images shared the backend call")
    decode: Literal["cpu", "gpu"] = Field(
        description="where the image was decoded: a front end's CPU (also for a JPEG the GPU decoder "
        "declined), or nvJPEG in the engine"
    )
    timings_ms: ImageTimings


class TotalTimings(BaseModel):
    total: float = Field(description="from the request's arrival to its answer, ms")


class ClassifyResponse(BaseModel):
    model: ModelRef
    backend: BackendRef
    results: list[ClassifiedImage] = Field(description="one per image, in the order sent")
    timings_ms: TotalTimings


# -- /v1/models -----------------------------------------------------------------------------------
class InputFacts(BaseModel):
    resize_size: int
    crop_size: int
    mean: list[float]
    std: list[float]


class BackendInfo(BackendRef):
    model_config = ConfigDict(extra="allow")

    max_batch_size: int
    batch_sizes: list[int] | None = Field(description="the sizes batches are padded to; null = any size")


class DecodeInfo(BaseModel):
    where: Literal["cpu", "gpu"]
    reason: str


class Batching(BaseModel):
    max_batch_size: int
    max_delay_ms: float
    batches_overlap: bool | None = None  # None until the engine has described itself
    queue_capacity: int
    request_timeout_s: float


class Processes(BaseModel):
    http_workers: int
    decode_threads_per_worker: int


class Limits(BaseModel):
    max_body_bytes: int
    max_image_pixels: int
    max_images_per_request: int
    max_top_k: int


class ModelEntry(BaseModel):
    """One served model. The fields from ``arch`` to ``decode`` are there once the engine has loaded it."""

    name: str
    version: str
    ready: bool
    warmed_up: bool | None = Field(
        None, description="the engine ran every batch shape before reporting ready (false with --warmup false)"
    )
    arch: str | None = None
    weights: str | None = None
    untrained: bool | None = None
    weights_sha256: str | None = None
    weights_provenance: dict[str, Any] | None = Field(
        None,
        description="where the weights came from, as their checkpoint records it: source, and for a "
        "training run its dataset, epoch, validation top-1/top-5 (%) and when it was saved",
    )
    num_classes: int | None = None
    input: InputFacts | None = None
    backend: BackendInfo | None = None
    backend_reason: str | None = None
    backends_skipped: dict[str, str] | None = Field(None, description="backend -> why it was not used")
    decode: DecodeInfo | None = None
    batching: Batching
    processes: Processes
    limits: Limits


class ModelList(BaseModel):
    models: list[ModelEntry]


# -- Open Inference Protocol (v2) -----------------------------------------------------------------
class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks the batch dimension")


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    name: str
    ready: bool


class InferOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = Field(None, description='{"binary_data_size": n} when sent as binary')
    data: list[Any] | None = Field(None, description="row-major elements, when not sent as binary")


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[InferOutput]


# The errors each route may answer, for the document: 4xx and 5xx in one shape (which also keeps FastAPI
# from listing its own 422 body, which this service never sends).
ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorBody, "description": "the request cannot be served as sent"},
    "5XX": {"model": ErrorBody, "description": "the service cannot serve it now"},
}
PROTOCOL_ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ProtocolErrorBody, "description": "the request cannot be served as sent"},
    "5XX": {"model": ProtocolErrorBody, "description": "the service cannot serve it now"},
}
