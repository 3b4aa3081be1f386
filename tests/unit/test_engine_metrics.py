"""The engine renders /metrics at most once per METRICS_INTERVAL_S: a scrape storm costs it at most
ten renderings a second, and a scrape after the interval sees what changed."""

from __future__ import annotations

from service import engine as engine_module
from service.engine import METRICS_INTERVAL_S, EngineServer
from service.settings import Settings


def test_metrics_are_rendered_at_most_once_per_interval(monkeypatch):
    server = EngineServer(Settings(), "unused")
    renders = []
    real = server.metrics.render
    monkeypatch.setattr(server.metrics, "render", lambda: renders.append(1) or real())
    clock = [1000.0]
    monkeypatch.setattr(engine_module.time, "monotonic", lambda: clock[0])
    first = server.render_metrics()
    server.metrics.images.inc(7)
    clock[0] += METRICS_INTERVAL_S / 2
    assert server.render_metrics() is first and len(renders) == 1  # within the interval: the same text
    clock[0] += METRICS_INTERVAL_S
    assert b"alexnet_images_total 7.0" in server.render_metrics() and len(renders) == 2
