"""The front end's ASGI middlewares: request metrics, the API key, the body limit.

Each answers in the service's one error shape (``service.errors.error_response``) and reports what it answered
through ``observe`` (an event for the engine's metrics), so a 401 or a 413 shows in ``/metrics``
like any other error.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import BodyTooLarge, ServiceError, Unauthorized, error_response

log = logging.getLogger("service")
Observe = Callable[[tuple], None]


async def _answer_error(
    scope: Scope,
    receive: Receive,
    send: Send,
    observe: Observe,
    exc: ServiceError,
    headers: dict[str, str] | None = None,
) -> None:
    observe(("error", exc.kind))
    await error_response(exc, headers=headers)(scope, receive, send)


class RequestMetrics:
    """Request latency by route and status (to the metrics), and one debug log line per request."""

    def __init__(self, app: ASGIApp, observe: Observe) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 499  # stays 499 when the client leaves before an answer

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.observe(("request", path, str(status), elapsed))
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    json.dumps(
                        {
                            "method": scope["method"],
                            "path": scope["path"],
                            "route": path,
                            "status": status,
                            "ms": round(elapsed * 1000, 3),
                        }
                    )
                )


class BearerAuth:
    """``Authorization: Bearer <key>`` on every path but the open ones (401 otherwise).

    ``open_paths`` are exact paths, ``open_prefixes`` folders (``/static/``, the page's own files).
    """

    def __init__(
        self,
        app: ASGIApp,
        key: str,
        open_paths: frozenset[str],
        observe: Observe,
        open_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.key = key.encode()
        self.open_paths = open_paths
        self.open_prefixes = open_prefixes
        self.observe = observe

    def _open(self, scope: Scope) -> bool:
        path = scope["path"]
        return path in self.open_paths or path.startswith(self.open_prefixes) or scope["method"] == "OPTIONS"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._open(scope):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers", [])).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            await self.app(scope, receive, send)
            return
        error = Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")
        await _answer_error(scope, receive, send, self.observe, error)


class BodyLimit:
    """413 for bodies over the limit: at once by Content-Length, or while the body streams in."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, observe: Observe) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            error = BodyTooLarge(f"request body is {int(declared)} bytes; the limit is {limit}")
            await _answer_error(scope, receive, send, self.observe, error, {"Connection": "close"})
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, counting_receive, send)
