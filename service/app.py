"""Builds the FastAPI app: lifespan (load, warm up, drain), error mapping, body limit, routers."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.backends import select_backend
from service.batcher import Batcher
from service.errors import BodyTooLarge, ServiceError
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.preprocess import PreprocessConfig
from service.routes import classify, ops, page, v2
from service.settings import Settings
from service.state import ServiceState

log = logging.getLogger("service")
HTTP_KINDS = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


def _load(state: ServiceState) -> None:
    """Select and build the backend, then run every batch shape once (blocking; run in a thread)."""
    s = state.settings
    t0 = time.perf_counter()
    selection = select_backend(s)
    meta = selection.metadata
    log.info(
        "backend %s (%s), model %s weights=%s, loaded in %.1f s: %s",
        selection.backend.name,
        selection.backend.device,
        meta.arch,
        meta.weights,
        time.perf_counter() - t0,
        selection.reason,
    )
    if meta.untrained:
        log.warning("SERVING AN UNTRAINED MODEL: its labels are meaningless (weights: untrained)")
    if s.warmup:
        t1 = time.perf_counter()
        selection.backend.warmup(meta.input_size)
        log.info("warm-up done in %.2f s", time.perf_counter() - t1)
    state.selection = selection


async def _start(state: ServiceState) -> None:
    s = state.settings
    try:
        await asyncio.to_thread(_load, state)
    except Exception as exc:  # reported by /readyz; the process stays up so operators can see why
        state.startup_error = f"{type(exc).__name__}: {exc}"
        log.error("startup failed: %s", state.startup_error)
        return
    assert state.selection is not None  # _load sets it or raises
    meta = state.selection.metadata
    state.batcher = Batcher(
        state.selection.backend,
        state.metrics,
        s.max_batch_size,
        s.max_delay_ms,
        s.queue_capacity,
        stall_after_s=s.request_timeout_s,
    )
    state.batcher.start()
    config = PreprocessConfig(
        resize_size=meta.resize_size,
        crop_size=meta.input_size,
        mean=meta.mean,
        std=meta.std,
        max_pixels=s.max_image_pixels,
        jpeg_draft=s.jpeg_draft,
    )
    state.pipeline = Pipeline(state.batcher, meta, config, s.decoder_threads, state.metrics)
    state.warm = True
    log.info("ready")


def create_app(settings: Settings | None = None, load_in_background: bool = True) -> FastAPI:
    """The service app. Loading runs in the background: /healthz answers at once, /readyz once warm."""
    settings = settings or Settings()
    state = ServiceState(settings=settings, metrics=Metrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = asyncio.create_task(_start(state))
        if not load_in_background:
            await loader
        yield
        state.warm = False
        loader.cancel()
        if state.batcher is not None:
            await state.batcher.stop()
        if state.pipeline is not None:
            state.pipeline.close()
        if state.selection is not None:
            state.selection.backend.close()
        log.info("stopped")

    app = FastAPI(
        title="alexnet-serve",
        version="0.1.0",
        lifespan=lifespan,
        description="AlexNet image classification with dynamic batching.",
    )
    app.state.service = state
    app.include_router(ops.router)
    app.include_router(classify.router)
    app.include_router(page.router)
    app.include_router(v2.router)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        state.metrics.errors.labels(exc.kind).inc()
        log.debug("%s %s -> %d %s", request.method, request.url.path, exc.status, exc.kind)
        return JSONResponse({"error": exc.message, "kind": exc.kind}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Framework errors (unknown route, wrong method, malformed multipart) in our one error shape.
        kind = HTTP_KINDS.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal")
        state.metrics.errors.labels(kind).inc()
        return JSONResponse(
            {"error": str(exc.detail), "kind": kind}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(ClientDisconnect)
    async def client_disconnect(request: Request, exc: ClientDisconnect) -> Response:
        # The client hung up mid-upload: nobody is left to answer; count it, and log no traceback.
        state.metrics.errors.labels("client_disconnected").inc()
        return Response(status_code=499)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        state.metrics.errors.labels("bad_parameter").inc()
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": problems, "kind": "bad_parameter"}, status_code=422)

    app.add_middleware(_BodyLimit, max_body_bytes=settings.max_body_bytes)
    if settings.api_key is not None:
        app.add_middleware(_BearerAuth, key=settings.api_key.get_secret_value(), open_paths=_open_paths(settings))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=[o.strip() for o in settings.cors_origins.split(",")],
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(_RequestMetrics, state=state)  # added last = outermost: it sees every answer
    return app


class _RequestMetrics:
    """ASGI middleware: request latency by route and status, and one debug log line per request."""

    def __init__(self, app, state: ServiceState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 499}  # stays 499 when the client leaves before an answer

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.state.metrics.request_latency.labels(path, str(status["code"])).observe(elapsed)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    json.dumps(
                        {
                            "method": scope["method"],
                            "path": scope["path"],
                            "route": path,
                            "status": status["code"],
                            "ms": round(elapsed * 1000, 3),
                        }
                    )
                )


HEALTH_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})


def _open_paths(settings: Settings) -> frozenset[str]:
    return (HEALTH_PATHS if settings.open_health else frozenset()) | (
        frozenset({"/metrics"}) if settings.open_metrics else frozenset()
    )


class _BearerAuth:
    """ASGI middleware: ``Authorization: Bearer <key>`` on every path but the open ones (401 otherwise)."""

    def __init__(self, app, key: str, open_paths: frozenset[str]) -> None:
        self.app = app
        self.key = key.encode()
        self.open_paths = open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.open_paths or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers", [])).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            return await self.app(scope, receive, send)
        response = JSONResponse(
            {"error": "missing or wrong API key: send 'Authorization: Bearer <key>'", "kind": "unauthorized"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


class _BodyLimit:
    """ASGI middleware: 413 for bodies over the limit, by Content-Length or while streaming."""

    def __init__(self, app, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_body_bytes
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = JSONResponse(
                {"error": f"request body is {int(declared)} bytes; the limit is {limit}", "kind": "body_too_large"},
                status_code=413,
                headers={"Connection": "close"},
            )
            return await response(scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, counting_receive, send)
