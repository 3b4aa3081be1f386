"""GET / and its static assets, through the app (no model is loaded: these routes need none)."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from service.app import create_app
from service.settings import Settings

EXTERNAL = re.compile(r"https?://|(?:src|href)\s*=\s*[\"']//|url\(\s*[\"']?(?:https?:)?//|@import", re.I)
REFERENCE = re.compile(r"(?:src|href)\s*=\s*\"([^\"]+)\"")


class Client:
    """GETs straight into the ASGI app; its lifespan (model loading) never runs, and these routes need none."""

    def __init__(self) -> None:
        self.app = create_app(Settings())

    def get(self, path: str) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                return await client.get(path)

        return asyncio.run(go())


@pytest.fixture(scope="module")
def client() -> Client:
    return Client()


def test_index_is_html_that_links_only_its_own_assets(client):
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "<title>" in r.text and 'id="file-input"' in r.text
    refs = [ref for ref in REFERENCE.findall(r.text) if not ref.startswith("data:")]
    assert sorted(refs) == ["static/app.js", "static/style.css"]
    kinds = {"static/app.js": "text/javascript", "static/style.css": "text/css"}
    for ref in refs:
        asset = client.get("/" + ref)
        assert asset.status_code == 200, ref
        assert asset.headers["content-type"].startswith(kinds[ref])


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/static/style.css"])
def test_no_external_urls(client, path):
    body = client.get(path).text
    assert not EXTERNAL.findall(body), f"{path} refers outside the service: {EXTERNAL.findall(body)}"


def test_page_uses_the_public_api(client):
    script = client.get("/static/app.js").text
    assert "classify" in script and "v1/models" in script


@pytest.mark.parametrize(
    "path", ["/static/nope.js", "/static/..%2Fapp.py", "/static/%2e%2e%2fapp.py", "/static/../routes/page.py"]
)
def test_unknown_or_outside_files_are_404(client, path):
    r = client.get(path)
    assert r.status_code == 404
    assert "import" not in r.text  # no source file leaks, however the path is spelled


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_no_documentation_page_loads_from_a_cdn(client, path):
    """FastAPI's /docs and /redoc load their scripts from a CDN, blank on an air-gapped host: they are off."""
    r = client.get(path)
    assert r.status_code == 404 or not EXTERNAL.findall(r.text), f"{path} refers outside: {EXTERNAL.findall(r.text)}"


def test_the_openapi_schema_is_still_served_with_an_operation_id_each(client):
    """Client generators key on operationId: a route of two methods (GET and HEAD) gave both the same."""
    r = client.get("/openapi.json")
    assert r.status_code == 200 and "/classify" in r.json()["paths"]
    ids = [operation["operationId"] for path in r.json()["paths"].values() for operation in path.values()]
    assert len(ids) == len(set(ids)), sorted(ids)
