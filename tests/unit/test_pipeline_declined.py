"""JPEGs the engine declines (its GPU decoder refused them): the front end decodes them on its CPU path
and sends the crops, within the request's deadline, and every slot comes back whatever happens.

The engine is a fake client that holds each Submit until the test answers it (the real engine and the
whole route are in tests/integration/test_gpu_route.py); the arena, decode threads, decode budget and
preprocessing are the service's own."""

from __future__ import annotations

import asyncio
import io
import os
import time

import numpy as np
import pytest
from PIL import Image

from service import wire
from service.arena import SLOT_BYTES, Arena, ArenaView
from service.decode_budget import DecodeBudget
from service.errors import CorruptImage, DeadlineExceeded, NotAnImage, error_from_kind
from service.pipeline import LOOP_HEADER_BYTES, LOOP_HEADER_STEPS, Pipeline
from service.preprocess import PreprocessConfig, preprocess_uint8

MODEL = wire.ModelInfo(
    arch="alexnet",
    weights="untrained",
    untrained=True,
    weights_sha256="",
    labels=[str(i) for i in range(10)],
    input_size=224,
    resize_size=256,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    backend={},
    backend_reason="",
    backends_skipped={},
    decode="gpu",
    decode_reason="",
)


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


class FakeEngine:
    """The EngineClient's side the pipeline uses. Spans are freed when a Result is given, as the real
    client does; ``submits`` keeps each Submit's refs (with what the arena held for them, read as the
    engine reads it)."""

    def __init__(self, arena: Arena) -> None:
        self.arena = arena
        self.view = ArenaView(os.dup(arena.fd))
        self.model = MODEL
        self.submits: list[tuple[int, list[wire.ImageRef], list[bytes]]] = []
        self.pending: dict[int, tuple[asyncio.Future, list]] = {}
        self.cancelled: list[int] = []

    def submit(self, refs, spans, deadline, top_k, want_logits):
        rid = len(self.submits) + 1
        held = [bytes(self.view.bytes(ref.offset, ref.nbytes)) for ref in refs]
        self.submits.append((rid, refs, held))
        future = asyncio.get_running_loop().create_future()
        self.pending[rid] = (future, spans)
        return rid, future

    def answer(self, rid: int, decodes: list[str]) -> None:
        future, spans = self.pending.pop(rid)
        for span in spans:
            self.arena.free(span)
        results = [
            wire.ImageResult(
                None if d == wire.DECLINED else [rid], None if d == wire.DECLINED else [1.0], None, 1.0, 2.0, 1, d
            )
            for d in decodes
        ]
        if not future.done():  # a cancelled wait cancels its future
            future.set_result(wire.Result(rid, images=results))

    def cancel(self, rid: int) -> None:
        self.cancelled.append(rid)

    @staticmethod
    def unpack(result: wire.Result) -> list[wire.ImageResult]:
        if result.error_kind is not None:
            raise error_from_kind(result.error_kind, result.error_message or "")
        return result.images or []

    def observe(self, event: tuple) -> None:
        pass

    def not_ready_reason(self) -> None:
        return None


@pytest.fixture
def setup():
    arena = Arena(16, SLOT_BYTES, name="test-pipeline-declined")
    engine = FakeEngine(arena)
    pipeline = Pipeline(engine, arena, DecodeBudget(1 << 30), 2, 50_000_000, True)  # type: ignore[arg-type]
    yield pipeline, engine, arena
    pipeline.close()
    engine.view.close()
    arena.close()


async def submitted_and_waiting(pipeline: Pipeline, images: list[bytes], deadline_s: float = 30.0):
    """``images`` prepared, submitted, and waited for: (the Submitted, the wait's task), the wait under way."""
    staged = await pipeline.prepare(images)
    submitted = pipeline.submit(staged, time.monotonic() + deadline_s, top_k=1)
    waiting = asyncio.ensure_future(pipeline.wait(submitted))
    for _ in range(5):  # into the wait for the engine's answer
        await asyncio.sleep(0)
    return submitted, waiting


async def ends_with_the_second_submit_cancelled(
    waiting, engine: FakeEngine, arena: Arena, error=asyncio.CancelledError
):
    """The wait ends with ``error``, the second submit is cancelled at the engine, and every slot is
    free once the engine has answered that cancel (not before: the engine may still be reading it)."""
    with pytest.raises(error):
        await waiting
    assert engine.cancelled == [2]
    engine.answer(2, ["cpu"])
    assert arena.used_slots == 0


async def until(condition, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.005)


def test_declined_jpegs_are_decoded_here_sent_as_crops_and_answered_in_their_places(setup):
    pipeline, engine, arena = setup
    images = [jpeg(1), jpeg(2), jpeg(3)]

    async def main():
        submitted, waiting = await submitted_and_waiting(pipeline, images)
        assert [s.ref.kind for s in submitted.staged] == ["jpeg"] * 3
        engine.answer(1, ["gpu", wire.DECLINED, wire.DECLINED])
        await until(lambda: len(engine.submits) == 2)
        rid, refs, held = engine.submits[1]
        assert [r.kind for r in refs] == ["crop", "crop"]
        config = PreprocessConfig.for_model(MODEL, 50_000_000, True)
        assert held == [preprocess_uint8(images[1], config).tobytes(), preprocess_uint8(images[2], config).tobytes()]
        engine.answer(rid, ["cpu", "cpu"])
        results = await waiting
        assert [(r.decode, r.indices) for r in results] == [("gpu", [1]), ("cpu", [2]), ("cpu", [2])]
        assert [(r.queue_ms, r.inference_ms) for r in results] == [(1.0, 2.0), (2.0, 4.0), (2.0, 4.0)]  # both rounds
        assert submitted.staged[1].preprocess_ms > 0 and arena.used_slots == 0

    asyncio.run(main())


def test_a_corrupt_jpeg_the_engine_declined_fails_here_named_by_its_place_and_frees_its_slots(setup):
    pipeline, engine, arena = setup
    good = jpeg(4)
    corrupt = good[: len(good) // 2] + b"\xff\xc0" + good[len(good) // 2 + 2 :]  # a marker mid-scan: PIL refuses it

    async def main():
        _, waiting = await submitted_and_waiting(pipeline, [good, corrupt])
        engine.answer(1, ["gpu", wire.DECLINED])
        with pytest.raises(CorruptImage) as failed:
            await waiting
        assert failed.value.message.startswith("image 1: ")  # its place in the request, not among the declined
        assert len(engine.submits) == 1 and arena.used_slots == 0

    asyncio.run(main())


def test_the_deadline_covers_the_second_submit_which_is_cancelled_then(setup):
    pipeline, engine, arena = setup

    async def main():
        _, waiting = await submitted_and_waiting(pipeline, [jpeg(5)], deadline_s=3.0)
        engine.answer(1, [wire.DECLINED])
        await until(lambda: len(engine.submits) == 2)  # and never answered
        await ends_with_the_second_submit_cancelled(waiting, engine, arena, DeadlineExceeded)

    asyncio.run(main())


def test_a_client_that_leaves_during_the_second_submit_cancels_it(setup):
    pipeline, engine, arena = setup

    async def main():
        _, waiting = await submitted_and_waiting(pipeline, [jpeg(6)])
        engine.answer(1, [wire.DECLINED])
        await until(lambda: len(engine.submits) == 2)
        waiting.cancel()
        await ends_with_the_second_submit_cancelled(waiting, engine, arena)

    asyncio.run(main())


def test_a_client_that_leaves_as_the_first_answer_arrives_gets_no_second_decode_or_submit(setup):
    """The hang-up in the loop turn the Result with a declined JPEG arrives (Python 3.11's wait_for
    returned that result and dropped the cancel): nothing is decoded or submitted for nobody."""
    pipeline, engine, arena = setup

    async def main():
        submitted, waiting = await submitted_and_waiting(pipeline, [jpeg(7)])
        engine.answer(1, [wire.DECLINED])
        pipeline.cancel(submitted)  # while_connected's on_hangup, then its task.cancel()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert len(engine.submits) == 1 and arena.used_slots == 0

    asyncio.run(main())


def test_a_client_that_leaves_as_the_cpu_decode_finishes_has_the_second_submit_cancelled(setup):
    pipeline, engine, arena = setup

    async def main():
        _, waiting = await submitted_and_waiting(pipeline, [jpeg(8)])
        prepare = pipeline.prepare

        async def prepare_then_leave(*args, **kwargs):  # the hang-up in the turn the decode is done
            staged = await prepare(*args, **kwargs)
            asyncio.get_running_loop().call_soon(waiting.cancel)
            return staged

        pipeline.prepare = prepare_then_leave  # type: ignore[method-assign]
        engine.answer(1, [wire.DECLINED])
        await ends_with_the_second_submit_cancelled(waiting, engine, arena)

    asyncio.run(main())


# -- where a JPEG bound for the GPU is checked ---------------------------------------------------------


def cmyk_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("CMYK", (64, 48), (10, 20, 30, 40)).save(out, "JPEG")
    return out.getvalue()


def with_segments(data: bytes, count: int, size: int = 0) -> bytes:
    """``data`` (a JPEG) with ``count`` comment segments of ``size`` bytes each after its SOI marker."""
    return data[:2] + (b"\xff\xfe" + (size + 2).to_bytes(2, "big") + b"c" * size) * count + data[2:]


def test_a_requests_only_jpeg_for_the_gpu_is_checked_on_the_loop_not_a_decode_thread(setup, monkeypatch):
    """One JPEG: its header checked and its bytes staged without a hand-off to the decode threads. Two
    JPEGs, one the GPU does not take (CMYK, decoded on a thread, its header not checked twice), or one
    whose header is long (PIL parses it in Python: a crafted one held the loop ~0.5 s) or does not
    parse (a bad header, failing as it would have, its slot freed) still go to the decode threads."""
    import service.pipeline as pipeline_module

    pipeline, _engine, arena = setup
    threaded: list[int] = []
    submit_request = pipeline._decoder.submit_request
    monkeypatch.setattr(
        pipeline._decoder, "submit_request", lambda calls: threaded.append(len(calls)) or submit_request(calls)
    )
    inspected: list[int] = []
    inspect = pipeline_module.inspect_jpeg
    monkeypatch.setattr(pipeline_module, "inspect_jpeg", lambda *args: inspected.append(1) or inspect(*args))

    async def main() -> None:
        (one,) = await pipeline.prepare([jpeg(1)])
        assert one.ref.kind == "jpeg" and one.jpeg == jpeg(1) and threaded == [] and len(inspected) == 1
        pipeline.arena.free(one.span)
        within = with_segments(jpeg(1), LOOP_HEADER_STEPS - 8, 16)  # + PIL's own 8 segments: at the bound
        (one,) = await pipeline.prepare([within])
        assert one.ref.kind == "jpeg" and threaded == []
        pipeline.arena.free(one.span)
        for long in (with_segments(jpeg(1), LOOP_HEADER_STEPS - 7), with_segments(jpeg(1), 1, LOOP_HEADER_BYTES)):
            (one,) = await pipeline.prepare([long])
            assert one.ref.kind == "jpeg" and one.jpeg == long and threaded == [1]
            pipeline.arena.free(one.span)
            threaded.clear()
        with pytest.raises(NotAnImage):
            await pipeline.prepare([b"\xff\xd8\xff\xe0" + b"\x00" * 64])
        assert threaded == [1] and arena.used_slots == 0
        threaded.clear()
        both = await pipeline.prepare([jpeg(2), jpeg(3)])
        assert [s.ref.kind for s in both] == ["jpeg", "jpeg"] and threaded == [2]
        for s in both:
            pipeline.arena.free(s.span)
        inspected.clear()
        (crop,) = await pipeline.prepare([cmyk_jpeg()])
        assert crop.ref.kind == "crop" and threaded == [2, 1] and len(inspected) == 1
        pipeline.arena.free(crop.span)
        assert arena.used_slots == 0

    asyncio.run(main())
