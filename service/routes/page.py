"""The page for people: ``GET /`` serves ``static/index.html``; its script and style come from ``/static/``.

No build step and no external URLs: the page works offline and talks to the service only through the
public ``/classify`` and ``/v1/models`` APIs.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.errors import NotFound

router = APIRouter(tags=["page"])

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


def _list_assets() -> dict[str, Path]:
    """Files served, by exact name, listed once at import: a request can never reach outside the folder."""
    if not STATIC_DIR.is_dir():
        return {}
    return {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in MEDIA_TYPES}


ASSETS = _list_assets()
# The page is tiny and changes with the service version; revalidating each load costs nothing.
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def _serve(name: str) -> FileResponse:
    path = ASSETS.get(name)
    if path is None:
        raise NotFound(f"no static file named {name!r}; the page is at /")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    """The drag-and-drop classification page."""
    return _serve("index.html")


@router.get("/static/{name}", include_in_schema=False)
async def asset(name: str) -> FileResponse:
    """The page's script and style."""
    return _serve(name)
