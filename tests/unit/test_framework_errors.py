"""Errors the framework raises (an unknown route, a wrong method) say what was asked and what to do,
in the service's one error shape, as README's error table promises."""

from __future__ import annotations

import asyncio

import httpx

from service.app import create_app
from service.settings import Settings


def request(method: str, path: str) -> httpx.Response:
    """Straight into the ASGI app; its lifespan (model loading) never runs, and routing needs none."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(Settings()))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.request(method, path)

    return asyncio.run(go())


def test_an_unknown_route_names_itself_and_where_the_routes_are():
    r = request("GET", "/clasify")
    assert r.status_code == 404
    assert r.json() == {"error": "no route GET /clasify; /openapi.json lists the routes", "kind": "not_found"}


def test_a_trailing_slash_is_not_redirected_but_named():
    # A 307 would point at http://<Host>/classify, plain http behind a TLS proxy, and make the client
    # send its images twice; the 404 says which route was meant.
    r = request("POST", "/classify/")
    assert r.status_code == 404 and "location" not in r.headers
    assert r.json() == {
        "error": "no route POST /classify/; the route is /classify, without the trailing slash",
        "kind": "not_found",
    }
    assert request("GET", "/").status_code == 200  # the page, not a path with its slash stripped to nothing


def test_a_wrong_method_names_the_methods_the_route_takes():
    r = request("GET", "/classify")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json() == {"error": "/classify does not take GET; send POST", "kind": "method_not_allowed"}


def test_a_route_of_its_own_keeps_its_own_404_message():
    r = request("GET", "/static/nope.js")
    assert r.status_code == 404 and r.json()["error"].startswith("no static file named 'nope.js'")
