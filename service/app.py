"""Builds a front end's FastAPI app: lifespan (arena, engine connection), error mapping, middlewares.

The app runs in each HTTP front-end process (service.frontend); the model, the batcher and the
metrics live in the engine process (service.engine), reached through ``EngineClient``.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from service.arena import SLOT_BYTES, Arena, arena_slot_count
from service.decode_budget import DecodeBudget
from service.engine_client import EngineClient
from service.errors import BadParameter, BadRequest, MethodNotAllowed, NotFound, ServiceError, error_response
from service.middleware import BearerAuth, BodyLimit, RequestMetrics
from service.pipeline import Pipeline
from service.routes import classify, ops, page, v2
from service.settings import Settings
from service.state import ServiceState

log = logging.getLogger("service")
HTTP_KINDS = {cls.status: cls.kind for cls in (BadRequest, NotFound, MethodNotAllowed)}
HEALTH_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
# The page's own files hold no data and must load for the page to ask for the key its API calls need.
PAGE_PATHS = frozenset({"/"})
PAGE_PREFIXES = ("/static/",)


def _open_paths(settings: Settings) -> frozenset[str]:
    return (
        PAGE_PATHS
        | (HEALTH_PATHS | v2.model_ready_paths(settings) if settings.open_health else frozenset())
        | (frozenset({"/metrics"}) if settings.open_metrics else frozenset())
    )


def _problem(error: dict) -> str:
    """One validation error in our words where we have them ("top_k must be an integer, got 'abc'",
    as the range check says "top_k must be between 1 and 1000, got 0"), else pydantic's."""
    name = str(error["loc"][-1])
    if error["type"] == "int_parsing" and error["loc"][0] == "query":
        return f"{name} must be an integer, got {error['input']!r}"
    return f"{'.'.join(map(str, error['loc']))}: {error['msg']}"


def _routed(request: Request, path: str) -> bool:
    """Some route takes ``path`` (with any method): Starlette's own test for its slash redirect."""
    scope = {**request.scope, "path": path}
    return any(route.matches(scope)[0] != Match.NONE for route in request.app.router.routes)


def framework_message(request: Request, exc: StarletteHTTPException) -> str:
    """Starlette's bare "Not Found" and "Method Not Allowed" say neither what was asked nor what to do."""
    if exc.status_code == 404 and exc.detail == "Not Found":
        path = request.url.path
        bare = path.rstrip("/")
        if bare and bare != path and _routed(request, bare):
            return f"no route {request.method} {path}; the route is {bare}, without the trailing slash"
        return f"no route {request.method} {path}; /openapi.json lists the routes"
    if exc.status_code == 405 and exc.detail == "Method Not Allowed":
        allow = (exc.headers or {}).get("Allow")
        return f"{request.url.path} does not take {request.method}" + (f"; send {allow}" if allow else "")
    if exc.status_code == 400 and request.headers.get("content-type", "").lower().startswith("multipart/"):
        return (  # the form parser's words ("Missing boundary in multipart.") and what to send instead
            f"the multipart body could not be read: {exc.detail}; send multipart/form-data with the boundary "
            "its Content-Type names, as curl -F does"
        )
    return str(exc.detail)


def create_app(
    settings: Settings | None = None,
    engine_address: str | None = None,
    frontend: int = 0,
    decode_budget_fd: int | None = None,
) -> FastAPI:
    """A front end's app. It answers /healthz at once and is ready when the engine says it is.

    Without ``engine_address`` (documentation, schema checks) it never connects and never gets ready.
    ``decode_budget_fd`` is the server's shared decode budget (service.decode_budget); without it this
    front end has a budget of its own.
    """
    settings = settings or Settings()
    arena = Arena(
        arena_slot_count(
            settings.queue_capacity, settings.frontends, settings.max_batch_size, settings.max_images_per_request
        ),
        SLOT_BYTES,
        name=f"alexnet-frontend-{frontend}",
    )
    client = EngineClient(engine_address or "", frontend, arena)
    budget = DecodeBudget(settings.decode_memory_mb * 2**20, decode_budget_fd)
    pipeline = Pipeline(client, arena, budget, settings.decoder_threads, settings.max_image_pixels, settings.jpeg_draft)
    state = ServiceState(settings=settings, client=client, pipeline=pipeline)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if engine_address is not None:
            client.start()
        yield
        await client.stop()
        pipeline.close()
        budget.close()
        arena.close()
        log.info("stopped")

    app = FastAPI(
        title="alexnet-serve",
        version="0.1.0",
        lifespan=lifespan,
        description="AlexNet image classification with dynamic batching.",
        # FastAPI's /docs and /redoc load Swagger UI and ReDoc from a CDN: blank pages on the air-gapped
        # hosts this serves, and no installed package ships the files. The schema stays at /openapi.json.
        docs_url=None,
        redoc_url=None,
        # Starlette would answer /classify/ with a 307 to http://<Host>/classify: behind a TLS proxy that
        # sends the client (and its image, again) to plain http. A 404 that names the route instead.
        redirect_slashes=False,
    )
    app.state.service = state
    app.include_router(ops.router)
    app.include_router(classify.router)
    app.include_router(page.router)
    app.include_router(v2.router)

    def answer(request: Request, exc: ServiceError, headers: dict[str, str] | None = None) -> JSONResponse:
        state.observe(("error", exc.kind))
        log.debug("%s %s -> %d %s", request.method, request.url.path, exc.status, exc.kind)
        return error_response(exc, headers=headers)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return answer(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Framework errors (unknown route, wrong method, malformed multipart) in our one error shape.
        kind = HTTP_KINDS.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal")
        error = ServiceError(framework_message(request, exc), status=exc.status_code, kind=kind)
        return answer(request, error, getattr(exc, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def client_disconnect(request: Request, exc: ClientDisconnect) -> Response:
        # The client hung up mid-upload: nobody is left to answer; count it, and log no traceback.
        state.observe(("error", "client_disconnected"))
        return Response(status_code=499)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return answer(request, BadParameter("; ".join(_problem(e) for e in exc.errors())))

    app.add_middleware(BodyLimit, max_body_bytes=settings.max_body_bytes, observe=state.observe)
    if settings.api_key is not None:
        app.add_middleware(
            BearerAuth,
            key=settings.api_key.get_secret_value(),
            open_paths=_open_paths(settings),
            open_prefixes=PAGE_PREFIXES,
            observe=state.observe,
        )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=[o.strip() for o in settings.cors_origins.split(",")],
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(RequestMetrics, observe=state.observe)  # added last = outermost: it sees every answer
    return app
