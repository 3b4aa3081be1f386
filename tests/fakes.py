"""Test doubles: backends that tests can pause, fail or count the calls of, and a CPU stand-in for nvJPEG.

``ControlledBackend`` holds the controls; ``EchoBackend`` (the batcher's unit tests) answers each
row with its own identity, ``GatedBackend`` (the service's tests) delegates to a real backend.
``pil_decode`` decodes as ``torchvision.io.decode_jpeg(list, device="cuda")`` does, with PIL (and
``pil_decode_repeating_chroma`` with nvJPEG's default chroma upsampling, as torchvision's nvJPEG does);
``fake_checkpoint`` is a checkpoint file that records a weights hash (and provenance) and holds no weights.
``FakeStream`` and ``install_fake_cuda_streams`` are CUDA streams on a CPU host, recording what each waited for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from service.backends.base import Backend
from tests.conftest import wait_until

HOLD_S = 60  # the longest a closed gate holds a batch; past it the batch fails, naming the test's mistake


def _pass(gate: threading.Event, what: str) -> None:
    if not gate.wait(HOLD_S):
        raise RuntimeError(f"the test never opened the {what} gate ({HOLD_S} s)")


class ControlledBackend(Backend):
    """``gate`` pauses inference, ``fail_next`` injects faults, ``calls`` records the rows of each call."""

    def __init__(
        self, max_batch_size: int = 8, batch_sizes: tuple[int, ...] | None = None, max_concurrency: int = 1
    ) -> None:
        self.max_batch_size, self.batch_sizes, self.max_concurrency = max_batch_size, batch_sizes, max_concurrency
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Semaphore(0)
        self.calls: list[int] = []  # rows received per call (after padding)
        self.fail_next = 0

    def held(self, batch: np.ndarray) -> None:
        """Count the call, say it started, wait at the gate, then raise if a fault is due."""
        self.calls.append(batch.shape[0])
        self.started.release()
        _pass(self.gate, "inference")
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("injected backend fault")

    def wait_started(self, timeout_s: float = 30) -> None:
        """Block until one more call has reached the backend."""
        assert self.started.acquire(timeout=timeout_s), "the backend was never called"


class EchoBackend(ControlledBackend):
    """Answers each row with its own first two pixels, so a test sees which input each answer came from."""

    name, device, precision = "fake", "cpu", "fp32"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.held(batch)
        return batch[:, 0, 0, :2].copy()  # (N, 2): row identity survives the round trip


class GatedBackend(ControlledBackend):
    """Delegates to ``inner``; warm-up passes ``warmup_gate`` and is neither held nor counted."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner.max_batch_size, inner.batch_sizes, inner.max_concurrency)
        self.inner = inner
        self.name, self.device, self.precision = inner.name, inner.device, inner.precision
        self.warmup_gate = threading.Event()
        self.warmup_gate.set()
        self._warming = False

    def warmup(self, input_size: int, stop: threading.Event | None = None) -> None:
        _pass(self.warmup_gate, "warm-up")
        self._warming = True
        try:
            self.inner.warmup(input_size, stop)
        finally:
            self._warming = False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if not self._warming:
            self.held(batch)
        return self.inner.infer(batch)


def install_gated_backend(monkeypatch) -> dict:
    """Make the next app's backend a GatedBackend; the returned dict gets it under "backend"."""
    import service.engine_load
    from service.backends import select_backend

    holder: dict = {}
    warmup_gate = threading.Event()
    warmup_gate.set()
    holder["warmup_gate"] = warmup_gate

    def gated_select(settings):
        selection = select_backend(settings)
        gated = GatedBackend(selection.backend)
        gated.warmup_gate = warmup_gate
        selection.backend = gated
        holder["backend"] = gated
        return selection

    monkeypatch.setattr(service.engine_load, "select_backend", gated_select)
    return holder


def occupy(
    pool: ThreadPoolExecutor, send: Callable[[], object], backend: GatedBackend, batcher, queued: int
) -> tuple[Future, list[Future]]:
    """One request running (held at the closed gate) and ``queued`` more waiting in the queue behind it."""
    running = pool.submit(send)
    backend.wait_started()
    waiting = [pool.submit(send) for _ in range(queued)]
    wait_until(lambda: batcher.depth >= queued, 30, f"{queued} requests in the queue")
    return running, waiting


def pil_decode(tensors: list) -> list:
    """nvJPEG's contract on the CPU: bytes (uint8 tensors) -> (3, H, W) uint8 RGB tensors, RuntimeError
    when any fails."""
    import io

    import torch
    from PIL import Image

    out = []
    for t in tensors:
        try:
            image = Image.open(io.BytesIO(t.numpy().tobytes()))
            image.load()
        except OSError as exc:
            raise RuntimeError(f"decode failed: {exc}") from exc
        out.append(torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1))
    return out


def pil_decode_repeating_chroma(tensors: list) -> list:
    """``pil_decode`` with the chroma of 4:2:0 JPEGs repeated where PIL interpolates it: the luma of PIL's
    decode and PIL's chroma samples as stored (a half-size DCT-scaled decode, which needs no
    upsampling), each repeated over its 2x2 pixels. Colour JPEGs only. On 4:2:2 its chroma is halved
    in height too: on the 4:2:2 chroma probe 68.3 levels from PIL's, where libjpeg-turbo's repetition
    gives 64.3 (service.chroma_probe.CHROMA_PROBES)."""
    import io

    import torch
    from PIL import Image

    out = []
    for t in tensors:
        data = t.numpy().tobytes()
        with Image.open(io.BytesIO(data)) as image:
            luma = np.asarray(image.convert("YCbCr"))[..., 0]
        with Image.open(io.BytesIO(data)) as image:
            image.draft("YCbCr", (image.width // 2, image.height // 2))
            chroma = np.asarray(image)[..., 1:]
        height, width = luma.shape
        chroma = chroma.repeat(2, axis=0).repeat(2, axis=1)[:height, :width]
        rgb = Image.fromarray(np.dstack([luma, chroma]), "YCbCr").convert("RGB")
        out.append(torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1))
    return out


def fake_checkpoint(path, weights_sha256: str, **provenance):
    """Our checkpoint format as far as its recorded weights hash and provenance (the preprocessing
    training recorded), which is all that the check of an ONNX file against ``--checkpoint`` reads
    (export/checkpoint_match.py); no weights."""
    import torch

    from model.weights import CHECKPOINT_FORMAT, CHECKPOINT_VERSION

    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "weights_sha256": weights_sha256}
    torch.save({**payload, "arch": "torchvision", "provenance": provenance}, path)
    return path


class FakeStream:
    """A CUDA stream as far as our backends use one: a handle, and ``waited``, the events (``wait_event``)
    and streams (``wait_stream``) it was told to wait for, in order; each also noted in ``log`` as
    ("wait", this stream, what) when one is given."""

    cuda_stream = 0x5EED  # not 0: ONNX Runtime reads a handle of 0 as none given

    def __init__(self, name: str = "stream", log: list | None = None) -> None:
        self.name, self._log = name, log
        self.waited: list[object] = []

    def wait_event(self, event) -> None:
        self._wait(event)

    def wait_stream(self, stream) -> None:
        self._wait(stream)

    def _wait(self, what) -> None:
        self.waited.append(what)
        if self._log is not None:
            self._log.append(("wait", self, what))

    def __repr__(self) -> str:
        return f"FakeStream({self.name!r})"


class FakeCudaStreams:
    """torch.cuda's current stream on a CPU host: ``caller`` outside every ``torch.cuda.stream(s)`` block,
    ``s`` inside one; ``made`` holds the streams ``torch.cuda.Stream()`` made, ``log`` their waits, each
    ``Tensor.record_stream`` as ("record_stream", stream) and whatever the test adds, in order."""

    def __init__(self) -> None:
        self.caller = FakeStream("caller")
        self.made: list[FakeStream] = []
        self.log: list[tuple] = []
        self._current = [self.caller]

    def current_stream(self, device=None) -> FakeStream:
        return self._current[-1]

    @contextmanager
    def stream(self, stream: FakeStream) -> Iterator[None]:
        self._current.append(stream)
        try:
            yield
        finally:
            self._current.pop()

    def new_stream(self, device=None) -> FakeStream:
        self.made.append(FakeStream(f"made {len(self.made)}", self.log))
        return self.made[-1]


def install_fake_cuda_streams(monkeypatch) -> FakeCudaStreams:
    """Patch torch.cuda's ``Stream``, ``stream`` and ``current_stream`` and ``Tensor.record_stream`` with
    a FakeCudaStreams, and return it."""
    import torch

    streams = FakeCudaStreams()
    monkeypatch.setattr(torch.cuda, "Stream", streams.new_stream)
    monkeypatch.setattr(torch.cuda, "stream", streams.stream)
    monkeypatch.setattr(torch.cuda, "current_stream", streams.current_stream)
    monkeypatch.setattr(
        torch.Tensor, "record_stream", lambda tensor, stream: streams.log.append(("record_stream", stream))
    )
    return streams
