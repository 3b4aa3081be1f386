"""The Open Inference Protocol against a real server, spoken by Triton's own client (tritonclient[http])."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from service.postprocess import softmax
from service.preprocess import PreprocessConfig, preprocess
from tests.conftest import make_image, wait_until
from tests.fakes import install_gated_backend
from tests.integration.conftest import settings

pytestmark = pytest.mark.integration
MODEL = "alexnet"
IMAGES = [make_image(seed=seed) for seed in range(4)]


@pytest.fixture(scope="module")
def client(onnx_server):
    with triton.InferenceServerClient(onnx_server.url.removeprefix("http://")) as c:
        yield c


def image_input(images: list[bytes], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=binary)
    return tensor


def tensor_input(x: np.ndarray, binary: bool = True, name: str = "input", datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def logits_of(client, tensor: triton.InferInput, binary_out: bool = True) -> np.ndarray:
    result = client.infer(MODEL, [tensor], outputs=[triton.InferRequestedOutput("logits", binary_data=binary_out)])
    return result.as_numpy("logits")


def preprocessed(image: bytes) -> np.ndarray:
    """(1, 3, 224, 224): what /classify's pipeline feeds the model (the test model uses the default preset)."""
    return preprocess(image, PreprocessConfig())[None]


def classify_all(url: str, images: list[bytes]) -> list[dict]:
    files = [("file", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    r = httpx.post(f"{url}/classify", params={"top_k": 1000}, files=files, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["results"]


def status_of(call) -> int:
    with pytest.raises(InferenceServerException) as info:
        call()
    return int(info.value.status())


# -- health and metadata --------------------------------------------------------------------------
def test_health_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready("resnet")
    meta = client.get_server_metadata()
    assert meta["name"] == "alexnet-serve"
    assert {"classification", "binary_tensor_data"} <= set(meta["extensions"])


def test_model_metadata(client):
    for version in ("", "1"):
        meta = client.get_model_metadata(MODEL, version)
        assert meta["name"] == MODEL and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == [
            {"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]},
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
        ]
        assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}]


# -- inference ------------------------------------------------------------------------------------
def test_logits_are_identical_whichever_route_carried_the_image(client, onnx_server):
    """One image's logits via v2 BYTES, v2 FP32 (JSON and binary), and /classify.

    /classify returns probabilities, not logits: it returns ``float(softmax(logits)[i])`` in float64, so
    we compare all 1000 of them with ``softmax`` of each v2 route's logits for exact equality. softmax in
    float64 separates float32 inputs one ulp apart, so a route that preprocessed differently, lost
    precision in (de)serialisation or ran another model would fail here.
    """
    via_bytes = logits_of(client, image_input(IMAGES[:1]))
    via_json = logits_of(client, tensor_input(preprocessed(IMAGES[0]), binary=False), binary_out=False)
    via_binary = logits_of(client, tensor_input(preprocessed(IMAGES[0])))
    assert via_bytes.shape == (1, 1000) and via_bytes.dtype == np.float32
    # Another image's logits differ (exactly, not by much: the model is untrained), so equality below
    # says the routes carried this image, not merely that the model answers everything alike.
    assert not np.array_equal(logits_of(client, image_input(IMAGES[1:2])), via_bytes)
    np.testing.assert_array_equal(via_json, via_bytes)
    np.testing.assert_array_equal(via_binary, via_bytes)
    predictions = classify_all(onnx_server.url, IMAGES[:1])[0]["predictions"]
    probs = softmax(via_bytes[0])
    assert {p["index"]: p["probability"] for p in predictions} == {i: float(probs[i]) for i in range(1000)}


def test_batch_composition_does_not_change_logits(client, onnx_server):
    """Finding: ONNX Runtime's CPU provider gives bitwise-identical logits for an image alone or in a batch.

    /classify reports the batch each image ran in: all four images of one request ran as one batch of
    4 here, and each one's probabilities equal those of the same image sent alone through v2 (batch 1).
    If a backend ever broke this, the route-identity test above still holds: it sends one image at a
    time; serve with ``--max-batch-size 1`` for bitwise reproducibility on such a backend.
    """
    alone = np.concatenate([logits_of(client, image_input([image])) for image in IMAGES])
    assert len({row.tobytes() for row in alone}) == len(IMAGES)  # a row in the wrong place would show
    together = logits_of(client, image_input(IMAGES))
    np.testing.assert_array_equal(together, alone)
    results = classify_all(onnx_server.url, IMAGES)
    assert [r["timings_ms"]["batch_size"] for r in results] == [4, 4, 4, 4]
    for result, row in zip(results, alone, strict=True):
        probs = softmax(row)
        assert all(p["probability"] == float(probs[p["index"]]) for p in result["predictions"])


def test_classification_matches_classify_top5(client, onnx_server):
    for binary in (True, False):
        result = client.infer(
            MODEL,
            [image_input(IMAGES[:2])],
            request_id=f"req-{binary}",
            outputs=[triton.InferRequestedOutput("logits", binary_data=binary, class_count=5)],
        )
        response = result.get_response()
        assert response["id"] == f"req-{binary}" and response["model_name"] == MODEL
        assert [o["name"] for o in response["outputs"]] == ["logits"]
        classes = result.as_numpy("logits")
        assert classes.shape == (2, 5)
        logits = logits_of(client, image_input(IMAGES[:2]))
        for row, strings, expected in zip(logits, classes, classify_all(onnx_server.url, IMAGES[:2]), strict=True):
            parsed = [(s if isinstance(s, str) else s.decode()).split(":", 2) for s in strings]
            top5 = expected["predictions"][:5]
            assert [(int(i), label) for _, i, label in parsed] == [(p["index"], p["label"]) for p in top5]
            assert [np.float32(value) for value, _, _ in parsed] == [row[p["index"]] for p in top5]


def test_json_request_with_base64_images_and_no_outputs(onnx_server):
    """What curl sends: plain JSON, images base64-encoded; no ``outputs`` returns every output as JSON."""
    body = {
        "id": "curl-1",
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"content_type": "base64"},
                "data": [base64.b64encode(IMAGES[0]).decode()],
            }
        ],
    }
    r = httpx.post(f"{onnx_server.url}/v2/models/{MODEL}/versions/1/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "curl-1" and out["model_version"] == "1"
    assert out["outputs"][0]["shape"] == [1, 1000] and len(out["outputs"][0]["data"]) == 1000


# -- errors ---------------------------------------------------------------------------------------
def test_client_errors_have_protocol_status(client):
    x = preprocessed(IMAGES[0])
    wrong_count = tensor_input(x, binary=False)
    wrong_count.set_shape([2, 3, 224, 224])  # JSON data holds one image's elements
    short_binary = tensor_input(x)
    short_binary.set_shape([2, 3, 224, 224])  # binary_data_size holds one image
    logits = [triton.InferRequestedOutput("logits")]
    cases = {
        "wrong datatype": lambda: client.infer(MODEL, [tensor_input(x.astype(np.float64), datatype="FP64")]),
        "wrong shape": lambda: client.infer(MODEL, [tensor_input(x[:, :, :100, :100])]),
        "unknown input": lambda: client.infer(MODEL, [tensor_input(x, name="pixels")]),
        "unknown output": lambda: client.infer(
            MODEL, [image_input(IMAGES[:1])], outputs=[triton.InferRequestedOutput("probs")]
        ),
        "element count": lambda: client.infer(MODEL, [wrong_count], outputs=logits),
        "binary size": lambda: client.infer(MODEL, [short_binary], outputs=logits),
        "not an image": lambda: client.infer(MODEL, [image_input([b"not an image"])]),
        "unknown model": lambda: client.infer("resnet", [image_input(IMAGES[:1])]),
        "unknown version": lambda: client.infer(MODEL, [image_input(IMAGES[:1])], model_version="2"),
        "unknown model metadata": lambda: client.get_model_metadata(MODEL, "2"),
        "too many images": lambda: client.infer(MODEL, [image_input([b"x"] * 33)]),
        "deadline (timeout 1 us)": lambda: client.infer(MODEL, [image_input(IMAGES[:1])], timeout=1),
    }
    statuses = {name: status_of(call) for name, call in cases.items()}
    assert statuses == {
        **{name: 400 for name in list(cases)[:7]},
        "unknown model": 404,
        "unknown version": 404,
        "unknown model metadata": 404,
        "too many images": 413,
        "deadline (timeout 1 us)": 504,
    }


@pytest.mark.parametrize(
    "body, headers",
    [
        (b'{"inputs": [', {}),
        (
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "datatype": "BYTES",
                            "shape": [1],
                            "data": ["%%%"],
                            "parameters": {"content_type": "base64"},
                        }
                    ]
                }
            ).encode(),
            {},
        ),
        (
            json.dumps(
                {
                    "inputs": [
                        {"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 100}}
                    ]
                }
            ).encode()
            + b"\x05\0\0\0ab",
            "truncated",
        ),
    ],
    ids=["malformed JSON", "bad base64", "truncated binary"],
)
def test_malformed_bodies_get_400_with_the_protocol_error_shape(onnx_server, body, headers):
    if headers == "truncated":
        headers = {"Inference-Header-Content-Length": str(body.index(b"\x05"))}
    r = httpx.post(f"{onnx_server.url}/v2/models/{MODEL}/infer", content=body, headers=headers, timeout=30)
    assert r.status_code == 400
    assert list(r.json()) == ["error"] and r.json()["error"]


def test_a_form_upload_is_pointed_at_classify(onnx_server):
    """A form upload (curl -F) to v2 is the most likely mistake: say where it goes, not a JSON error."""
    r = httpx.post(f"{onnx_server.url}/v2/models/{MODEL}/infer", files={"file": ("a.jpg", b"\xff\xd8\xff")}, timeout=30)
    assert r.status_code == 400 and "send images as multipart/form-data to /classify" in r.json()["error"]


def test_not_ready_is_503(onnx_model, inprocess_server, monkeypatch):
    """A server still warming up is live; v2 says not ready and refuses inference with 503. (A model
    that fails to load stops the server: tests/integration/test_processes.py.)"""
    holder = install_gated_backend(monkeypatch)
    holder["warmup_gate"].clear()  # held in its warm-up until the end of the test
    server = inprocess_server(settings(onnx_model), wait_ready=False)
    wait_until(lambda: "warming up" in httpx.get(f"{server.url}/readyz").json()["reason"], 60, "the engine to warm up")
    try:
        with triton.InferenceServerClient(server.url.removeprefix("http://")) as client:
            assert client.is_server_live()
            assert not client.is_server_ready() and not client.is_model_ready(MODEL)
            assert status_of(lambda: client.infer(MODEL, [image_input(IMAGES[:1])])) == 503
        r = httpx.get(f"{server.url}/v2/health/ready")
        assert r.status_code == 503 and "warming up" in r.json()["error"] and r.headers["Retry-After"]
    finally:
        holder["warmup_gate"].set()
