"""This model's Open Inference Protocol signature: which inputs and outputs a parsed request may name."""

from __future__ import annotations

import json

import pytest

from service import oip, oip_signature
from service.oip import ProtocolError

S = 4  # a small spatial size keeps tensors readable; the signature takes it as a parameter


def fp32_input(data, shape, **extra) -> dict:
    return {"name": "input", "datatype": "FP32", "shape": shape, "data": data, **extra}


def _request(*inputs: dict, outputs=None) -> oip.InferRequest:
    obj = {"inputs": list(inputs)} | ({"outputs": outputs} if outputs is not None else {})
    return oip.parse_request(json.dumps(obj).encode())


def test_model_input_accepts_either_signature():
    tensor = oip_signature.model_input(_request(fp32_input([0.0] * 3 * S * S, [1, 3, S, S])), S)
    assert tensor.name == "input" and tensor.data.shape == (1, 3, S, S)
    image = oip_signature.model_input(
        _request({"name": "image", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}), S
    )
    assert image.name == "image" and image.data.shape == (2,)


@pytest.mark.parametrize(
    "inputs, message",
    [
        ([{"name": "pixels", "datatype": "FP32", "shape": [1], "data": [0.0]}], "unknown input 'pixels'"),
        (
            [
                fp32_input([0.0] * 3 * S * S, [1, 3, S, S]),
                {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["a"]},
            ],
            "exactly one",
        ),
        ([{"name": "input", "datatype": "FP64", "shape": [1, 3, S, S], "data": [0.0] * 3 * S * S}], "must be FP32"),
        ([{"name": "image", "datatype": "FP32", "shape": [1], "data": [0.0]}], "must be BYTES"),
        ([fp32_input([0.0] * 3 * S * S, [3, S, S])], r"shape \[N,3,4,4\]"),
        ([fp32_input([0.0] * 3 * S * (S + 1), [1, 3, S, S + 1])], r"shape \[N,3,4,4\]"),
        ([{"name": "image", "datatype": "BYTES", "shape": [1, 1], "data": ["a"]}], r"shape \[N\]"),
        ([fp32_input([], [0, 3, S, S])], "batch of 0"),
    ],
)
def test_model_input_refuses_what_the_model_cannot_take(inputs, message):
    with pytest.raises(ProtocolError, match=message):
        oip_signature.model_input(_request(*inputs), S)


def test_requested_outputs():
    req = _request(fp32_input([1.0], [1]))
    assert oip_signature.requested_outputs(req, 1000) == [oip.RequestedOutput("logits")]
    with pytest.raises(ProtocolError, match="unknown output 'probs'"):
        oip_signature.requested_outputs(_request(fp32_input([1.0], [1]), outputs=[{"name": "probs"}]), 1000)
    with pytest.raises(ProtocolError, match="at most 10"):
        oip_signature.requested_outputs(
            _request(fp32_input([1.0], [1]), outputs=[{"name": "logits", "parameters": {"classification": 11}}]), 10
        )
