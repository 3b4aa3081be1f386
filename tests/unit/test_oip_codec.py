"""The Open Inference Protocol codec without a server: parsing, checks, classification, encoding."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

from service import oip
from service.oip import ProtocolError
from service.postprocess import top_k

S = 4  # a small spatial size keeps tensors readable


def body_with_binary(header: dict, *chunks: bytes) -> tuple[bytes, int]:
    head = json.dumps(header).encode()
    return head + b"".join(chunks), len(head)


def bytes_tensor(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def fp32_input(data, shape, **extra) -> dict:
    return {"name": "input", "datatype": "FP32", "shape": shape, "data": data, **extra}


# -- parsing --------------------------------------------------------------------------------------
def test_json_fp32_flat_and_nested_give_the_same_tensor():
    values = np.arange(2 * 3, dtype=np.float32) / 7
    flat = oip.parse_request(json.dumps({"inputs": [fp32_input(values.tolist(), [2, 3])]}).encode())
    nested = oip.parse_request(json.dumps({"inputs": [fp32_input(values.reshape(2, 3).tolist(), [2, 3])]}).encode())
    for req in (flat, nested):
        assert req.inputs[0].data.dtype == np.float32
        np.testing.assert_array_equal(req.inputs[0].data, values.reshape(2, 3))
    assert flat.id is None and flat.outputs is None and flat.binary_output is False


def test_request_fields_are_read():
    req = oip.parse_request(
        json.dumps(
            {
                "id": "42",
                "parameters": {"binary_data_output": True},
                "inputs": [fp32_input([1.0], [1])],
                "outputs": [{"name": "logits", "parameters": {"binary_data": False, "classification": 3}}],
            }
        ).encode()
    )
    assert req.id == "42" and req.binary_output is True and req.timeout_s is None
    timed = oip.parse_request(
        json.dumps({"parameters": {"timeout": 250_000}, "inputs": [fp32_input([1.0], [1])]}).encode()
    )
    assert timed.timeout_s == 0.25
    assert req.outputs == [oip.RequestedOutput("logits", binary=False, classification=3)]


def test_binary_inputs_are_sliced_in_order():
    x = np.random.default_rng(0).standard_normal((1, 3, S, S)).astype(np.float32)
    header = {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 3, S, S], "parameters": {"binary_data_size": x.nbytes}},
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [2],
                "parameters": {"binary_data_size": len(bytes_tensor(b"ab", b""))},
            },
        ]
    }
    body, length = body_with_binary(header, x.tobytes(), bytes_tensor(b"ab", b""))
    req = oip.parse_request(body, length)
    np.testing.assert_array_equal(req.inputs[0].data, x)
    assert req.inputs[1].data.tolist() == [b"ab", b""]


def test_json_bytes_are_utf8_or_base64_when_asked():
    raw = b"\xff\xd8\xff\xe0 not utf-8"
    plain = oip.parse_request(
        json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["héllo"]}]}).encode()
    )
    assert plain.inputs[0].data.tolist() == ["héllo".encode()]
    b64 = oip.parse_request(
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "BYTES",
                        "shape": [1],
                        "data": [base64.b64encode(raw).decode()],
                        "parameters": {"content_type": "base64"},
                    }
                ]
            }
        ).encode()
    )
    assert b64.inputs[0].data.tolist() == [raw]


def test_header_length_is_checked():
    assert oip.header_length(None, 10) is None
    assert oip.header_length("7", 10) == 7
    for bad in ("-1", "x", "11", "\u00b2"):
        with pytest.raises(ProtocolError):
            oip.header_length(bad, 10)


MALFORMED = {
    "not json": (b"{nope", None, "not valid JSON"),
    "nested too deep": (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, "not valid JSON"),
    "not an object": (b"[1]", None, "JSON object"),
    "no inputs": (b'{"inputs": []}', None, "non-empty"),
    "id not a string": (json.dumps({"id": 1, "inputs": [fp32_input([1.0], [1])]}).encode(), None, "'id'"),
    "unknown datatype": (
        json.dumps({"inputs": [{"name": "input", "datatype": "FLOAT", "shape": [1], "data": [1]}]}).encode(),
        None,
        "datatype 'FLOAT'",
    ),
    "negative dim": (json.dumps({"inputs": [fp32_input([1.0], [-1])]}).encode(), None, "non-negative"),
    "count mismatch": (json.dumps({"inputs": [fp32_input([1.0, 2.0, 3.0], [2])]}).encode(), None, "3 elements"),
    "strings as FP32": (json.dumps({"inputs": [fp32_input(["1.0"], [1])]}).encode(), None, "FP32 values"),
    "ragged": (json.dumps({"inputs": [fp32_input([[1.0], [2.0, 3.0]], [3])]}).encode(), None, "ragged"),
    "no data": (
        json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1]}]}).encode(),
        None,
        "neither",
    ),
    "twice": (json.dumps({"inputs": [fp32_input([1.0], [1]), fp32_input([1.0], [1])]}).encode(), None, "twice"),
    "bad base64": (
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "BYTES",
                        "shape": [1],
                        "data": ["***"],
                        "parameters": {"content_type": "base64"},
                    }
                ]
            }
        ).encode(),
        None,
        "base64",
    ),
    "out of range": (
        json.dumps({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [300]}]}).encode(),
        None,
        "out of range",
    ),
    "shared memory": (
        json.dumps({"inputs": [fp32_input([1.0], [1], parameters={"shared_memory_region": "r"})]}).encode(),
        None,
        "shared memory",
    ),
    "bad timeout": (
        json.dumps({"parameters": {"timeout": 1.5}, "inputs": [fp32_input([1.0], [1])]}).encode(),
        None,
        "timeout",
    ),
    "BYTES nested deeper than the shape": (
        json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [[["a"]]]}]}).encode(),
        None,
        "nested deeper than its shape",
    ),
    "BYTES more elements than the shape": (
        json.dumps(
            {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["a", "b", "c"]}]}
        ).encode(),
        None,
        "more elements than shape",
    ),
    "bad classification": (
        json.dumps(
            {"inputs": [fp32_input([1.0], [1])], "outputs": [{"name": "logits", "parameters": {"classification": "5"}}]}
        ).encode(),
        None,
        "classification",
    ),
    "classification not an integer": (  # /v2's top_k: 1.0 is refused as /classify?top_k=1.0 is
        json.dumps(
            {"inputs": [fp32_input([1.0], [1])], "outputs": [{"name": "logits", "parameters": {"classification": 1.0}}]}
        ).encode(),
        None,
        "classification' must be a non-negative integer",
    ),
}


def _binary_case(size: int, payload: bytes, datatype: str = "FP32", shape=(2,)) -> tuple[bytes, int]:
    header = {
        "inputs": [
            {"name": "input", "datatype": datatype, "shape": list(shape), "parameters": {"binary_data_size": size}}
        ]
    }
    return body_with_binary(header, payload)


BINARY_CASES = {
    "truncated section": (*_binary_case(8, b"\0" * 5), "truncated"),
    "size does not fit shape": (*_binary_case(4, b"\0" * 4), "needs 8"),
    "unclaimed bytes": (*_binary_case(8, b"\0" * 9), "no input claims"),
    "BYTES length cut": (*_binary_case(6, bytes_tensor(b"a") + b"\0", "BYTES"), "4-byte length"),
    "BYTES element cut": (*_binary_case(7, struct.pack("<I", 9) + b"abc", "BYTES", (1,)), "claims 9"),
    "BYTES count": (*_binary_case(5, bytes_tensor(b"a"), "BYTES"), "1 BYTES elements"),
}


@pytest.mark.parametrize(
    "body, length, message", [*MALFORMED.values(), *BINARY_CASES.values()], ids=[*MALFORMED, *BINARY_CASES]
)
def test_malformed_requests_are_protocol_errors(body, length, message):
    with pytest.raises(ProtocolError, match=message) as info:
        oip.parse_request(body, length)
    assert info.value.status == 400


# -- classification and responses -----------------------------------------------------------------
def test_classification_strings_follow_triton_and_top_k():
    labels = [f"class {i}" for i in range(6)]
    logits = np.array([[0.5, 3.25, -1.0, 3.25, 0.1, 2.0], [1 / 3, 0, 0, 0, 0, 0]], dtype=np.float32)
    out = oip.classification(logits, labels, 3)
    assert out.shape == (2, 3)
    assert out[0].tolist() == [b"3.25:1:class 1", b"3.25:3:class 3", b"2.0:5:class 5"]  # ties: lower index first
    value, index, label = out[1, 0].decode().split(":", 2)
    assert np.float32(value) == logits[1, 0] and index == "0" and label == "class 0"  # round-trips exactly
    for row, strings in zip(logits, out, strict=True):
        assert [int(s.split(b":")[1]) for s in strings] == [p["index"] for p in top_k(row, labels, 3)]


def test_json_response_round_trips_float32_exactly():
    logits = np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)
    body, headers = oip.encode_response("alexnet", "1", "7", [oip.OutputTensor("logits", logits)])
    assert headers == {"Content-Type": "application/json"}
    obj = json.loads(body)
    assert obj["model_name"] == "alexnet" and obj["model_version"] == "1" and obj["id"] == "7"
    out = obj["outputs"][0]
    assert out["datatype"] == "FP32" and out["shape"] == [2, 5]
    np.testing.assert_array_equal(np.array(out["data"], dtype=np.float32).reshape(2, 5), logits)
    assert "id" not in json.loads(oip.encode_response("alexnet", "1", None, [])[0])


def test_binary_response_decodes_with_tritonclient():
    from tritonclient.http import InferResult

    logits = np.random.default_rng(2).standard_normal((2, 5)).astype(np.float32)
    classes = oip.classification(logits, list("abcde"), 2)
    body, headers = oip.encode_response(
        "alexnet",
        "1",
        None,
        [oip.OutputTensor("logits", logits, binary=True), oip.OutputTensor("classes", classes, binary=True)],
    )
    length = int(headers[oip.HEADER_LENGTH])
    assert headers["Content-Type"] == "application/octet-stream"
    assert json.loads(body[:length])["outputs"][0]["parameters"] == {"binary_data_size": logits.nbytes}
    result = InferResult.from_response_body(body, header_length=length)
    np.testing.assert_array_equal(result.as_numpy("logits"), logits)
    assert result.as_numpy("classes").tolist() == classes.tolist()


def test_json_holding_more_than_a_request_of_its_images_could_is_refused_before_parsing():
    empty_lists = (
        b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [' + b"[]," * 40_000 + b"1]}]}"
    )
    with pytest.raises(ProtocolError, match="40003 arrays; a request of up to 32 images needs at most 33792"):
        oip.check_json_counts(empty_lists, max_images=32)
    strings = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [3000], "data": ["a"] * 3000}]})
    with pytest.raises(ProtocolError, match="strings"):
        oip.check_json_counts(strings.encode(), max_images=32)
    nested = np.zeros((32, 3, 224, 224), np.float32).tolist()  # the largest valid request, nested in full
    body = json.dumps({"inputs": [fp32_input(nested, [32, 3, 224, 224])], "outputs": [{"name": "logits"}]})
    oip.check_json_counts(body.encode(), max_images=32)
    assert oip.parse_request(body.encode(), max_images=32).inputs[0].data.shape == (32, 3, 224, 224)
    many = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [32], "data": ["a"] * 32}]})
    oip.check_json_counts(many.encode(), max_images=32)
    assert len(oip.parse_request(many.encode(), max_images=32).inputs[0].data) == 32


def test_a_bytes_input_of_more_images_than_allowed_is_refused_before_its_elements_are_read():
    from service.errors import TooManyImages

    head = json.dumps(
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [100_000], "parameters": {"binary_data_size": 6}}]}
    ).encode()
    body = head + struct.pack("<I", 2) + b"ab"  # far fewer elements than the shape says: never read
    with pytest.raises(TooManyImages, match="a batch of 100000 in one request; the limit is 32"):
        oip.parse_request(body, len(head), max_images=32)
    with pytest.raises(ProtocolError, match="1 BYTES elements"):  # without the limit: read, then refused
        oip.parse_request(body, len(head))


def test_json_counts_look_at_the_json_text_only_not_the_binary_data_after_it():
    head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]}).encode()
    body = head + b"[" * 100_000  # binary image bytes may hold any byte
    oip.check_json_counts(body, 32, len(head))
    with pytest.raises(ProtocolError, match="arrays"):
        oip.check_json_counts(body, 32)
