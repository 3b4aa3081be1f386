"""Request kinds: how images become HTTP requests, and how an answer is judged correct.

    multipart    POST /classify, multipart/form-data, one ``file`` field per image
    raw          POST /classify, the image itself as the body (one image per request)
    oip-json     POST /v2/models/{model}/infer, Open Inference Protocol v2 JSON, BYTES input ``image`` [N]
                 (base64, ``"parameters": {"content_type": "base64"}``)
    oip-binary   the same with the binary-data extension: BYTES elements (4-byte little-endian length +
                 bytes) after a JSON header whose size is in ``Inference-Header-Content-Length``
    oip-fp32     binary-data extension, FP32 input [N, 3, S, S] preprocessed by the client as the server's
                 /v1/models ``input`` says (S = its crop size, 224 for ImageNet's AlexNet)
    healthz      GET /healthz, no image: measures the client's own ceiling against a trivial endpoint

Bodies are built once before a run, so the client spends its CPU on sending, not on encoding.
The OIP requests follow the KServe v2 / Triton spec as the service implements it (docs/oip.md): BYTES
input ``image``, FP32 input ``input``, output ``logits``.
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass

import numpy as np

from loadtest.corpus import CorpusImage

KINDS = ("multipart", "raw", "oip-json", "oip-binary", "oip-fp32", "healthz")
INPUT_NAME = "input"  # FP32 [N, 3, S, S], preprocessed
IMAGE_INPUT_NAME = "image"  # BYTES [N], encoded image files (docs/oip.md)
OUTPUT_NAME = "logits"
HEADER_LENGTH = "Inference-Header-Content-Length"
BOUNDARY = "loadtest-7f3a9c1e5b"


@dataclass(frozen=True)
class Payload:
    path: str  # with query string
    headers: dict[str, str]
    body: bytes
    images: int
    method: str = "POST"


class BadResponse(Exception):
    """A 200 answer whose content is not what the request asked for."""


def multipart_body(images: list[CorpusImage], boundary: str = BOUNDARY) -> bytes:
    parts = []
    for i, image in enumerate(images):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{image.name}-{i}.jpg"\r\n'
            f"Content-Type: {image.content_type}\r\n\r\n".encode()
            + image.data
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def bytes_tensor(elements: list[bytes]) -> bytes:
    """OIP binary BYTES tensor: each element as a 4-byte little-endian length followed by its bytes."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _oip_request(inputs: list[dict], binary_output: bool) -> dict:
    output = {"name": OUTPUT_NAME}
    if binary_output:
        output["parameters"] = {"binary_data": True}
    return {"id": "loadtest", "inputs": inputs, "outputs": [output]}


def build_payload(
    kind: str,
    images: list[CorpusImage],
    model: str = "alexnet",
    top_k: int = 5,
    preprocessed: list[np.ndarray] | None = None,
) -> Payload:
    """One request carrying ``images`` (``preprocessed``: their (3, S, S) float32 arrays, for oip-fp32)."""
    n = len(images)
    if kind == "healthz":
        return Payload("/healthz", {}, b"", 0, "GET")
    if kind == "multipart":
        return Payload(
            f"/classify?top_k={top_k}",
            {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
            multipart_body(images),
            n,
        )
    if kind == "raw":
        if n != 1:
            raise ValueError("raw requests carry exactly one image; use --kind multipart for several")
        return Payload(f"/classify?top_k={top_k}", {"Content-Type": images[0].content_type}, images[0].data, 1)
    path = f"/v2/models/{model}/infer"
    if kind == "oip-json":
        # JSON strings are UTF-8 and images are not: base64 them and say so (MLServer's convention).
        request = _oip_request(
            [
                {
                    "name": IMAGE_INPUT_NAME,
                    "shape": [n],
                    "datatype": "BYTES",
                    "parameters": {"content_type": "base64"},
                    "data": [base64.b64encode(im.data).decode("ascii") for im in images],
                }
            ],
            False,
        )
        return Payload(path, {"Content-Type": "application/json"}, json.dumps(request).encode(), n)
    if kind == "oip-binary":
        tensor = bytes_tensor([im.data for im in images])
        inputs = [
            {
                "name": IMAGE_INPUT_NAME,
                "shape": [n],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(tensor)},
            }
        ]
    elif kind == "oip-fp32":
        if preprocessed is None or len(preprocessed) != n:
            raise ValueError("oip-fp32 needs each image preprocessed to a (3, S, S) float32 array")
        array = np.ascontiguousarray(np.stack(preprocessed), dtype="<f4")
        tensor = array.tobytes()
        inputs = [
            {
                "name": INPUT_NAME,
                "shape": list(array.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(tensor)},
            }
        ]
    else:
        raise ValueError(f"unknown request kind {kind!r}; choose one of {', '.join(KINDS)}")
    header = json.dumps(_oip_request(inputs, True)).encode()
    return Payload(
        path, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}, header + tensor, n
    )


def check_response(kind: str, body: bytes, headers, images: int) -> None:
    """Raise BadResponse unless a 200 answer holds one result per image sent."""
    if kind == "healthz":
        return
    try:
        if kind in ("multipart", "raw"):
            results = json.loads(body)["results"]
            if len(results) != images or not all(r.get("predictions") for r in results):
                raise BadResponse(f"{len(results)} results for {images} images")
            return
        header_len = headers.get(HEADER_LENGTH)
        doc = json.loads(body[: int(header_len)] if header_len else body)
        outputs = {o["name"]: o for o in doc["outputs"]}
        shape = outputs[OUTPUT_NAME]["shape"]
        if not shape or shape[0] != images:
            raise BadResponse(f"logits shape {shape} for {images} images")
    except BadResponse:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise BadResponse(f"unparseable answer ({type(exc).__name__}: {exc})") from None
