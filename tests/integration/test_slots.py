"""Arena slots go back to the front end whatever becomes of a request: answered late (its deadline
passed), abandoned (the client hung up) or orphaned (the engine went away), whether it was waiting for
a decode thread or for the engine. A leak here would end in 503 queue_full for everyone, so each case
checks that the front end's arena is empty again. And a body that stops arriving ends at the deadline."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import make_image, wait_until
from tests.integration.test_service import classify, classify_then_hang_up

pytestmark = pytest.mark.integration
IMAGE = make_image(200, 150, seed=9)


def slots_in_use(server) -> int:
    return server.frontend.pipeline.arena.used_slots


def test_slots_of_requests_past_their_deadline_return_whether_running_or_queued(gated_server):
    server, backend = gated_server(request_timeout_s=1.0)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(classify, server.url, IMAGE)
        backend.wait_started()  # its batch was prepared (pixels copied out of the arena) and runs
        queued = pool.submit(classify, server.url, IMAGE)
        wait_until(lambda: server.state.batcher.depth == 1, 30, "the second request in the queue")
        assert slots_in_use(server) == 2
        assert [running.result().status_code, queued.result().status_code] == [504, 504]
    # Both are back while the batch still hangs: the engine had copied the running one's pixels, and
    # the queued one was dropped from the queue unread.
    wait_until(lambda: slots_in_use(server) == 0, 30, "the slots to come back")
    backend.gate.set()
    assert backend.calls == [1]


def test_slots_of_a_client_that_hung_up_return(gated_server):
    server, backend = gated_server()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(classify, server.url, IMAGE)
        backend.wait_started()
        with classify_then_hang_up(server.url, IMAGE):
            wait_until(lambda: server.state.batcher.depth >= 1, 30, "the second request in the queue")
            assert slots_in_use(server) == 2
        wait_until(lambda: slots_in_use(server) == 1, 30, "the departed client's slot to come back")
        backend.gate.set()
        assert first.result().status_code == 200
    wait_until(lambda: slots_in_use(server) == 0, 30, "every slot to come back")


def test_requests_waiting_on_an_engine_that_goes_away_fail_at_once_and_free_their_slots(gated_server):
    server, backend = gated_server()
    with ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(classify, server.url, IMAGE) for _ in range(2)]
        # Submitted, not only staged: a slot is taken before its image is decoded, and a request still
        # decoding when the connection drops would go to the engine after the front end reconnects.
        client = server.frontend.pipeline.client
        wait_until(lambda: len(client._pending) == 2, 30, "both requests to be in the engine")
        for conn in list(server.engine._connections):  # the engine's end of the socket vanishes, as in a crash
            conn.writer.transport.abort()
        responses = [f.result(timeout=10) for f in waiting]
    assert [r.status_code for r in responses] == [503, 503]
    assert {r.json()["kind"] for r in responses} == {"not_ready"}
    assert slots_in_use(server) == 0
    backend.gate.set()
    wait_until(lambda: classify(server.url, IMAGE).status_code == 200, 30, "the front end to reconnect")


class DecodeThreadsHeld:
    """Every decode thread of the front end busy until the block ends: new images wait in its queue."""

    def __init__(self, server) -> None:
        self.decoder = server.frontend.pipeline._decoder
        self.release = threading.Event()
        self.jobs = []

    def __enter__(self):
        self.jobs = [self.decoder.submit(self.release.wait, 60) for _ in range(self.decoder.threads)]
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        for job in self.jobs:
            job.result(timeout=10)


def test_images_still_waiting_for_a_decode_thread_at_the_deadline_are_dropped(gated_server):
    server, backend = gated_server(request_timeout_s=1.0)
    backend.gate.set()
    with DecodeThreadsHeld(server):
        started = time.monotonic()
        response = classify(server.url, IMAGE)
        took = time.monotonic() - started
        assert response.status_code == 504 and response.json()["kind"] == "deadline_exceeded", response.text
        assert took < 5, f"answered after {took:.1f} s, not at the 1 s deadline"
        wait_until(lambda: slots_in_use(server) == 0, 10, "the slot to come back while the threads are still busy")
    assert classify(server.url, IMAGE).status_code == 200
    assert backend.calls == [1]  # only the last one: the image that timed out was never decoded nor sent


def test_images_of_a_client_that_hung_up_before_they_were_decoded_are_dropped(gated_server):
    server, backend = gated_server()
    backend.gate.set()
    with DecodeThreadsHeld(server):
        with classify_then_hang_up(server.url, IMAGE):
            wait_until(lambda: slots_in_use(server) == 1, 30, "the image to wait for a decode thread")
        wait_until(lambda: slots_in_use(server) == 0, 10, "the slot to come back while the threads are still busy")
    assert classify(server.url, IMAGE).status_code == 200
    assert backend.calls == [1]


def test_a_body_that_stops_arriving_ends_at_the_deadline(gated_server):
    server, _ = gated_server(request_timeout_s=1.0)
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            + f"Content-Length: {len(IMAGE)}\r\n\r\n".encode()
            + IMAGE[:100]  # and then nothing more
        )
        started = time.monotonic()
        head = sock.recv(65536)
        took = time.monotonic() - started
    assert head.startswith(b"HTTP/1.1 504"), head[:200]
    assert b"deadline_exceeded" in head and took < 5
