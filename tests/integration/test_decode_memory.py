"""The decode memory budget through the service: a large image (small file, large decoded size) waits
while the server's budget is spent, a photo does not, and the wait is counted in /metrics."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tests.conftest import make_image, wait_until
from tests.integration.conftest import settings
from tests.integration.test_service import classify

pytestmark = pytest.mark.integration
BUDGET_MB = 1024  # units of 16 MiB: a photo (~3 MB to decode) is under one


def big_alpha_png() -> bytes:
    """A 2000x1500 PNG with an alpha channel: ~60 KB of file, ~36 MB to decode (2 units)."""
    import io

    from PIL import Image

    y, x = np.mgrid[0:1500, 0:2000]
    rgba = np.stack([x % 256, y % 256, (x + y) % 256, np.full_like(x, 200)], axis=-1).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, "PNG")
    return out.getvalue()


def waits_counted(server) -> tuple[float, float]:
    """(count, sum) of alexnet_decode_memory_wait_seconds."""
    values = {}
    for family in server.state.metrics.registry.collect():
        for sample in family.samples:
            if sample.name.startswith("alexnet_decode_memory_wait_seconds_"):
                values[sample.name.rsplit("_", 1)[1]] = sample.value
    return values.get("count", 0.0), values.get("sum", 0.0)


def test_a_large_decode_waits_for_the_budget_and_a_photo_does_not(onnx_model, inprocess_server):
    server = inprocess_server(settings(onnx_model, decode_memory_mb=BUDGET_MB, decode_threads=2, warmup=False))
    budget = server.frontend.pipeline.budget
    big = big_alpha_png()
    answers: list = []
    sender = threading.Thread(target=lambda: answers.append(classify(server.url, big, "big.png", "image/png")))
    with budget.hold(BUDGET_MB * 2**20):  # the whole budget, spent elsewhere (another front end)
        sender.start()
        sender.join(1.0)
        assert not answers, "the large image was decoded while the budget was spent"
        photo = classify(server.url, make_image(500, 375, seed=3))
        assert photo.status_code == 200, photo.text  # a photo does not wait (nor does its decode thread)
    sender.join(30)
    assert answers and answers[0].status_code == 200, answers
    wait_until(lambda: waits_counted(server)[0] == 1, 10, "the wait to reach /metrics")
    assert waits_counted(server)[1] >= 0.5


def test_a_large_v2_json_body_is_parsed_within_the_budget_and_the_deadline(onnx_model, inprocess_server):
    import httpx

    server = inprocess_server(settings(onnx_model, decode_memory_mb=BUDGET_MB, request_timeout_s=1.0, warmup=False))
    tensor = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).round(3)
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(tensor.shape), "data": tensor.ravel().tolist()}]
    }
    url = server.url + "/v2/models/alexnet/infer"
    with server.frontend.pipeline.budget.hold(BUDGET_MB * 2**20):  # ~1 MB of JSON is charged ~40 MB: it waits
        late = httpx.post(url, json=body, timeout=60)
    assert late.status_code == 504 and "while its body was parsed" in late.json()["error"], late.text
    assert httpx.post(url, json=body, timeout=60).status_code == 200
