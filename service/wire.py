"""The messages between the HTTP front ends and the engine, and how they travel.

Each front end holds one Unix stream connection to the engine. A frame is a 4-byte little-endian
length and a pickled message (small: offsets, ids, top-k rows; pixels stay in the shared arena).
Both ends are our own code in processes started by the same supervisor, on a socket only the same
user may connect to (the engine checks SO_PEERCRED), so pickle carries no foreign input here.

Front end -> engine: Hello (once, with the arena's descriptor), Submit, Cancel, Observe, MetricsRequest,
StatusRequest, Goodbye.
Engine -> front end: Status (on connect, on every change, and as a heartbeat), Result (exactly one
per Submit: only then may the front end reuse its slots), MetricsText.
"""

from __future__ import annotations

import asyncio
import copyreg
import operator
import pickle
import socket
import struct
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

HEADER = struct.Struct("<I")
MAX_FRAME = 256 * 2**20  # a 1000-class top-k for 4096 images is ~32 MB; anything larger is a bug
HELLO = struct.Struct("<8sIIQ")  # magic, protocol version, front-end index, pid
MAGIC = b"ALEXNETS"
PROTOCOL = 4  # 2: per-request messages as extension codes (per_request); 3: DECLINED images; 4: provenance
STATUS_INTERVAL_S = 0.5  # heartbeat: a front end that hears nothing for several of these reconnects
# ImageResult.decode of a JPEG the engine did not decode (its GPU decoder refused it, or there is none):
# no rows; the front end decodes it on its CPU and submits the crop (service.pipeline).
DECLINED = "declined"


def per_request(code: int):
    """For the messages every request sends (Submit, Result and what they hold): pickled as a one-byte
    code (pickle's extension registry, ``copyreg.add_extension``; 240-255 are for private use) and
    their field values in order, not as their module and class names and a slotted dataclass's state.
    Each is pickled in one process and loaded in the other once per request, the engine's event loop
    doing half of it: a Submit and a Result then take 3.7 us there instead of 10.2 (2-core AMD EPYC)."""

    def register(cls):
        values = operator.attrgetter(*(f.name for f in fields(cls)))

        def __reduce__(self):
            return cls, values(self)

        cls.__reduce__ = __reduce__
        copyreg.add_extension(cls.__module__, cls.__qualname__, code)
        return cls

    return register


@per_request(240)
@dataclass(slots=True)
class ImageRef:
    """One image in the sender's arena."""

    kind: str  # "crop": uint8 (crop, crop, 3); "jpeg": encoded bytes; "fp32": float32 (3, crop, crop)
    offset: int
    nbytes: int
    orientation: int = 1  # EXIF orientation of a "jpeg" (1 = upright), applied after decoding


@per_request(241)
@dataclass(slots=True)
class Submit:
    request_id: int
    deadline: float  # time.monotonic(): the same clock in every process of the host
    images: list[ImageRef]
    top_k: int  # rows of (index, probability) wanted per image; 0 for none
    want_logits: bool = False


@dataclass(slots=True)
class Cancel:
    request_id: int


@dataclass(slots=True)
class Observe:
    """Front-end metric events since the last Observe: the engine holds the one registry."""

    events: list[tuple]


@dataclass(slots=True)
class MetricsRequest:
    token: int


@dataclass(slots=True)
class Goodbye:
    """A front end is stopping on purpose (so its disconnect is no cause for alarm)."""


@dataclass(slots=True)
class StatusRequest:
    """Answered with a Status now (readiness probes want the engine's state, not the last heartbeat)."""


@per_request(242)
@dataclass(slots=True)
class ImageResult:
    indices: list[int] | None  # k class indices, most probable first, ties to the lower index
    probabilities: list[float] | None  # their probabilities (softmax in float64 on host backends, float32 on the GPU)
    logits: np.ndarray | None  # (num_classes,) float32, only when asked for
    queue_ms: float
    inference_ms: float
    batch_size: int
    decode: str  # where the pixels came from: "cpu" (front end), "gpu" (nvJPEG), "tensor" (float32); or DECLINED


@per_request(243)
@dataclass(slots=True)
class Result:
    request_id: int
    images: list[ImageResult] | None = None
    error_kind: str | None = None
    error_message: str | None = None


@dataclass
class ModelInfo:
    """What front ends need to answer without asking: labels, preprocessing facts, the backend."""

    arch: str
    weights: str
    untrained: bool
    weights_sha256: str
    labels: list[str]
    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    backend: dict[str, Any]
    backend_reason: str
    backends_skipped: dict[str, str]
    decode: str  # "cpu" or "gpu": where JPEGs are decoded
    decode_reason: str
    batches_overlap: bool = False  # a batch may form while another runs: only then does max_delay_ms apply
    weights_provenance: dict[str, Any] = field(default_factory=dict)  # ModelMetadata.provenance


@dataclass
class Status:
    ready: bool
    reason: str  # why not, when not ready ("" when ready)
    model: ModelInfo | None = None  # None in heartbeats when it has not changed since the last Status
    startup_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class MetricsText:
    token: int
    text: bytes


def encode(message: object) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


async def read_message(reader: asyncio.StreamReader) -> object:
    """The next message; raises asyncio.IncompleteReadError at EOF."""
    (length,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes is over the limit of {MAX_FRAME}")
    return pickle.loads(await reader.readexactly(length))


def hello_bytes(frontend: int, pid: int) -> bytes:
    return HELLO.pack(MAGIC, PROTOCOL, frontend, pid)


def send_hello(sock: socket.socket, frontend: int, pid: int, arena_fd: int) -> None:
    """First bytes on a new connection, carrying the arena's descriptor (blocking socket)."""
    socket.send_fds(sock, [hello_bytes(frontend, pid)], [arena_fd])


def receive_hello(sock: socket.socket) -> tuple[int, int, int]:
    """(front-end index, pid, arena descriptor) from a new connection (blocking socket, with a timeout)."""
    data, fds, _flags, _addr = socket.recv_fds(sock, HELLO.size, 4)
    while len(data) < HELLO.size:  # the descriptor arrives with the first bytes; the rest may lag
        more = sock.recv(HELLO.size - len(data))
        if not more:
            break
        data += more
    if len(data) != HELLO.size or len(fds) != 1:
        for fd in fds:
            socket.close(fd)
        raise ValueError(f"bad hello: {len(data)} bytes, {len(fds)} descriptors")
    magic, version, frontend, pid = HELLO.unpack(data)
    if magic != MAGIC or version != PROTOCOL:
        socket.close(fds[0])
        raise ValueError(f"bad hello: magic {magic!r}, protocol {version} (want {PROTOCOL})")
    return frontend, pid, fds[0]


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid
