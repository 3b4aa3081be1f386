"""What the middlewares answer shows in /metrics like any other error, and /v1/models tells the truth
about warm-up: a real ``python -m service`` with ALEXNET_API_KEY set and two front ends (so the scrape
may land on another process than the error: /metrics is one view over all of them)."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import wait_until
from tests.integration.conftest import API_KEY
from tests.integration.conftest import KEYED_MAX_BODY_BYTES as LIMIT

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def errors_by_kind(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=30).text
    return {kind: float(n) for kind, n in re.findall(r'^alexnet_errors_total\{kind="([^"]+)"\} (\S+)$', text, re.M)}


def test_the_401_and_both_413s_are_counted_by_kind(keyed_server):
    url = keyed_server.url
    before = errors_by_kind(url)

    no_key = httpx.post(url + "/classify", content=b"x", headers={"Content-Type": "image/jpeg"})
    wrong_key = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer nope"})
    assert no_key.status_code == wrong_key.status_code == 401
    assert no_key.json()["kind"] == "unauthorized" and no_key.headers["www-authenticate"] == "Bearer"

    # Declared too large: answered by the middleware from Content-Length, before the body is read.
    declared = httpx.post(
        url + "/classify", content=b"\0" * (LIMIT + 1), headers={**AUTH, "Content-Type": "image/jpeg"}
    )
    assert declared.status_code == 413 and declared.json()["kind"] == "body_too_large"
    assert f"limit is {LIMIT}" in declared.json()["error"]

    # No Content-Length (chunked): the limit trips while the body streams in.
    def chunks():
        for _ in range(4):
            yield b"\0" * (LIMIT // 2)

    streamed = httpx.post(url + "/classify", content=chunks(), headers={**AUTH, "Content-Type": "image/jpeg"})
    assert streamed.status_code == 413 and streamed.json()["kind"] == "body_too_large"

    def counted():
        now = errors_by_kind(url)
        grew = {kind: now.get(kind, 0) - before.get(kind, 0) for kind in ("unauthorized", "body_too_large")}
        return grew if grew == {"unauthorized": 2, "body_too_large": 2} else None

    # Each front end sends its counts every 0.1 s; the one scraped sends its own first.
    wait_until(counted, 10, "the 401s and 413s to show in /metrics")


def test_models_says_it_did_not_warm_up_with_warmup_false(keyed_server):
    assert httpx.get(keyed_server.url + "/v1/models").status_code == 401
    entry = httpx.get(keyed_server.url + "/v1/models", headers=AUTH).json()["models"][0]
    assert entry["ready"] is True and entry["warmed_up"] is False


def test_models_says_it_warmed_up_by_default(onnx_server):
    entry = httpx.get(onnx_server.url + "/v1/models").json()["models"][0]
    assert entry["ready"] is True and entry["warmed_up"] is True
