"""The front end's request path: images -> arena slots -> the engine -> top-k.

Routes (``/classify`` and the Open Inference Protocol) call this; nothing here knows about HTTP.

Where an image is decoded (the engine tells which, in its ModelInfo):
- ``cpu``: here, on this process's decode threads: defensive decode, resize, center crop, straight
  into a uint8 (crop, crop, 3) slot of the arena (a quarter of the float32 bytes; the engine
  normalises on the backend's device).
- ``gpu``: JPEGs only have their header checked here (format, size limits, EXIF orientation) and
  their bytes copied into the arena; the engine decodes them with nvJPEG. Everything else (PNG,
  WebP, GIF, BMP, TIFF, CMYK or very large JPEGs) takes the CPU path above, image by image.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import numpy as np

from service import wire
from service.arena import SLOT_BYTES, Arena, ArenaFull, Span
from service.decode_budget import DecodeBudget
from service.decode_pool import DecodePool
from service.engine_client import EngineClient
from service.errors import DeadlineExceeded, NotReady, QueueFull, ServiceError
from service.preprocess import (
    PreprocessConfig,
    decode_opened,
    decode_peak_bytes,
    inspect_jpeg,
    open_for_decode,
    transform_uint8,
)

JPEG_MAGIC = b"\xff\xd8\xff"
# JPEGs above this many pixels take the CPU path even with a GPU decoder: reduced-DCT decoding
# (PIL's draft mode, 1/2 to 1/8 scale) of a 12+ megapixel photo costs less than moving and decoding
# it in full on the GPU, and it keeps one huge image from stalling a whole GPU batch.
GPU_DECODE_MAX_PIXELS = 12_000_000
# And above this many bytes (8 slots): the bytes would take that many arena slots while they wait.
GPU_DECODE_MAX_BYTES = 8 * SLOT_BYTES


def _gpu_candidate(data: bytes) -> bool:
    """Worth a look for the GPU path: a JPEG by its magic number, and not too many bytes."""
    return data.startswith(JPEG_MAGIC) and len(data) <= GPU_DECODE_MAX_BYTES


@dataclass(slots=True)
class Staged:
    """One image written into the arena, ready to submit."""

    ref: wire.ImageRef
    span: Span
    preprocess_ms: float


class Pipeline:
    def __init__(
        self,
        client: EngineClient,
        arena: Arena,
        budget: DecodeBudget,
        decode_threads: int,
        max_pixels: int,
        jpeg_draft: bool,
    ):
        self.client = client
        self.arena = arena
        self.budget = budget
        self.max_pixels = max_pixels
        self.jpeg_draft = jpeg_draft
        self._decoder = DecodePool(decode_threads)
        self._config: PreprocessConfig | None = None
        self._config_for: wire.ModelInfo | None = None

    def close(self) -> None:
        self._decoder.close()

    @property
    def model(self) -> wire.ModelInfo:
        model = self.client.model
        if model is None:
            raise NotReady(self.client.not_ready_reason() or "the engine has not described its model yet")
        return model

    def config(self) -> PreprocessConfig:
        model = self.model
        if self._config is None or self._config_for is not model:
            self._config = PreprocessConfig.for_model(model, self.max_pixels, self.jpeg_draft)
            self._config_for = model
        return self._config

    # -- staging ---------------------------------------------------------------------------------
    def _allocate(self, nbytes: int) -> Span:
        try:
            return self.arena.allocate(nbytes)
        except ArenaFull as exc:
            raise QueueFull(f"too many images in flight in this server process ({exc}); retry after a moment") from None

    def _stage_crop(
        self, data: bytes, span: Span, config: PreprocessConfig, abandoned: threading.Event
    ) -> tuple[float, float | None]:
        """Decode seconds, and seconds waited for the decode budget (None: a small image, no wait)."""
        start = time.perf_counter()
        image = open_for_decode(data, config)
        waited: list[float] = []
        with self.budget.hold(decode_peak_bytes(image), waited.append, abandoned):
            crop = transform_uint8(decode_opened(image), config)
        self.arena.array(span, crop.shape, np.uint8)[...] = crop
        seconds = time.perf_counter() - start
        return (seconds - waited[0], waited[0]) if waited else (seconds, None)

    def _stage_one(
        self, data: bytes, span: Span, config: PreprocessConfig, gpu: bool, abandoned: threading.Event
    ) -> tuple[wire.ImageRef, float, float | None]:
        """On a decode thread: the image's ref once its bytes or its crop are in ``span``, the seconds
        that took, and the seconds it waited for the decode budget (None if it did not need to)."""
        if gpu and _gpu_candidate(data):
            start = time.perf_counter()
            orientation = inspect_jpeg(data, config, GPU_DECODE_MAX_PIXELS)
            if orientation is not None:  # the GPU takes it: only the bytes cross
                self.arena.write(Span(span.first, span.slots, span.offset, len(data)), data)
                return wire.ImageRef("jpeg", span.offset, len(data), orientation), time.perf_counter() - start, None
        seconds, waited = self._stage_crop(data, span, config, abandoned)
        return wire.ImageRef("crop", span.offset, config.crop_bytes), seconds, waited

    async def prepare(self, images: list[bytes]) -> list[Staged]:
        """Decode (or check) every image on the decode threads, off the event loop, into the arena.

        The first bad image's ServiceError is raised, naming which image it was when there are
        several; then no slot stays taken.
        """
        config = self.config()
        gpu = self.model.decode == "gpu"
        spans: list[Span] = []
        try:
            for data in images:
                take_gpu = gpu and _gpu_candidate(data)
                spans.append(self._allocate(max(config.crop_bytes, len(data)) if take_gpu else config.crop_bytes))
        except ServiceError:
            for span in spans:
                self.arena.free(span)
            raise
        abandoned = threading.Event()  # set if the request ends first: started jobs stop waiting for the budget
        jobs = self._decoder.submit_request(
            [(self._stage_one, (data, span, config, gpu, abandoned)) for data, span in zip(images, spans, strict=True)]
        )
        try:
            results = await asyncio.gather(*(asyncio.wrap_future(job) for job in jobs), return_exceptions=True)
        except asyncio.CancelledError:  # hang-up or deadline: images not yet started are not decoded,
            abandoned.set()
            for job in jobs:  # and a thread may still be writing into a span: free them after
                job.cancel()
            self._free_when_done(jobs, spans)
            raise
        for index, result in enumerate(results):
            if isinstance(result, BaseException):
                for span in spans:
                    self.arena.free(span)
                if isinstance(result, ServiceError) and len(images) > 1:
                    result.message = f"image {index}: {result.message}"
                raise result
        staged = []
        for (ref, seconds, waited), span in zip(results, spans, strict=True):  # type: ignore[misc]
            self.client.observe(("preprocess", seconds))
            if waited is not None:
                self.client.observe(("decode_memory_wait", waited))
            staged.append(Staged(ref, span, seconds * 1000))
        return staged

    def _free_when_done(self, jobs: list, spans: list[Span]) -> None:
        """Free ``spans`` on the event loop once every decode job has finished writing into them."""
        loop = asyncio.get_running_loop()
        freed = False

        def check() -> None:  # on the loop's thread only
            nonlocal freed
            if not freed and all(job.done() for job in jobs):
                freed = True
                for span in spans:
                    self.arena.free(span)

        for job in jobs:
            job.add_done_callback(lambda _job: loop.call_soon_threadsafe(check))

    def stage_tensors(self, tensors: np.ndarray) -> list[Staged]:
        """(N, 3, S, S) float32 tensors of an OIP FP32 request, copied into the arena as they are."""
        spans: list[Span] = []
        try:
            for row in tensors:
                span = self._allocate(row.nbytes)
                spans.append(span)
                self.arena.array(span, row.shape, np.float32)[...] = row
        except ServiceError:
            for span in spans:
                self.arena.free(span)
            raise
        return [Staged(wire.ImageRef("fp32", s.offset, s.nbytes), s, 0.0) for s in spans]

    def release(self, staged: list[Staged]) -> None:
        """Free slots of images that will not be submitted after all."""
        for item in staged:
            self.arena.free(item.span)

    # -- inference ----------------------------------------------------------------------------------
    def submit(
        self, staged: list[Staged], deadline: float, top_k: int, want_logits: bool = False
    ) -> tuple[int, asyncio.Future]:
        """Send the images to the engine, now (no await: nothing can come between the staging and
        this hand-over). From here on their slots are the engine client's: freed when the engine has
        answered. Returns what ``wait`` and ``cancel`` take."""
        return self.client.submit([s.ref for s in staged], [s.span for s in staged], deadline, top_k, want_logits)

    def cancel(self, request_id: int) -> None:
        self.client.cancel(request_id)

    async def wait(self, request_id: int, future: asyncio.Future, deadline: float) -> list[wire.ImageResult]:
        """The engine's answer, or DeadlineExceeded at ``deadline`` (time.monotonic())."""
        try:
            result = await asyncio.wait_for(future, timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            self.cancel(request_id)
            raise DeadlineExceeded("the request's deadline passed before inference finished; retry later") from None
        except asyncio.CancelledError:
            self.cancel(request_id)
            raise
        return self.client.unpack(result)

    def predictions(self, result: wire.ImageResult) -> list[dict]:
        """``[{"label", "index", "probability"}]``, most probable first."""
        labels = self.model.labels
        assert result.indices is not None and result.probabilities is not None
        return [
            {"label": labels[int(i)], "index": int(i), "probability": float(p)}
            for i, p in zip(result.indices, result.probabilities, strict=True)
        ]
