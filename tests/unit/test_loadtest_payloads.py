"""Request bodies of every kind, built as the servers (ours, KServe v2 / Triton) read them."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

from loadtest.corpus import CorpusImage, build_corpus, generate_jpeg, parse_spec, shipped_photos
from loadtest.payloads import HEADER_LENGTH, BadResponse, build_payload, check_response
from loadtest.peers import multipart_files

IMAGES = [CorpusImage("a", b"\xff\xd8one\r\n--x", 1, 1), CorpusImage("b", b"\xff\xd8two", 1, 1)]


def test_multipart_body_holds_each_image_intact():
    p = build_payload("multipart", IMAGES)
    assert p.path.startswith("/classify") and p.images == 2
    assert p.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert multipart_files(p.body) == [im.data for im in IMAGES]


def test_raw_is_one_image():
    p = build_payload("raw", IMAGES[:1])
    assert p.body == IMAGES[0].data and p.headers["Content-Type"] == "image/jpeg"
    with pytest.raises(ValueError, match="one image"):
        build_payload("raw", IMAGES)


def test_oip_json_bytes_input_is_base64():
    p = build_payload("oip-json", IMAGES, model="alexnet")
    assert p.path == "/v2/models/alexnet/infer"
    doc = json.loads(p.body)
    (inp,) = doc["inputs"]
    assert inp["name"] == "image" and inp["datatype"] == "BYTES" and inp["shape"] == [2]
    assert inp["parameters"] == {"content_type": "base64"}
    assert [base64.b64decode(s) for s in inp["data"]] == [im.data for im in IMAGES]
    assert doc["outputs"] == [{"name": "logits"}]


def test_oip_binary_follows_the_binary_data_extension():
    p = build_payload("oip-binary", IMAGES)
    n = int(p.headers[HEADER_LENGTH])
    header, tensor = json.loads(p.body[:n]), p.body[n:]
    (inp,) = header["inputs"]
    assert inp["name"] == "image" and inp["parameters"]["binary_data_size"] == len(tensor)
    elements, offset = [], 0
    while offset < len(tensor):  # each BYTES element: 4-byte little-endian length, then the bytes
        (size,) = struct.unpack_from("<I", tensor, offset)
        elements.append(tensor[offset + 4 : offset + 4 + size])
        offset += 4 + size
    assert elements == [im.data for im in IMAGES]
    assert header["outputs"][0]["parameters"]["binary_data"] is True


def test_oip_fp32_sends_little_endian_floats():
    arrays = [np.full((3, 224, 224), i, np.float32) for i in range(2)]
    p = build_payload("oip-fp32", IMAGES, preprocessed=arrays)
    n = int(p.headers[HEADER_LENGTH])
    inp = json.loads(p.body[:n])["inputs"][0]
    assert inp["name"] == "input" and inp["datatype"] == "FP32" and inp["shape"] == [2, 3, 224, 224]
    np.testing.assert_array_equal(np.frombuffer(p.body[n:], "<f4").reshape(2, 3, 224, 224), np.stack(arrays))


def test_check_response_judges_answers():
    good = json.dumps({"results": [{"predictions": [{"label": "x"}]}] * 2}).encode()
    check_response("multipart", good, {}, 2)
    with pytest.raises(BadResponse):
        check_response("multipart", good, {}, 3)
    with pytest.raises(BadResponse):
        check_response("raw", b"not json", {}, 1)
    oip = json.dumps({"outputs": [{"name": "logits", "shape": [2, 1000], "datatype": "FP32"}]}).encode()
    check_response("oip-binary", oip + b"\x00" * 8, {HEADER_LENGTH: str(len(oip))}, 2)
    with pytest.raises(BadResponse):
        check_response("oip-json", oip, {}, 1)


def test_corpus_photos_and_generated_sizes():
    photos = shipped_photos()
    assert len(photos) >= 2 and all(p.data[:2] == b"\xff\xd8" for p in photos)
    corpus = build_corpus("photos,64x48", per_size=2)
    generated = [c for c in corpus if c.name.startswith("gen-")]
    assert [(g.width, g.height) for g in generated] == [(64, 48), (64, 48)]
    assert generated[0].data != generated[1].data
    assert generate_jpeg(64, 48, seed=3) == generate_jpeg(64, 48, seed=3)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_spec("photos,big")


def test_oip_fp32_tensors_take_the_servers_own_sizes():
    """A model trained at 72/64 (docs/training.md) refuses 224x224 tensors: the client preprocesses as the
    server's /v1/models says, and as ImageNet's AlexNet when it says nothing."""
    from loadtest.__main__ import build_payloads

    facts = {"resize_size": 72, "crop_size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    for server, size in (({"models": [{"input": facts}]}, 64), (None, 224), ({"detail": "?"}, 224)):
        p = build_payloads("oip-fp32", "photos", server=server)[0]
        n = int(p.headers[HEADER_LENGTH])
        assert json.loads(p.body[:n])["inputs"][0]["shape"] == [1, 3, size, size]
        assert len(p.body) - n == 3 * size * size * 4
