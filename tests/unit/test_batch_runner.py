"""The engine's batch runner on the CPU: arena images in, top-k rows out, on both of its paths (host
batches for ONNX Runtime on the CPU, tensors for PyTorch and for ONNX Runtime as on CUDA) and with
JPEGs decoded by the tensor path's decoder (a PIL stand-in for nvJPEG: the same bytes, the same
orientation and resize code after it)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from service.arena import SLOT_BYTES, Arena, ArenaView
from service.backends import select_backend
from service.batch_runner import EngineImage, EngineRunner, top_k_rows
from service.gpu_decode import JpegDecoder, start_jpeg_decoder
from service.postprocess import softmax
from service.preprocess import PreprocessConfig, preprocess_uint8
from service.settings import Settings
from service.wire import DECLINED, ImageRef
from tests.conftest import select_onnxruntime_cuda
from tests.fakes import pil_decode

CONFIG = PreprocessConfig()


def jpeg(png: bytes, quality: int = 95) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


class Staging:
    """A front end's arena and the engine's view of it."""

    def __init__(self) -> None:
        self.arena = Arena(64, SLOT_BYTES)
        self.view = ArenaView(os.dup(self.arena.fd))

    def crop(self, data: bytes) -> ImageRef:
        crop = preprocess_uint8(data, CONFIG)
        span = self.arena.allocate(crop.nbytes)
        self.arena.array(span, crop.shape, np.uint8)[...] = crop
        return ImageRef("crop", span.offset, span.nbytes)

    def jpeg(self, data: bytes, orientation: int = 1) -> ImageRef:
        span = self.arena.allocate(len(data))
        self.arena.write(span, data)
        return ImageRef("jpeg", span.offset, len(data), orientation)

    def fp32(self, tensor: np.ndarray) -> ImageRef:
        span = self.arena.allocate(tensor.nbytes)
        self.arena.array(span, tensor.shape, np.float32)[...] = tensor
        return ImageRef("fp32", span.offset, span.nbytes)

    def images(self, refs: list[ImageRef], top_k: int = 5, want_logits: bool = False) -> list[EngineImage]:
        return [EngineImage(self.view, ref, top_k, want_logits) for ref in refs]


@pytest.fixture(scope="module")
def selections(fitted):
    ort = select_backend(Settings(onnx=fitted.onnx, backend="onnxruntime", device="cpu", max_batch_size=32))
    pt = select_backend(
        Settings(onnx=fitted.onnx, checkpoint=fitted.checkpoint, backend="torch", device="cpu", max_batch_size=32)
    )
    # As on CUDA, where ONNX Runtime takes tensors bound by pointer; its CPU provider runs them just the same.
    ort_tensors = select_backend(Settings(onnx=fitted.onnx, backend="onnxruntime", device="cpu", max_batch_size=32))
    ort_tensors.backend.takes_tensors = True
    return {"onnxruntime": ort, "torch": pt, "onnxruntime-tensors": ort_tensors}


def run(runner: EngineRunner, images: list[EngineImage]):
    return runner.run(runner.prepare(images))


@pytest.mark.parametrize("backend", ["onnxruntime", "torch", "onnxruntime-tensors"])
def test_crops_in_the_arena_give_the_reference_top_k_on_both_paths(fitted, selections, backend):
    selection = selections[backend]
    runner = EngineRunner(selection.backend, selection.metadata)
    assert runner.tensor_path == (backend != "onnxruntime")
    items = fitted.eval_images(per_class=2)
    pngs = [data for data, _ in items]
    reference = np.stack([softmax(row) for row in fitted.reference_logits(pngs)])
    staging = Staging()
    outputs = run(runner, staging.images([staging.crop(d) for d in pngs], top_k=3, want_logits=True))
    assert len(outputs) == len(pngs)
    for out, probs in zip(outputs, reference, strict=True):
        assert out.decode == "cpu"
        assert out.indices.tolist() == list(np.argsort(-probs, kind="stable")[:3])
        np.testing.assert_allclose(out.probabilities, probs[out.indices], atol=1e-4)
        np.testing.assert_allclose(softmax(out.logits), probs, atol=1e-4)
    assert runner.decoded() == {"cpu": len(pngs)}


def test_a_float32_tensor_and_a_crop_share_a_batch(fitted, selections):
    selection = selections["torch"]
    runner = EngineRunner(selection.backend, selection.metadata)
    png = fitted.eval_images(per_class=1)[3][0]
    from model.preprocessing import normalize

    tensor = normalize(preprocess_uint8(png, CONFIG))
    staging = Staging()
    crop_out, tensor_out = run(runner, staging.images([staging.crop(png), staging.fp32(tensor)], want_logits=True))
    assert tensor_out.decode == "tensor"
    np.testing.assert_allclose(crop_out.logits, tensor_out.logits, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime-tensors"])
def test_jpegs_decoded_by_the_tensor_path_agree_with_the_cpu_path(fitted, selections, backend):
    selection = selections[backend]
    meta = selection.metadata
    decoder = JpegDecoder("cpu", meta.resize_size, meta.input_size, decode_batch=pil_decode)
    runner = EngineRunner(selection.backend, meta, decoder)
    assert runner.prepare_ahead
    jpegs = [jpeg(d) for d, _ in fitted.eval_images(per_class=2)]
    staging = Staging()
    on_gpu_path = run(runner, staging.images([staging.jpeg(d) for d in jpegs]))
    on_cpu_path = run(runner, staging.images([staging.crop(d) for d in jpegs]))
    assert {o.decode for o in on_gpu_path} == {"gpu"}
    same = [g.indices.tolist() == c.indices.tolist() for g, c in zip(on_gpu_path, on_cpu_path, strict=True)]
    assert sum(same) >= 0.9 * len(same)  # two resize implementations: a near-tie may swap places
    assert all(g.indices[0] == c.indices[0] for g, c in zip(on_gpu_path, on_cpu_path, strict=True))


def test_jpegs_the_decoder_refuses_are_declined_alone_the_rest_of_the_batch_answered(fitted, selections):
    selection = selections["torch"]
    meta = selection.metadata

    def refuses_cmyk_like(tensors):
        if len(tensors) > 1:
            raise RuntimeError("one image of the batch failed")
        if tensors[0].numel() % 2:  # stands for "a JPEG nvJPEG does not take"
            raise RuntimeError("unsupported")
        return pil_decode(tensors)

    runner = EngineRunner(selection.backend, meta, JpegDecoder("cpu", 256, 224, refuses_cmyk_like))
    good = [jpeg(d) for d, _ in fitted.eval_images(per_class=1)[:4]]
    good = [d if len(d) % 2 == 0 else d + b"\x00" for d in good]  # trailing bytes after EOI are ignored
    odd = good[0] + b"\x00"
    corrupt = good[1][: len(good[1]) // 2]
    corrupt = corrupt if len(corrupt) % 2 else corrupt + b"\xff"
    staging = Staging()
    outputs = run(runner, staging.images([staging.jpeg(d) for d in (*good, odd, corrupt)]))
    assert [o.decode for o in outputs] == ["gpu"] * 4 + [DECLINED] * 2
    assert all(o.indices is not None and len(o.indices) == 5 for o in outputs[:4])
    assert all(o.indices is None and o.probabilities is None and o.logits is None for o in outputs[4:])
    assert runner.decoded() == {"gpu": 4, DECLINED: 2}


def test_a_jpeg_is_declined_where_there_is_no_gpu_decoder(fitted, selections, monkeypatch):
    png = fitted.eval_images(per_class=1)[0][0]
    for backend in ("torch", "onnxruntime"):  # the tensor path and the host path
        selection = selections[backend]
        runner = EngineRunner(selection.backend, selection.metadata)
        staging = Staging()
        crop, declined = run(runner, staging.images([staging.crop(png), staging.jpeg(jpeg(png))]))
        assert (crop.decode, declined.decode) == ("cpu", DECLINED)
        assert crop.indices is not None and declined.indices is None
        # A batch of declined images only is not run at all, and says so to the batcher.
        monkeypatch.setattr(runner, "_run_tensor", lambda *a: pytest.fail("ran a batch with nothing to infer"))
        monkeypatch.setattr(runner, "_run_host", lambda *a: pytest.fail("ran a batch with nothing to infer"))
        prepared = runner.prepare(staging.images([staging.jpeg(jpeg(png)), staging.jpeg(jpeg(png))]))
        outputs = runner.outputs_without_backend(prepared)
        assert outputs is not None and [(o.decode, o.indices) for o in outputs] == [(DECLINED, None)] * 2
        assert [(o.decode, o.indices) for o in runner.run(prepared)] == [(DECLINED, None)] * 2
        mixed = runner.prepare(staging.images([staging.crop(png), staging.jpeg(jpeg(png))]))
        assert runner.outputs_without_backend(mixed) is None


def test_exif_orientation_sent_by_the_front_end_is_applied_after_decoding(fitted, selections):
    selection = selections["torch"]
    meta = selection.metadata
    runner = EngineRunner(selection.backend, meta, JpegDecoder("cpu", 256, 224, pil_decode))
    png = fitted.eval_images(per_class=1)[2][0]
    upright = Image.open(io.BytesIO(png)).convert("RGB").crop((0, 0, 256, 200))  # not square: turns matter
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned; to be rotated 90 degrees clockwise on display
    upright.transpose(Image.Transpose.ROTATE_90).save(out, "JPEG", quality=95, exif=exif)
    rotated_bytes = out.getvalue()
    staging = Staging()
    via_gpu, via_cpu = run(
        runner, staging.images([staging.jpeg(rotated_bytes, 6), staging.crop(rotated_bytes)], want_logits=True)
    )
    assert via_gpu.decode == "gpu"
    assert np.corrcoef(via_gpu.logits, via_cpu.logits)[0, 1] > 0.99
    wrong, _ = run(
        runner, staging.images([staging.jpeg(rotated_bytes, 1), staging.crop(rotated_bytes)], want_logits=True)
    )
    assert np.abs(wrong.logits - via_cpu.logits).max() > np.abs(via_gpu.logits - via_cpu.logits).max()


@pytest.mark.parametrize("backend", ["torch", "onnxruntime-tensors", "onnxruntime", "batches of one"])
def test_the_warm_up_runs_the_tensor_path_once_with_a_crop_and_a_jpeg_and_counts_nothing(
    fitted, selections, backend, monkeypatch
):
    if backend == "batches of one":  # --max-batch-size 1: the warm-up must not form a batch of two
        backend = "onnxruntime-tensors"
        monkeypatch.setattr(selections[backend].backend, "batch_sizes", (1,))
        monkeypatch.setattr(selections[backend].backend, "max_batch_size", 1)
    selection = selections[backend]
    meta = selection.metadata
    runner = EngineRunner(
        selection.backend, meta, JpegDecoder("cpu", 256, 224, pil_decode) if backend != "onnxruntime" else None
    )
    seen, ran = [], []
    prepare, run_batch = runner._prepare_tensor, runner.run
    monkeypatch.setattr(runner, "_prepare_tensor", lambda images: seen.append(images) or prepare(images))
    monkeypatch.setattr(runner, "run", lambda prepared: ran.append(run_batch(prepared)) or ran[-1])
    runner.warm_up()
    if backend == "onnxruntime":  # the host path: nothing to warm beyond the backend's own warm-up
        assert seen == [] and ran == []
        return
    assert [[image.ref.kind for image in images] for images in seen] == [["crop"], ["jpeg"]]
    assert [[out.decode for out in outputs] for outputs in ran] == [["cpu"], ["gpu"]]
    assert runner.decoded() == {}  # not images anyone sent


def test_top_k_rows_put_ties_at_the_lower_index():
    probs = np.array([[0.1, 0.3, 0.3, 0.3], [0.25, 0.25, 0.25, 0.25]])
    indices, values = top_k_rows(probs, 3)
    assert indices.tolist() == [[1, 2, 3], [0, 1, 2]]
    assert values.dtype == np.float64 and values[0].tolist() == [0.3, 0.3, 0.3]


def test_the_uint8_hand_off_gives_the_float_path_batch_exactly(fitted, selections):
    """What the engine builds from uint8 crops is what the single-process service built from floats."""
    from service.preprocess import preprocess

    selection = selections["onnxruntime"]
    runner = EngineRunner(selection.backend, selection.metadata)
    images = [d for d, _ in fitted.eval_images(per_class=1)] + [jpeg(d, 80) for d, _ in fitted.eval_images(1)]
    staging = Staging()
    prepared = runner.prepare(staging.images([staging.crop(d) for d in images]))
    expected = np.stack([preprocess(d, CONFIG) for d in images])
    np.testing.assert_array_equal(prepared.batch[: len(images)], expected)


def test_crops_preloaded_on_arrival_give_the_same_batch(fitted, selections):
    """The host path normalises crops that arrive during a running batch at once (preload): the batch
    formed later is the same as normalising them then, and a mix of both is too."""
    selection = selections["onnxruntime"]
    runner = EngineRunner(selection.backend, selection.metadata)
    assert runner.preloads
    images = [d for d, _ in fitted.eval_images(per_class=1)]
    staging = Staging()
    refs = [staging.crop(d) for d in images]
    plain = runner.prepare(staging.images(refs)).batch
    preloaded = staging.images(refs)
    runner.preload(preloaded[::2])  # every other one arrived while a batch ran
    assert all(image.row is not None for image in preloaded[::2]) and preloaded[1].row is None
    np.testing.assert_array_equal(runner.prepare(preloaded).batch, plain)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this host")
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_on_cuda_crops_and_jpegs_decoded_by_nvjpeg_give_the_cpu_top_1(fitted, selections, backend):
    """The tensor path on a GPU: uint8 crops and nvJPEG-decoded JPEGs normalised on the device, fp16
    inference (CUDA graphs, or ONNX Runtime bound by device pointer on its own stream), top-k there."""
    settings = Settings(
        onnx=fitted.onnx, checkpoint=fitted.checkpoint, backend=backend, device="cuda", max_batch_size=32
    )
    selection = select_onnxruntime_cuda(settings) if backend == "onnxruntime" else select_backend(settings)
    assert selection.backend.takes_tensors
    meta = selection.metadata
    decoder, _name = start_jpeg_decoder(selection.backend.device, 256, 224)  # as the engine chooses (--decode gpu)
    runner = EngineRunner(selection.backend, meta, decoder)
    gpu_seconds: list[tuple[float, float]] = []
    runner.on_gpu_seconds = lambda prepare, inference: gpu_seconds.append((prepare, inference))
    jpegs = [jpeg(d) for d, _ in fitted.eval_images(per_class=2)]
    staging = Staging()
    crops = staging.images([staging.crop(d) for d in jpegs], want_logits=True)
    outputs = run(runner, crops + staging.images([staging.jpeg(d) for d in jpegs], want_logits=True))
    (prepare_s, inference_s) = gpu_seconds[0]  # CUDA events on the two streams: the GPU's time, each stage's
    assert len(gpu_seconds) == 1 and 0 < prepare_s < 5 and 0 < inference_s < 5
    cpu = selections["onnxruntime"]  # fp32 on the CPU, the host path: the reference
    reference = run(EngineRunner(cpu.backend, cpu.metadata), crops)
    n = len(jpegs)
    assert [o.decode for o in outputs] == ["cpu"] * n + ["gpu"] * n
    for out, want in zip(outputs[:n], reference, strict=True):  # the same uint8 crops: fp16 rounding only
        np.testing.assert_allclose(softmax(out.logits), softmax(want.logits), atol=0.02)
    decoded = outputs[n:]  # nvJPEG's IDCT and the tensor resize: near-ties may swap, nothing more
    assert sum(o.indices[0] == w.indices[0] for o, w in zip(decoded, reference, strict=True)) >= 0.9 * n
    assert all(np.corrcoef(o.logits, w.logits)[0, 1] > 0.99 for o, w in zip(decoded, reference, strict=True))


class _Clock:
    """Stand-ins for CUDA events and the current stream: each event recorded reads the next tick (ms)
    of a GPU clock, and what a stream was told to wait for is kept, in order."""

    def __init__(self) -> None:
        self.ms = 0.0
        self.log: list[object] = []
        clock = self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                assert enable_timing, "an event elapsed_time is asked of must be created with timing"
                self.at: float | None = None

            def record(self, stream=None) -> None:
                clock.ms += 0.25
                self.at = clock.ms
                clock.log.append(self)

            def elapsed_time(self, end) -> float:
                assert self.at is not None and end.at is not None, "both events must have been recorded"
                return end.at - self.at

        class Stream:
            def wait_event(self, event) -> None:
                clock.log.append(("wait", event))

        self.Event, self.stream = Event, Stream()


def test_the_gpu_time_of_a_batch_s_two_stages_is_timed_by_cuda_events_on_their_streams(fitted, selections, monkeypatch):
    """On CUDA the batcher's clock sees host time only; the runner hands the engine's metrics what the
    GPU spent: from the batch's first queued work to its input ready (prepare), and from the backend's
    stream having waited for that to the logits (inference). CUDA events and streams are stood in for:
    the torch backend on the CPU runs the batch."""
    selection = selections["torch"]
    runner = EngineRunner(selection.backend, selection.metadata)
    staging = Staging()
    png = fitted.eval_images(per_class=1)[0][0]
    clock = _Clock()
    monkeypatch.setattr(torch.cuda, "Event", clock.Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: clock.stream)
    prepared = runner.prepare(staging.images([staging.crop(png)]))
    assert prepared.ready is None  # no CUDA stream on the CPU: nothing to time
    seen: list[tuple[float, float]] = []
    runner.on_gpu_seconds = lambda prepare, inference: seen.append((prepare, inference))
    runner.run(prepared)
    assert seen == []  # and nothing timed
    prepared.started, prepared.ready = clock.Event(enable_timing=True), clock.Event(enable_timing=True)
    prepared.started.record()  # 0.25 ms
    clock.ms += 3.0
    prepared.ready.record()  # 3.5 ms: the prepare stream's span
    (out,) = runner.run(prepared)
    assert out.indices is not None
    assert seen == [(pytest.approx(0.00325), pytest.approx(0.00025))]  # the inference's start, then its end
    wait, start = clock.log[2:4]
    assert wait == ("wait", prepared.ready) and isinstance(start, clock.Event)  # the start waits for the input
    runner.on_gpu_seconds = None
    runner.run(prepared)  # not asked for: not timed (the warm-up)
    assert len(seen) == 1 and len(clock.log) == 5
