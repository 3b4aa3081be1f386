"""The front end's request path: images -> arena slots -> the engine -> top-k.

Routes (``/classify`` and the Open Inference Protocol) call this; nothing here knows about HTTP.

Where an image is decoded (the engine tells which, in its ModelInfo):
- ``cpu``: here, on this process's decode threads: defensive decode, resize, center crop, straight
  into a uint8 (crop, crop, 3) slot of the arena (a quarter of the float32 bytes; the engine
  normalises on the backend's device).
- ``gpu``: JPEGs only have their header checked here (format, size limits, EXIF orientation) and
  their bytes copied into the arena; the engine decodes them with nvJPEG. Everything else (PNG,
  WebP, GIF, BMP, TIFF, CMYK or very large JPEGs) takes the CPU path above, image by image. A JPEG
  the engine declines (nvJPEG refused it) comes back without an answer; ``wait`` decodes it here, on
  the CPU path, and sends the crop, within the same deadline.
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
from service.header_checks import read_jpeg_header
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


# A request's only JPEG for the GPU has its header checked on the event loop (``_check_alone_on_the_loop``)
# only where the header is short: PIL reads it segment by segment in Python, and the EXIF block entry by
# entry, and a crafted 1.2 MB of empty segments held the loop ~0.5 s (a decode thread lets the loop run
# in between). Within these, a header takes at most ~2-4 ms (an EXIF block of 16 KB of entries, more
# where they point at long values; 2-core AMD EPYC); a photo's ~0.1 ms. Longer ones (camera photos
# whose EXIF thumbnail takes the header past 16 KB among them), and those that do not parse, go to a
# decode thread.
LOOP_HEADER_STEPS = 32
LOOP_HEADER_BYTES = 16 * 1024


def _short_header(data: bytes) -> bool:
    """A JPEG whose segments before its first scan parse, number at most LOOP_HEADER_STEPS (fill bytes
    counted as segments) and end within LOOP_HEADER_BYTES."""
    return 0 < read_jpeg_header(data, LOOP_HEADER_STEPS).scan <= LOOP_HEADER_BYTES


@dataclass(slots=True)
class Staged:
    """One image written into the arena, ready to submit."""

    ref: wire.ImageRef
    span: Span
    preprocess_ms: float  # here, in the front end (a declined JPEG's CPU decode is added to it)
    jpeg: bytes | None = None  # a "jpeg" ref's bytes: decoded here should the engine decline them


@dataclass(slots=True)
class Submitted:
    """Images handed to the engine: what ``wait`` and ``cancel`` take."""

    staged: list[Staged]
    deadline: float
    top_k: int
    want_logits: bool
    request_id: int
    future: asyncio.Future


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

    def _stage_jpeg(
        self, data: bytes, span: Span, config: PreprocessConfig
    ) -> tuple[wire.ImageRef, float, float | None] | None:
        """A GPU candidate's header checked and, where the GPU takes it, its bytes in ``span``: as
        ``_stage_one`` answers; None where it is for the CPU path (CMYK, another frame, too large)."""
        start = time.perf_counter()
        orientation = inspect_jpeg(data, config, GPU_DECODE_MAX_PIXELS)
        if orientation is None:
            return None
        self.arena.write(Span(span.first, span.slots, span.offset, len(data)), data)
        return wire.ImageRef("jpeg", span.offset, len(data), orientation), time.perf_counter() - start, None

    def _stage_one(
        self, data: bytes, span: Span, config: PreprocessConfig, gpu: bool, abandoned: threading.Event
    ) -> tuple[wire.ImageRef, float, float | None]:
        """On a decode thread: the image's ref once its bytes or its crop are in ``span``, the seconds
        that took, and the seconds it waited for the decode budget (None if it did not need to)."""
        if gpu and _gpu_candidate(data) and (staged := self._stage_jpeg(data, span, config)) is not None:
            return staged  # the GPU takes it: only the bytes cross
        seconds, waited = self._stage_crop(data, span, config, abandoned)
        return wire.ImageRef("crop", span.offset, config.crop_bytes), seconds, waited

    def _check_alone_on_the_loop(self, data: bytes, span: Span, config: PreprocessConfig) -> list | None:
        """The one JPEG of a request for the GPU, its header short (``_short_header``): checked here, on
        the event loop, as ``_stage_one`` would on a decode thread (a tenth of a millisecond, most of it
        holding the GIL either way), saving the two hand-offs to and from that thread (~0.1 ms of a c=1
        request on the 2-core Xeon, docs/bench/c1-breakdown-2core.md). ``prepare``'s results, or the
        error in its place; None when the GPU does not take it (it is then decoded on a decode thread:
        milliseconds)."""
        try:
            staged = self._stage_jpeg(data, span, config)
        except Exception as exc:  # as a decode thread's failure: prepare frees the span and raises it
            return [exc]
        return None if staged is None else [staged]

    async def prepare(
        self, images: list[bytes], gpu: bool | None = None, positions: list[int] | None = None
    ) -> list[Staged]:
        """Decode (or check) every image on the decode threads, off the event loop, into the arena; the
        header of a request's only JPEG bound for the GPU, if short, is checked on the loop. ``gpu``:
        JPEGs go to the engine as bytes (default: where the engine decodes them).

        The first bad image's ServiceError is raised, naming which image it was when there are
        several (by ``positions``, the images' places in their request, where given); then no slot
        stays taken.
        """
        config = self.config()
        if gpu is None:
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
        alone = gpu and len(images) == 1 and _gpu_candidate(images[0]) and _short_header(images[0])
        results = self._check_alone_on_the_loop(images[0], spans[0], config) if alone else None
        if results is None:  # (one the GPU does not take is not checked again there)
            results = await self._stage_on_threads(images, spans, config, gpu and not alone)
        for index, result in enumerate(results):
            if isinstance(result, BaseException):
                for span in spans:
                    self.arena.free(span)
                if isinstance(result, ServiceError) and (positions is not None or len(images) > 1):
                    result.message = f"image {index if positions is None else positions[index]}: {result.message}"
                raise result
        staged = []
        for (ref, seconds, waited), span, data in zip(results, spans, images, strict=True):
            self.client.observe(("preprocess", seconds))
            if waited is not None:
                self.client.observe(("decode_memory_wait", waited))
            staged.append(Staged(ref, span, seconds * 1000, data if ref.kind == "jpeg" else None))
        return staged

    async def _stage_on_threads(
        self, images: list[bytes], spans: list[Span], config: PreprocessConfig, gpu: bool
    ) -> list:
        """``_stage_one`` of each image on the decode threads: its results, or the exception in its place."""
        abandoned = threading.Event()  # set if the request ends first: started jobs stop waiting for the budget
        jobs = self._decoder.submit_request(
            [(self._stage_one, (data, span, config, gpu, abandoned)) for data, span in zip(images, spans, strict=True)]
        )
        try:
            return await asyncio.gather(*(asyncio.wrap_future(job) for job in jobs), return_exceptions=True)
        except asyncio.CancelledError:  # hang-up or deadline: images not yet started are not decoded,
            abandoned.set()
            for job in jobs:  # and a thread may still be writing into a span: free them after
                job.cancel()
            self._free_when_done(jobs, spans)
            raise

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

    # -- inference ----------------------------------------------------------------------------------
    def submit(self, staged: list[Staged], deadline: float, top_k: int, want_logits: bool = False) -> Submitted:
        """Send the images to the engine, now (no await: nothing can come between the staging and
        this hand-over). From here on their slots are the engine client's: freed when the engine has
        answered. ``deadline``: time.monotonic()."""
        refs, spans = [s.ref for s in staged], [s.span for s in staged]
        request_id, future = self.client.submit(refs, spans, deadline, top_k, want_logits)
        return Submitted(staged, deadline, top_k, want_logits, request_id, future)

    def cancel(self, submitted: Submitted) -> None:
        self.client.cancel(submitted.request_id)

    async def wait(self, submitted: Submitted) -> list[wire.ImageResult]:
        """The engine's answer, one result per image, or DeadlineExceeded at the deadline. JPEGs the
        engine declined are decoded here and sent again first (``_redo_declined``)."""
        results = await self._answer(submitted)
        declined = [i for i, result in enumerate(results) if result.decode == wire.DECLINED]
        if declined:
            await self._redo_declined(submitted, results, declined)
        return results

    async def _answer(self, submitted: Submitted) -> list[wire.ImageResult]:
        # asyncio.timeout, not wait_for: Python 3.11's wait_for returns a result that came in the same
        # loop turn as a cancel and drops the cancel, and then a client that had gone would still get
        # its declined JPEGs decoded and sent again.
        try:
            async with asyncio.timeout(max(0.0, submitted.deadline - time.monotonic())):
                result = await submitted.future
        except TimeoutError:
            self.cancel(submitted)
            raise DeadlineExceeded("the request's deadline passed before inference finished; retry later") from None
        except asyncio.CancelledError:
            self.cancel(submitted)
            raise
        return self.client.unpack(result)

    async def _redo_declined(self, submitted: Submitted, results: list[wire.ImageResult], declined: list[int]) -> None:
        """JPEGs the engine's GPU decoder refused (or corrupt ones behind a sound header): decoded on
        this process's CPU path, with its decode threads and budget (a corrupt one fails here, as on
        the CPU path), submitted as crops, and their answers put in their places in ``results``."""
        first = submitted.staged
        jpegs: list[bytes] = []
        for i in declined:
            data = first[i].jpeg
            if data is None:  # only JPEGs sent as bytes can be declined
                raise RuntimeError(f"the engine declined image {i}, which it was sent as {first[i].ref.kind}")
            jpegs.append(data)
        positions = declined if len(first) > 1 else None
        try:
            async with asyncio.timeout(max(0.0, submitted.deadline - time.monotonic())):
                staged = await self.prepare(jpegs, gpu=False, positions=positions)
        except TimeoutError:
            raise DeadlineExceeded("the request's deadline passed while its images were decoded; retry later") from None
        for i, stage in zip(declined, staged, strict=True):
            first[i].preprocess_ms += stage.preprocess_ms
        again = self.submit(staged, submitted.deadline, submitted.top_k, submitted.want_logits)
        for i, result in zip(declined, await self._answer(again), strict=True):
            result.queue_ms += results[i].queue_ms  # the first round's wait and batch count too
            result.inference_ms += results[i].inference_ms
            results[i] = result

    def predictions(self, result: wire.ImageResult) -> list[dict]:
        """``[{"label", "index", "probability"}]``, most probable first."""
        labels = self.model.labels
        assert result.indices is not None and result.probabilities is not None
        return [
            {"label": labels[int(i)], "index": int(i), "probability": float(p)}
            for i, p in zip(result.indices, result.probabilities, strict=True)
        ]
