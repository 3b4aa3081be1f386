"""Open Inference Protocol (KServe v2) codec: request parsing, response encoding, tensor checks.

Nothing here knows about HTTP frameworks, queues or the model: bytes in, typed tensors out, and back.
Sources: the protocol (github.com/kserve/open-inference-protocol, ``inference_rest.md``) and Triton's
extensions (``docs/protocol/extension_binary_data.md``, ``extension_classification.md``).

- JSON tensor ``data`` may be flat or nested, row-major; its element count must match ``shape``.
- Binary tensor data extension: an input with ``"parameters": {"binary_data_size": n}`` takes the next
  ``n`` bytes after the JSON header, whose length is the ``Inference-Header-Content-Length`` header.
  BYTES elements in binary are each a 4-byte little-endian length followed by the bytes.
- BYTES in JSON are strings (UTF-8). Because encoded images are not UTF-8, an input whose parameters
  say ``"content_type": "base64"`` (MLServer's convention) has each string base64-decoded instead.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import BadRequest, ServiceError, TooManyImages
from service.postprocess import top_k

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ("classification", "binary_tensor_data")

# Protocol datatype -> little-endian NumPy dtype (BYTES is handled apart: variable-length elements).
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES = (*DTYPES, "BYTES")
# JSON values NumPy may turn into each dtype kind: a JSON string never becomes a number.
_JSON_KINDS = {"b": "b", "u": "bui", "i": "bui", "f": "buif"}


class ProtocolError(BadRequest):
    """A request the protocol does not allow (malformed, wrong datatype/shape/name, bad data)."""

    kind = "protocol_error"


class ModelNotFound(ServiceError):
    status = 404
    kind = "model_not_found"


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray  # of DTYPES[datatype] in ``shape``, or for BYTES an object array of ``bytes``


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: the request's ``binary_data_output`` decides
    classification: int = 0  # > 0: return the top classes as "value:index:label" strings


@dataclass
class InferRequest:
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None  # None: every output, with default settings
    id: str | None = None
    binary_output: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def timeout_s(self) -> float | None:
        """Triton's ``timeout`` request parameter (microseconds; 0 or absent: none), in seconds."""
        return self.parameters.get("timeout", 0) / 1e6 or None


# -- requests -------------------------------------------------------------------------------------
def header_length(value: str | None, body_length: int) -> int | None:
    """The JSON header's length from the ``Inference-Header-Content-Length`` header, checked."""
    if value is None:
        return None
    if not (value.strip().isascii() and value.strip().isdigit()):
        raise ProtocolError(f"{HEADER_LENGTH} must be a non-negative integer, got {value!r}")
    length = int(value)
    if length > body_length:
        raise ProtocolError(f"{HEADER_LENGTH} is {length} but the body has only {body_length} bytes")
    return length


# Peak memory of parsing a request, per byte of its JSON text and of its binary part: measured by a
# resource review on the 2-core host (20 MB of empty lists in JSON took 721 MB; 2-byte binary BYTES
# elements, 192 MB), with a margin. The decode memory budget charges it (routes/v2.py).
PARSE_BYTES_PER_JSON_BYTE = 40
PARSE_BYTES_PER_BINARY_BYTE = 12


def parse_peak_bytes(body_length: int, json_length: int | None) -> int:
    """About the most memory ``parse_request`` takes for a body of ``body_length`` bytes."""
    json_bytes = body_length if json_length is None else json_length
    return json_bytes * PARSE_BYTES_PER_JSON_BYTE + (body_length - json_bytes) * PARSE_BYTES_PER_BINARY_BYTE


# What a valid request of N images can hold at most, counted in the JSON text before it is parsed:
# an image nested in full, [3][224][224], is 676 arrays (1024 leaves room for other input sizes); a
# request's own keys and names are a few dozen strings, a BYTES input one per image. Beyond these,
# json.loads would spend the front end's GIL and memory on a body that must be refused anyway (20 MB
# of empty lists: 6 s holding the GIL, 721 MB).
JSON_ARRAYS_PER_IMAGE = 1024
JSON_STRINGS_PER_IMAGE = 4
JSON_SPARE = 1024


def parse_request(body: bytes, json_length: int | None = None, max_images: int | None = None) -> InferRequest:
    """An inference request from its HTTP body; ``json_length`` is the binary extension's header length.
    With ``max_images``, a BYTES input of more elements is refused before they are read (and
    ``check_json_counts`` refuses, before this is called, JSON no request of that many images holds)."""
    head, binary = (body, b"") if json_length is None else (body[:json_length], body[json_length:])
    try:
        obj = json.loads(head)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        hint = "" if json_length is not None else f" (binary tensor data needs the {HEADER_LENGTH} header)"
        raise ProtocolError(f"the request is not valid JSON: {exc}{hint}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("the request must be a JSON object with an 'inputs' array")
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    params = _parameters(obj, "the request")
    binary_output = params.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise ProtocolError("parameter 'binary_data_output' must be a boolean")
    timeout_us = params.get("timeout")
    if timeout_us is not None and (not isinstance(timeout_us, int) or isinstance(timeout_us, bool) or timeout_us < 0):
        raise ProtocolError("parameter 'timeout' must be a non-negative integer of microseconds")
    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("'inputs' must be a non-empty array of tensors")
    inputs: list[Tensor] = []
    offset = 0
    for raw in raw_inputs:
        tensor, offset = _parse_input(raw, binary, offset, max_images)
        if any(t.name == tensor.name for t in inputs):
            raise ProtocolError(f"input '{tensor.name}' is given twice")
        inputs.append(tensor)
    if offset != len(binary):
        raise ProtocolError(
            f"{len(binary) - offset} bytes of binary data follow the JSON header but no input "
            "claims them (check each input's binary_data_size)"
        )
    outputs = None
    if "outputs" in obj:
        if not isinstance(obj["outputs"], list):
            raise ProtocolError("'outputs' must be an array")
        outputs = [_parse_output(raw) for raw in obj["outputs"]]
        names = [o.name for o in outputs]
        if len(set(names)) != len(names):
            raise ProtocolError("an output is requested twice")
    return InferRequest(inputs, outputs, request_id, binary_output, params)


def check_json_counts(body: bytes, max_images: int, json_length: int | None = None) -> None:
    """Refuse a body whose JSON text (its first ``json_length`` bytes with binary data after) holds more
    arrays or strings than any request of ``max_images`` images could, without parsing or copying it
    (memory speed: ~10 ms for 20 MB)."""
    end = len(body) if json_length is None else json_length
    arrays, strings = body.count(b"[", 0, end), body.count(b'"', 0, end) // 2
    for found, per_image, what in (
        (arrays, JSON_ARRAYS_PER_IMAGE, "arrays"),
        (strings, JSON_STRINGS_PER_IMAGE, "strings"),
    ):
        most = max_images * per_image + JSON_SPARE
        if found > most:
            raise ProtocolError(
                f"the request's JSON holds {found} {what}; a request of up to {max_images} images needs at most "
                f"{most} (send a tensor flat, or as binary data)"
            )


def _parameters(obj: dict, where: str) -> dict:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise ProtocolError(f"'parameters' of {where} must be an object")
    return params


def _no_shared_memory(params: dict, where: str) -> None:
    if "shared_memory_region" in params:
        raise ProtocolError(
            f"{where}: the shared memory extension is not supported; send the tensor in JSON or as binary data"
        )


def _parse_input(raw: Any, binary: bytes, offset: int, max_images: int | None) -> tuple[Tensor, int]:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise ProtocolError("each input must be an object with a string 'name'")
    name = raw["name"]
    datatype, shape = raw.get("datatype"), raw.get("shape")
    if datatype not in DATATYPES:
        raise ProtocolError(f"input '{name}': datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"input '{name}': 'shape' must be an array of non-negative integers, got {shape!r}")
    count = math.prod(shape)
    if datatype == "BYTES" and max_images is not None and count > max_images:  # one encoded image each
        raise TooManyImages.in_batch(count, max_images)
    params = _parameters(raw, f"input '{name}'")
    _no_shared_memory(params, f"input '{name}'")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"input '{name}': binary_data_size must be a non-negative integer")
        if "data" in raw:
            raise ProtocolError(f"input '{name}' has both 'data' and binary_data_size; send one")
        if offset + size > len(binary):
            raise ProtocolError(
                f"input '{name}': binary data is truncated: binary_data_size is {size} but only "
                f"{len(binary) - offset} bytes follow"
            )
        chunk = binary[offset : offset + size]
        return Tensor(name, datatype, shape, _from_binary(name, datatype, shape, count, chunk)), offset + size
    if "data" not in raw:
        raise ProtocolError(f"input '{name}' has neither 'data' nor a binary_data_size parameter")
    return Tensor(name, datatype, shape, _from_json(name, datatype, shape, count, raw["data"], params)), offset


def _from_binary(name: str, datatype: str, shape: list[int], count: int, chunk: bytes) -> np.ndarray:
    if datatype == "BYTES":
        elements: list[bytes] = []
        pos = 0
        while pos < len(chunk):
            if pos + 4 > len(chunk):
                raise ProtocolError(
                    f"input '{name}': BYTES data is truncated inside element {len(elements)}'s 4-byte length"
                )
            (length,) = struct.unpack_from("<I", chunk, pos)
            if pos + 4 + length > len(chunk):
                raise ProtocolError(
                    f"input '{name}': BYTES element {len(elements)} claims {length} bytes but "
                    f"only {len(chunk) - pos - 4} remain"
                )
            elements.append(chunk[pos + 4 : pos + 4 + length])
            pos += 4 + length
        if len(elements) != count:
            raise ProtocolError(f"input '{name}': {len(elements)} BYTES elements but shape {shape} holds {count}")
        return _object_array(elements, shape)
    dtype = DTYPES[datatype]
    if len(chunk) != count * dtype.itemsize:
        raise ProtocolError(
            f"input '{name}': {len(chunk)} bytes of binary data but shape {shape} of {datatype} "
            f"needs {count * dtype.itemsize}"
        )
    return np.frombuffer(chunk, dtype=dtype).reshape(shape)


def _from_json(name: str, datatype: str, shape: list[int], count: int, data: Any, params: dict) -> np.ndarray:
    if datatype == "BYTES":
        elements = _flatten(name, data, shape, count) if isinstance(data, list) else [data]
        if not all(isinstance(e, str) for e in elements):
            raise ProtocolError(f"input '{name}': BYTES data in JSON must be strings")
        if len(elements) != count:
            raise ProtocolError(f"input '{name}': {len(elements)} elements but shape {shape} holds {count}")
        if params.get("content_type") == "base64":
            try:
                decoded = [base64.b64decode(e, validate=True) for e in elements]
            except binascii.Error as exc:
                raise ProtocolError(f"input '{name}': an element is not valid base64 ({exc})") from None
        else:
            decoded = [e.encode() for e in elements]
        return _object_array(decoded, shape)
    dtype = DTYPES[datatype]
    try:
        array = np.asarray(data)
    except ValueError:
        raise ProtocolError(f"input '{name}': 'data' is a ragged nested array") from None
    if array.size and array.dtype.kind not in _JSON_KINDS[dtype.kind]:
        raise ProtocolError(
            f"input '{name}': 'data' must hold {datatype} values (JSON "
            f"{'booleans' if dtype.kind == 'b' else 'numbers'})"
        )
    if array.size != count:
        raise ProtocolError(f"input '{name}': {array.size} elements but shape {shape} holds {count}")
    if dtype.kind in "iu" and array.size and (array.min() < np.iinfo(dtype).min or array.max() > np.iinfo(dtype).max):
        raise ProtocolError(f"input '{name}': a value is out of range for {datatype}")
    return array.astype(dtype).reshape(shape)


def _flatten(name: str, data: list, shape: list[int], count: int) -> list:
    """The elements of nested lists, in order; iterative, and stopped as soon as the nesting is deeper
    than ``shape`` or holds more than ``count`` elements (a hostile body cannot make it walk further)."""
    depth = max(len(shape), 1)
    out: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) >= depth:
                    raise ProtocolError(f"input '{name}': 'data' is nested deeper than its shape {shape}")
                stack.append(iter(item))
                break
            out.append(item)
            if len(out) > count:
                raise ProtocolError(f"input '{name}': more elements than shape {shape} holds ({count})")
        else:
            stack.pop()
    return out


def _object_array(elements: list[bytes], shape: list[int]) -> np.ndarray:
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    return array.reshape(shape)


def _parse_output(raw: Any) -> RequestedOutput:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise ProtocolError("each requested output must be an object with a string 'name'")
    name = raw["name"]
    params = _parameters(raw, f"output '{name}'")
    _no_shared_memory(params, f"output '{name}'")
    binary = params.get("binary_data")
    if binary is not None and not isinstance(binary, bool):
        raise ProtocolError(f"output '{name}': parameter 'binary_data' must be a boolean")
    k = params.get("classification", 0)
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ProtocolError(f"output '{name}': parameter 'classification' must be a non-negative integer")
    return RequestedOutput(name, binary, k)


# -- responses ------------------------------------------------------------------------------------
def classification(logits: np.ndarray, labels: Sequence[str], k: int) -> np.ndarray:
    """(N, C) scores -> (N, k) BYTES "value:index:label", the ``k`` highest first (Triton's extension).

    The order is ``postprocess.top_k``'s (ties to the lower index), so it matches /classify exactly;
    the value is the output element itself (here a logit), written as the shortest string that reads
    back as the same float32.
    """
    rows = []
    for row in logits:
        # str() of a NumPy float32 is its shortest round-trip form; an f-string would widen it to float64.
        rows.append([f"{row[p['index']]!s}:{p['index']}:{p['label']}".encode() for p in top_k(row, labels, k)])
    out = np.empty((len(rows), min(k, logits.shape[-1])), dtype=object)
    for i, row in enumerate(rows):
        out[i, :] = row
    return out


@dataclass
class OutputTensor:
    name: str
    data: np.ndarray  # numeric of a DTYPES dtype, or object array of bytes (BYTES)
    binary: bool = False

    @property
    def datatype(self) -> str:
        if self.data.dtype == object:
            return "BYTES"
        return next(name for name, dtype in DTYPES.items() if dtype == self.data.dtype.newbyteorder("<"))


def encode_response(
    model_name: str, model_version: str | None, request_id: str | None, outputs: list[OutputTensor]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (``Content-Type``; the header length when binary data follows)."""
    response: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        response["model_version"] = model_version
    if request_id is not None:
        response["id"] = request_id
    entries, chunks = [], []
    for out in outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": list(out.data.shape)}
        if out.binary:
            chunk = _to_binary(out.data)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        elif out.data.dtype == object:
            entry["data"] = [bytes(e).decode("utf-8", errors="replace") for e in out.data.ravel()]
        else:
            entry["data"] = out.data.ravel().tolist()  # float32 -> Python float is exact; so is its repr
        entries.append(entry)
    response["outputs"] = entries
    head = json.dumps(response, separators=(",", ":")).encode()
    if not chunks:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(chunks), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


def _to_binary(data: np.ndarray) -> bytes:
    if data.dtype == object:
        return b"".join(struct.pack("<I", len(e)) + bytes(e) for e in data.ravel())
    return np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes()
