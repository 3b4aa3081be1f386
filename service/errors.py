"""Typed errors and their HTTP status, in one place.

Every error a client can cause or meet is a ``ServiceError`` with a stable ``kind`` (also the label of
the ``errors_total`` metric) and a message that says what to do. The JSON body is
``{"error": message, "kind": kind}``.
"""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    status = 500
    kind = "internal"
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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


class NotFound(ServiceError):
    status = 404
    kind = "not_found"


class BadParameter(ServiceError):
    status = 422
    kind = "bad_parameter"


class BodyTooLarge(ServiceError):
    status = 413
    kind = "body_too_large"


class ImageTooLarge(ServiceError):
    status = 413
    kind = "image_too_large"


class TooManyImages(ServiceError):
    status = 413
    kind = "too_many_images"


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


def _by_kind(cls: type[ServiceError]) -> dict[str, type[ServiceError]]:
    found = {cls.kind: cls}
    for sub in cls.__subclasses__():
        found.update(_by_kind(sub))
    return found


def error_from_kind(kind: str, message: str) -> ServiceError:
    """The ServiceError of a ``kind`` sent by another process (the engine answers by kind, not by class)."""
    return _by_kind(ServiceError).get(kind, ServiceError)(message)
