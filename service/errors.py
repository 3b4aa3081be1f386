"""Typed errors and their HTTP status, in one place.

Every error a client can cause or meet is a ``ServiceError`` with a stable ``kind`` (also the label of
the ``errors_total`` metric) and a message that says what to do. ``error_response`` is the one place
that turns one into an HTTP answer: ``{"error": message, "kind": kind}``, or on the Open Inference
Protocol's routes the protocol's ``{"error": message}``, with the error's status and headers.
"""

from __future__ import annotations

from typing import ClassVar

from starlette.responses import JSONResponse


class ServiceError(Exception):
    status = 500
    kind = "internal"
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, message: str, *, status: int | None = None, kind: str | None = None) -> None:
        """``status`` and ``kind`` override the class's, for errors named by the framework (a 405, say)."""
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if kind is not None:
            self.kind = kind


class BadRequest(ServiceError):
    status = 400
    kind = "bad_request"


class EmptyBody(BadRequest):
    kind = "empty_body"


class NoImages(BadRequest):
    kind = "no_images"


class NotAnImage(BadRequest):
    kind = "not_an_image"


class CorruptImage(BadRequest):
    kind = "corrupt_image"


class Unauthorized(ServiceError):
    status = 401
    kind = "unauthorized"
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": "Bearer"}


class NotFound(ServiceError):
    status = 404
    kind = "not_found"


class MethodNotAllowed(ServiceError):
    status = 405
    kind = "method_not_allowed"


class BadParameter(ServiceError):
    status = 422
    kind = "bad_parameter"


class BodyTooLarge(ServiceError):
    status = 413
    kind = "body_too_large"


class HeadersTooLarge(ServiceError):
    """Answered by the HTTP protocol itself (service/http_head.py), before the app sees the request."""

    status = 431
    kind = "headers_too_large"


class ImageTooLarge(ServiceError):
    status = 413
    kind = "image_too_large"


class TooManyImages(ServiceError):
    status = 413
    kind = "too_many_images"

    @classmethod
    def in_batch(cls, count: int, limit: int) -> TooManyImages:
        """A /v2 tensor of ``count`` images, over ``limit``."""
        return cls(f"a batch of {count} in one request; the limit is {limit}")


class UnsupportedMediaType(ServiceError):
    status = 415
    kind = "unsupported_media_type"


class UnsupportedImageFormat(ServiceError):
    status = 415
    kind = "unsupported_image_format"


class QueueFull(ServiceError):
    status = 503
    kind = "queue_full"
    headers: ClassVar[dict[str, str]] = {"Retry-After": "1"}


class NotReady(ServiceError):
    status = 503
    kind = "not_ready"
    headers: ClassVar[dict[str, str]] = {"Retry-After": "5"}


class DeadlineExceeded(ServiceError):
    status = 504
    kind = "deadline_exceeded"


class BackendFailure(ServiceError):
    status = 500
    kind = "backend_error"


class BackendUnavailable(RuntimeError):
    """A backend cannot run on this host (missing package, no GPU, engine for another GPU)."""


class LoadStopped(Exception):
    """The engine was told to stop while it loaded the model: the load ends at its next step."""


class WrongWeights(RuntimeError):
    """The ONNX file a backend would serve holds other weights than the ``--checkpoint`` given, or
    preprocesses otherwise than it was trained (export/checkpoint_match.py).

    Not a BackendUnavailable: ``auto`` does not move on to the next backend, which would serve those
    other weights or, PyTorch, the checkpoint on a slower path than asked for without a word."""


def kinds(cls: type[ServiceError] = ServiceError) -> dict[str, type[ServiceError]]:
    """Every kind and its class, ``cls`` and below (service.oip adds the protocol's once imported)."""
    found = {cls.kind: cls}
    for sub in cls.__subclasses__():
        found.update(kinds(sub))
    return found


def error_from_kind(kind: str, message: str) -> ServiceError:
    """The ServiceError of a ``kind`` sent by another process (the engine answers by kind, not by class)."""
    return kinds().get(kind, ServiceError)(message)


def error_response(exc: ServiceError, *, protocol: bool = False, headers: dict[str, str] | None = None) -> JSONResponse:
    """The HTTP answer to ``exc``: our ``{"error", "kind"}`` body, or with ``protocol`` the Open Inference
    Protocol's ``{"error"}``; the error's status, its headers and any ``headers`` given here."""
    body = {"error": exc.message} if protocol else {"error": exc.message, "kind": exc.kind}
    return JSONResponse(body, status_code=exc.status, headers={**exc.headers, **(headers or {})})
