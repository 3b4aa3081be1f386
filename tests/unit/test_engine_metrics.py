"""The engine renders /metrics at most once per METRICS_INTERVAL_S, and every scrape gets a rendering
made after it arrived: scrapes that come sooner wait for the next one and share it."""

from __future__ import annotations

import asyncio

from service import wire
from service.engine import METRICS_INTERVAL_S, EngineServer
from service.settings import Settings


class FakeConnection:
    def __init__(self) -> None:
        self.sent: list[wire.MetricsText] = []

    def send(self, message) -> None:
        self.sent.append(message)


def test_scrapes_share_renderings_made_after_they_arrived(monkeypatch):
    server = EngineServer(Settings(), "unused")
    renders = []
    real = server.metrics.render
    monkeypatch.setattr(server.metrics, "render", lambda: renders.append(1) or real())
    conns = [FakeConnection() for _ in range(3)]

    async def scrape_storm() -> None:
        server._scrape(conns[0], 1)  # the first is answered at once
        assert len(conns[0].sent) == 1 and len(renders) == 1
        server.metrics.images.inc(7)  # then something happens, and two more scrapes come at once
        server._scrape(conns[1], 2)
        server._scrape(conns[2], 3)
        assert not conns[1].sent and not conns[2].sent  # they wait for the next rendering
        await asyncio.sleep(METRICS_INTERVAL_S * 3)

    asyncio.run(scrape_storm())
    assert len(renders) == 2  # three scrapes, two renderings
    for conn, token in zip(conns[1:], (2, 3), strict=True):
        (answer,) = conn.sent
        assert answer.token == token and b"alexnet_images_total 7.0" in answer.text
    assert b"alexnet_images_total 0.0" in conns[0].sent[0].text
