"""Through the service: a one-image request sent behind a request of many images is answered first,
because the decode threads take the requests' images in turn."""

from __future__ import annotations

import threading
import time

import pytest

from tests.conftest import make_image
from tests.integration.conftest import settings
from tests.integration.test_service import classify, classify_many
from tests.integration.test_slots import DecodeThreadsHeld

pytestmark = pytest.mark.integration


def test_a_small_request_is_not_held_behind_a_large_one(onnx_model, inprocess_server):
    server = inprocess_server(settings(onnx_model, decode_threads=1, warmup=False))
    large = [make_image(700, 500, seed=k, fmt="PNG") for k in range(12)]  # 12 MB in all: under the body limit
    small = make_image(500, 375, seed=99)
    finished: dict[str, float] = {}

    def send(name, call):
        call()
        finished[name] = time.monotonic()

    with DecodeThreadsHeld(server):  # both requests queue for the one decode thread, large first
        senders = [threading.Thread(target=send, args=("large", lambda: classify_many(server.url, large)))]
        senders[0].start()
        time.sleep(1.0)  # the large request's images are queued before the small one arrives
        senders.append(threading.Thread(target=send, args=("small", lambda: classify(server.url, small))))
        senders[1].start()
        time.sleep(0.5)
    for sender in senders:
        sender.join(60)
    assert set(finished) == {"large", "small"}
    assert finished["small"] < finished["large"], "the one-image request waited for all twelve of the other"
