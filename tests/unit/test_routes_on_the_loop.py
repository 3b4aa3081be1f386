"""Every route of a front end, and every dependency it has, runs on the event loop: FastAPI sends a
plain ``def`` endpoint or dependency to its thread pool, a thread hop on every request (a sync
``get_state`` cost about a tenth of a front end's GIL time under load)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from service.routes import classify, ops, page, v2


def calls(dependant: Dependant) -> Iterator:
    if dependant.call is not None:
        yield dependant.call
    for sub in dependant.dependencies:
        yield from calls(sub)


def test_no_route_or_dependency_runs_on_a_thread_pool():
    routes = [
        route for module in (classify, ops, page, v2) for route in module.router.routes if isinstance(route, APIRoute)
    ]
    assert {"/classify", "/readyz", "/v2/models/{model_name}/infer"} <= {route.path for route in routes}
    on_a_thread = [
        f"{route.path}: {call.__qualname__}"
        for route in routes
        for call in calls(route.dependant)
        if not inspect.iscoroutinefunction(call)
    ]
    assert on_a_thread == []
