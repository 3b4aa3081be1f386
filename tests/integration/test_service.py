"""The service end to end: real uvicorn on 127.0.0.1, real HTTP, the ONNX Runtime CPU backend."""

from __future__ import annotations

import contextlib
import io
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from service.postprocess import softmax
from tests.conftest import make_image, start_server, wait_until
from tests.fakes import install_gated_backend, occupy
from tests.integration.conftest import settings
from tests.synthetic import NUM_CLASSES

pytestmark = pytest.mark.integration


def classify(url: str, data: bytes, name: str = "a.jpg", content_type: str = "image/jpeg", **params) -> httpx.Response:
    return httpx.post(url + "/classify", files={"file": (name, data, content_type)}, params=params, timeout=60)


def classify_many(url: str, images: list[bytes], **params) -> list[dict]:
    """One request with every image as a ``file`` field (PNGs named 0.png, 1.png, ...); its results."""
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    r = httpx.post(url + "/classify", files=files, params=params, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["results"]


@contextlib.contextmanager
def classify_then_hang_up(url: str, data: bytes):
    """A /classify request sent on a raw connection that is closed, unanswered, when the block ends."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            + f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        yield


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


# -- correctness: the fitted-head model (tests/synthetic.py), whose answers follow the image ------
@pytest.fixture(scope="module")
def fitted_server(fitted, tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("fitted"), "--onnx", str(fitted.onnx), "--backend", "onnxruntime")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def held_out(fitted) -> tuple[list[bytes], np.ndarray]:
    """Three held-out images of each class (24) and PyTorch's probabilities for each, (24, 8).

    Precondition of every test that uses them: the answers differ from image to image (the fitted
    model gets most of them right, chance is 1/8), so an answer that belongs to another image, or
    that ignores the image, does not match.
    """
    items = fitted.eval_images(per_class=3)
    images, labels = [data for data, _ in items], np.array([label for _, label in items])
    probs = np.stack([softmax(row) for row in fitted.reference_logits(images)])
    assert np.mean(probs.argmax(1) == labels) >= 0.5
    return images, probs


def as_probabilities(result: dict) -> np.ndarray:
    """One image's answer asked with ``top_k`` >= 8 as a vector over the classes, checking its form."""
    predictions = result["predictions"]
    assert len(predictions) == NUM_CLASSES
    assert [p["probability"] for p in predictions] == sorted((p["probability"] for p in predictions), reverse=True)
    vector = np.full(NUM_CLASSES, np.nan)
    for p in predictions:
        assert p["label"] == f"class_{p['index']}"
        vector[p["index"]] = p["probability"]
    return vector


def assert_reference(results: list[dict], expected: np.ndarray) -> None:
    """Each answer is PyTorch's for its own image, to 1e-4: a uniform 1/8 (zero logits), another image's
    answer or another model's is off by more than 0.1."""
    got = np.stack([as_probabilities(r) for r in results])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_each_answer_is_the_pytorch_reference_for_that_image(fitted_server, held_out):
    images, expected = held_out
    bodies = [classify(fitted_server.url, data, "a.png", "image/png", top_k=8).json() for data in images]
    assert_reference([body["results"][0] for body in bodies], expected)
    assert bodies[0]["model"]["weights"] != "untrained" and bodies[0]["backend"]["name"] == "onnxruntime"


def test_raw_body_and_multipart_give_the_same_answer_and_top_k_is_honoured(fitted_server, held_out):
    images, expected = held_out
    multipart = classify(fitted_server.url, images[5], "a.png", "image/png", top_k=3).json()["results"][0]
    raw = httpx.post(
        fitted_server.url + "/classify?top_k=3", content=images[5], headers={"content-type": "image/png"}
    ).json()["results"][0]
    assert [p["index"] for p in multipart["predictions"]] == list(np.argsort(-expected[5])[:3])
    assert multipart["predictions"] == raw["predictions"]


def test_several_images_in_one_request_each_get_their_own_answer(fitted_server, held_out):
    images, expected = held_out
    together = classify_many(fitted_server.url, images[:16], top_k=NUM_CLASSES)
    assert [r["filename"] for r in together] == [f"{i}.png" for i in range(16)]
    assert [r["timings_ms"]["batch_size"] for r in together] == [16] * 16  # one request, one batch
    assert_reference(together, expected[:16])


def test_concurrent_requests_are_batched_and_answers_equal_single_answers(fitted, held_out, server_factory):
    images, expected = held_out
    server = server_factory("--onnx", str(fitted.onnx), "--backend", "onnxruntime", "--max-batch-size", "16")
    alone = [classify(server.url, data, "a.png", "image/png", top_k=8).json()["results"][0] for data in images]
    before_count = metric(server.url, "alexnet_batch_size_count")
    before_sum = metric(server.url, "alexnet_batch_size_sum")
    with ThreadPoolExecutor(len(images)) as pool:
        together = list(
            pool.map(lambda d: classify(server.url, d, "a.png", "image/png", top_k=8).json()["results"][0], images)
        )
    batches = metric(server.url, "alexnet_batch_size_count") - before_count
    batched_images = metric(server.url, "alexnet_batch_size_sum") - before_sum
    assert batched_images == len(images)
    assert batches < len(images), "no two concurrent requests shared a batch"
    assert max(r["timings_ms"]["batch_size"] for r in together) > 1
    # ONNX Runtime on the CPU gives bitwise-identical rows whatever the batch composition.
    assert [r["predictions"] for r in together] == [r["predictions"] for r in alone]
    assert_reference(together, expected)


# -- bad input: a clear 4xx JSON error ---------------------------------------------------------
def _encoded(fmt: str, size=(16, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "kwargs, status, kind",
    [
        (dict(content=b"", headers={"content-type": "image/jpeg"}), 400, "empty_body"),
        (dict(files={"file": ("x.txt", b"just text", "text/plain")}), 400, "not_an_image"),
        (dict(files={"file": ("t.jpg", make_image(400, 300)[:1500], "image/jpeg")}), 400, "corrupt_image"),
        (dict(files={"file": ("i.ico", _encoded("ICO"), "image/x-icon")}), 415, "unsupported_image_format"),
        (dict(files={"file": ("bomb.png", _encoded("PNG", (12000, 12000)), "image/png")}), 413, "image_too_large"),
        (dict(content=b"x" * 3_000_000, headers={"content-type": "image/jpeg"}), 413, "body_too_large"),
        (dict(content=b"{}", headers={"content-type": "application/json"}), 415, "unsupported_media_type"),
        (dict(files=[("file", ("a.jpg", b"x", "image/jpeg"))] * 5), 413, "too_many_images"),
        (dict(files={"other": ("a.jpg", b"x", "image/jpeg")}), 400, "no_images"),
        (dict(files={"file": ("a.jpg", make_image(64, 64), "image/jpeg")}, params={"top_k": 0}), 422, "bad_parameter"),
        (
            dict(files={"file": ("a.jpg", make_image(64, 64), "image/jpeg")}, params={"top_k": "many"}),
            422,
            "bad_parameter",
        ),
        (
            dict(files={"file": ("a.jpg", make_image(64, 64), "image/jpeg")}, params={"top_k": 1001}),
            422,
            "bad_parameter",
        ),
    ],
    ids=[
        "empty",
        "not-image",
        "truncated",
        "ico",
        "pixel-bomb",
        "body-too-large",
        "json",
        "too-many",
        "no-file-field",
        "top_k-0",
        "top_k-text",
        "top_k-1001",
    ],
)
def test_bad_input_gets_a_clear_4xx_json_error(limited_server, kwargs, status, kind):
    r = httpx.post(limited_server.url + "/classify", timeout=60, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["kind"] == kind and len(body["error"]) > 10


def test_a_top_k_that_is_not_a_number_is_told_in_the_words_of_the_range_check(limited_server):
    image = {"file": ("a.jpg", make_image(64, 64), "image/jpeg")}
    words = {
        top_k: httpx.post(limited_server.url + "/classify", files=image, params={"top_k": top_k}, timeout=60).json()
        for top_k in ("many", 0)
    }
    assert words["many"] == {"error": "top_k must be an integer, got 'many'", "kind": "bad_parameter"}
    assert words[0]["error"].startswith("top_k must be between 1 and ")


def test_a_misspelt_query_parameter_is_refused_not_ignored(limited_server):
    image = {"file": ("a.jpg", make_image(64, 64), "image/jpeg")}
    r = httpx.post(limited_server.url + "/classify", files=image, params={"topk": 1}, timeout=60)
    assert r.status_code == 422
    assert r.json() == {"error": "unknown query parameter 'topk': /classify takes top_k", "kind": "bad_parameter"}


@pytest.mark.parametrize("text", ["1.0", "1e0", " 1", "1 ", "1_0", "0x1", "１", ""])
def test_a_top_k_that_is_not_integer_text_is_refused_not_rounded(limited_server, text):
    # pydantic alone would read '1.0', ' 1' and '1 ' as 1 and '1_0' as 10.
    image = {"file": ("a.jpg", make_image(64, 64), "image/jpeg")}
    r = httpx.post(limited_server.url + "/classify", files=image, params={"top_k": text}, timeout=60)
    assert r.status_code == 422, r.text
    assert r.json() == {"error": f"top_k must be an integer, got {text!r}", "kind": "bad_parameter"}


def test_a_top_k_with_a_sign_or_leading_zero_is_an_integer(limited_server):
    image = {"file": ("a.jpg", make_image(64, 64), "image/jpeg")}
    for text in ("+3", "03"):
        r = httpx.post(limited_server.url + "/classify", files=image, params={"top_k": text}, timeout=60)
        assert r.status_code == 200 and len(r.json()["results"][0]["predictions"]) == 3, (text, r.text)


def test_a_body_streamed_without_length_is_cut_at_the_limit(limited_server):
    def chunks():
        for _ in range(40):
            yield b"y" * 100_000

    r = httpx.post(limited_server.url + "/classify", content=chunks(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 413 and r.json()["kind"] == "body_too_large"


def test_bad_images_do_not_disturb_good_ones_in_flight(limited_server, held_out):
    images, expected = held_out

    def send(i):
        if i % 2:
            return classify(limited_server.url, images[i], "a.png", "image/png", top_k=8)
        return classify(limited_server.url, b"garbage" * 10)

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(send, range(12)))
    assert [r.status_code for r in responses] == [400, 200] * 6
    assert_reference([r.json()["results"][0] for r in responses[1::2]], expected[1:12:2])


@pytest.fixture(scope="module")
def limited_server(fitted, tmp_path_factory):
    server = start_server(
        tmp_path_factory.mktemp("limited"),
        "--onnx",
        str(fitted.onnx),
        "--backend",
        "onnxruntime",
        "--max-body-bytes",
        "2000000",
        "--max-image-pixels",
        "100000000",
        "--max-images-per-request",
        "4",
    )
    yield server
    server.stop()


# -- overload, deadlines, readiness, shutdown, disconnects ------------------------------------
def test_a_full_queue_answers_503_with_retry_after(gated_server):
    server, backend = gated_server(queue_capacity=2, max_images_per_request=1)
    data = make_image(100, 100)
    with ThreadPoolExecutor(3) as pool:
        first, queued = occupy(pool, lambda: classify(server.url, data), backend, server.state.batcher, queued=2)
        refused = classify(server.url, data)
        backend.gate.set()
        assert refused.status_code == 503 and refused.json()["kind"] == "queue_full"
        assert refused.headers["retry-after"] == "1"
        assert [f.result().status_code for f in [first, *queued]] == [200, 200, 200]


def test_ready_only_after_warm_up_while_live_at_once(onnx_model, inprocess_server, monkeypatch):
    holder = install_gated_backend(monkeypatch)
    holder["warmup_gate"].clear()
    server = inprocess_server(settings(onnx_model), wait_ready=False)
    assert httpx.get(server.url + "/healthz").status_code == 200
    # Not ready throughout: first while the front end connects to the engine, then while it warms up.
    wait_until(lambda: "warming" in readyz_reason(server.url), 30, "/readyz to say the engine is warming up")
    r = httpx.get(server.url + "/readyz")
    assert r.status_code == 503 and "warming" in r.json()["reason"]
    head = httpx.head(server.url + "/readyz")  # as some load balancers probe: the status, no body
    assert head.status_code == 503 and head.content == b""
    assert classify(server.url, make_image(64, 64)).json()["kind"] == "not_ready"
    holder["warmup_gate"].set()
    server.wait_ready()
    assert httpx.get(server.url + "/readyz").status_code == 200
    assert [httpx.head(server.url + path).status_code for path in ("/healthz", "/readyz")] == [200, 200]


def readyz_reason(url: str) -> str:
    r = httpx.get(url + "/readyz")
    assert r.status_code == 503, r.text  # never ready while the warm-up gate is closed
    return r.json()["reason"]


def test_graceful_shutdown_completes_requests_in_flight(gated_server):
    server, backend = gated_server()
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(classify, server.url, make_image(100, 100))
        backend.wait_started()
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        # Shutdown closes the listening socket at once (new connections are refused) while the open one waits.
        wait_until(lambda: refused(server.url + "/healthz"), 10, "new connections to be refused")
        assert not in_flight.done()
        backend.gate.set()
        assert in_flight.result().status_code == 200
        stopper.join(30)
    assert not server.thread.is_alive()


def refused(url: str) -> bool:
    """True once the server no longer serves new connections.

    A connection the kernel queued just as the listener closed is reset rather than refused, and one
    uvicorn accepted just before is closed unanswered: neither was served.
    """
    try:
        httpx.get(url, timeout=2)
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
        return True
    return False


def test_sigterm_stops_the_process_cleanly(onnx_model, server_factory):
    server = server_factory("--onnx", str(onnx_model), "--backend", "onnxruntime")
    # uvicorn re-raises the captured SIGTERM after its graceful shutdown, so -15 is a clean exit too.
    assert server.stop() in (0, -15)
    log = server.log()
    assert "Waiting for application shutdown" in log and "stopped" in log and "Traceback" not in log


def test_a_client_that_hangs_up_takes_no_batch_slot(gated_server):
    server, backend = gated_server()
    data = make_image(100, 100)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(classify, server.url, data)
        backend.wait_started()
        with classify_then_hang_up(server.url, data):
            wait_until(lambda: server.state.batcher.depth >= 1, 30, "the second request in the queue")
        wait_until(
            lambda: metric(server.url, 'alexnet_errors_total{kind="client_disconnected"}') >= 1,
            30,
            "the hang-up to be noticed",
        )
        backend.gate.set()
        assert first.result().status_code == 200
    assert backend.calls == [1], "the departed client's image was still inferred"


def test_models_endpoint_reports_provenance_backend_and_batching(onnx_server):
    (model,) = httpx.get(onnx_server.url + "/v1/models").json()["models"]
    assert model["weights"] == "untrained" and model["untrained"] is True
    assert model["weights_provenance"] == {"source": "untrained", "seed": 0}  # recorded by the export
    assert model["arch"] == "torchvision" and model["num_classes"] == 1000
    assert model["backend"]["name"] == "onnxruntime" and model["backend"]["precision"] == "fp32"
    assert model["batching"]["max_batch_size"] == 32


def test_framework_errors_use_the_same_error_shape(limited_server):
    missing = httpx.get(limited_server.url + "/nope")
    assert missing.status_code == 404 and missing.json()["kind"] == "not_found"
    wrong_method = httpx.get(limited_server.url + "/classify")
    assert wrong_method.status_code == 405 and wrong_method.json()["kind"] == "method_not_allowed"
    broken_form = httpx.post(
        limited_server.url + "/classify",
        content=b"--b\r\n\xff\xff\r\n\r\n",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert broken_form.status_code == 400 and broken_form.json()["kind"] == "bad_request"
    assert broken_form.json()["error"].startswith("the multipart body could not be read: ")
