"""The engine's batch runner: images in front-end arenas -> the backend's input -> top-k rows.

``prepare`` (the batcher's prepare thread) reads each image from the arena it was written to and
builds the backend's input; ``run`` (the inference thread) runs the backend, then softmax and top-k,
and returns one ``ImageOutput`` per image.

Two paths, chosen by the backend:
- host: backends that take a float32 NumPy batch (ONNX Runtime on the CPU). uint8 crops are
  normalised on the CPU here, in one pass, into the batch.
- tensor: backends that take tensors (``Backend.takes_tensors``: PyTorch, TensorRT, ONNX Runtime on
  CUDA). uint8 crops go to the device as uint8 (a quarter of float32's bytes), are normalised there
  straight into the backend's dtype, JPEGs are decoded on the GPU (``JpegDecoder``), and softmax +
  top-k run on the device, so only k rows come back. On CUDA, ``prepare`` runs on its own stream, so
  decoding batch k+1 overlaps inference of batch k.

The seconds the batcher times are the threads' host time: on CUDA ``prepare`` only queues most of its
work, and ``run`` starts by waiting for it. Each stage's span on its CUDA stream is timed with CUDA
events and handed to ``on_gpu_seconds`` (the engine's metrics): a batch's preparation on the prepare
stream, from an event before its first work to its input being ready, and its inference on the
backend's stream, from the input being ready to the logits. Stream time, not GPU busy time: an upper
bound on the GPU's work, which includes whatever the host did between the two events while the stream
had nothing queued (the decoder's host work, launching kernels, ONNX Runtime's or TensorRT's own calls
per run), so at batch 1 it can be mostly host time.

The engine decodes nothing on its CPU. A JPEG the GPU decoder does not take (nvJPEG refuses it, or
it is corrupt behind a sound header), or a JPEG sent where there is no GPU decoder, is answered
``decode="declined"`` with no rows, and its front end decodes it on its own CPU (with its decode
budget, threads and the request's deadline) and sends the crop again (``service.pipeline``). A CPU
decode here would run in the one thread that prepares every GPU batch and hold up every client's
batch behind a slow or hostile image.

Ties in top-k go to the lower class index on both paths (a stable sort), as ``postprocess.top_k``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from export.onnx_metadata import ModelMetadata
from service.arena import SLOT_BYTES, Arena, ArenaView
from service.backends.base import Backend, bucket_for
from service.postprocess import softmax
from service.wire import DECLINED, ImageRef

log = logging.getLogger(__name__)


@dataclass(slots=True)
class EngineImage:
    """One image of a request, as the engine queues it."""

    arena: ArenaView
    ref: ImageRef
    top_k: int
    want_logits: bool
    row: np.ndarray | None = None  # host path: its normalised (3, S, S) float32, made on arrival (preload)


@dataclass(slots=True)
class ImageOutput:
    indices: np.ndarray | None
    probabilities: np.ndarray | None
    logits: np.ndarray | None
    decode: str  # "cpu" (a front end), "gpu" (nvJPEG here), "tensor" (sent as float32), or DECLINED


@dataclass
class Prepared:
    images: list[EngineImage]
    batch: object  # np.ndarray (host path) or torch.Tensor (tensor path), padded to a bucket
    decode: list[str]  # per image: ImageOutput.decode
    ready: Any = None  # torch.cuda.Event recorded after the input was written (CUDA only)
    started: Any = None  # torch.cuda.Event recorded before the batch's first work (CUDA only)


def top_k_rows(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, probabilities) of the k most probable classes per row, ties to the lower index; the
    probabilities keep their dtype (float64 from ``postprocess.softmax``, as /classify always gave)."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(probabilities, order, axis=1)


class EngineRunner:
    """Runs batches of arena images on one backend (see the module docstring)."""

    def __init__(
        self,
        backend: Backend,
        metadata: ModelMetadata,
        jpeg_decoder=None,  # service.gpu_decode.JpegDecoder, for backends that take tensors
    ) -> None:
        self.backend = backend
        self.metadata = metadata
        self.name = backend.name
        self.max_batch_size = backend.max_batch_size
        self.max_concurrency = backend.max_concurrency
        self.tensor_path = backend.takes_tensors
        if jpeg_decoder is not None and not self.tensor_path:
            raise ValueError(f"JPEG decoding on the GPU needs a backend that takes tensors, not {backend.name}")
        self.jpeg_decoder = jpeg_decoder
        self.prepare_ahead = jpeg_decoder is not None
        # Each batch's (prepare, inference) spans on their CUDA streams, seconds (CUDA only; module docstring).
        self.on_gpu_seconds: Callable[[float, float], None] | None = None
        self._decoded: Counter[str] = Counter()  # images by decode path (prepare thread writes)
        self._decoded_lock = threading.Lock()
        size = metadata.input_size
        self._crop_shape = (size, size, 3)
        self._tensor_shape = (3, size, size)
        self._prepare_stream = None
        if self.tensor_path and str(backend.device).startswith("cuda"):
            import torch

            self._prepare_stream = torch.cuda.Stream(device=backend.device)

    # -- shared ------------------------------------------------------------------------------------
    def _padded(self, n: int) -> int:
        return bucket_for(n, self.backend.batch_sizes)

    def _crop(self, image: EngineImage) -> np.ndarray:
        return image.arena.array(image.ref.offset, self._crop_shape, np.uint8)

    def _jpeg(self, image: EngineImage) -> tuple[memoryview, int]:
        return image.arena.bytes(image.ref.offset, image.ref.nbytes), image.ref.orientation

    def _fp32(self, image: EngineImage) -> np.ndarray:
        return image.arena.array(image.ref.offset, self._tensor_shape, np.float32)

    def prepare(self, images: list[EngineImage]) -> Prepared:
        prepared = self._prepare_tensor(images) if self.tensor_path else self._prepare_host(images)
        with self._decoded_lock:
            self._decoded.update(prepared.decode)
        return prepared

    @property
    def preloads(self) -> bool:
        """Host path: crops that arrive while the backend is busy are normalised then (``preload``),
        not when their batch forms; on an idle backend that would only add a thread hop."""
        return not self.tensor_path

    def preload(self, images: list[EngineImage]) -> None:
        """Normalise each crop into its own float32 row now, on the engine's preload thread, while the
        running batch runs (as the single-process service did on its decode threads): then forming a
        batch only copies rows, and the engine is done with the arena slot."""
        from model.preprocessing import normalize

        for image in images:
            if image.ref.kind == "crop":
                image.row = normalize(self._crop(image), self.metadata.mean, self.metadata.std)

    def warm_up(self) -> None:
        """The tensor path once, outside the metrics: a blank crop, and the decoder's test JPEG where
        JPEGs are decoded on the GPU. Its kernels load and its pinned memory is allocated before the
        engine says ready, not on the first requests. (The host path has nothing beyond the backend's
        own warm-up.)"""
        if not self.tensor_path:
            return
        arena = Arena(2, SLOT_BYTES, name="alexnet-engine-warm-up")
        view = ArenaView(os.dup(arena.fd))
        try:
            crop = arena.allocate(int(np.prod(self._crop_shape)))
            images = [EngineImage(view, ImageRef("crop", crop.offset, crop.nbytes), top_k=1, want_logits=False)]
            if self.jpeg_decoder is not None:
                from service.gpu_decode import tiny_jpeg

                data = tiny_jpeg()
                span = arena.allocate(len(data))
                arena.write(span, data)
                images.append(EngineImage(view, ImageRef("jpeg", span.offset, len(data)), top_k=1, want_logits=False))
            for image in images:  # one a batch: a backend may take batches of one only (--max-batch-size 1)
                self.run(self._prepare_tensor([image]))
        finally:
            view.close()
            arena.close()

    def decoded(self) -> dict[str, int]:
        """Images prepared so far, by where they were decoded (for the engine's metrics)."""
        with self._decoded_lock:
            return dict(self._decoded)

    def outputs_without_backend(self, prepared: Prepared) -> list[ImageOutput] | None:
        """Every image declined: nothing for the backend, they all go back (the batcher answers them at
        once instead of after the running batch). Otherwise None: the batch has to run."""
        if all(decode == DECLINED for decode in prepared.decode):
            return [ImageOutput(None, None, None, DECLINED) for _ in prepared.images]
        return None

    def run(self, prepared: Prepared) -> list[ImageOutput]:
        if (declined := self.outputs_without_backend(prepared)) is not None:
            return declined
        n = len(prepared.images)
        k = max((image.top_k for image in prepared.images), default=0)
        want_logits = any(image.want_logits for image in prepared.images)
        if self.tensor_path:
            indices, probabilities, logits = self._run_tensor(prepared, n, k, want_logits)
        else:
            indices, probabilities, logits = self._run_host(prepared, n, k, want_logits)
        outputs: list[ImageOutput] = []
        for i, image in enumerate(prepared.images):
            if prepared.decode[i] == DECLINED:  # no pixels: its row of the batch is not its image
                outputs.append(ImageOutput(None, None, None, DECLINED))
                continue
            outputs.append(
                ImageOutput(
                    indices[i, : image.top_k] if image.top_k else None,
                    probabilities[i, : image.top_k] if image.top_k else None,
                    logits[i] if image.want_logits and logits is not None else None,
                    prepared.decode[i],
                )
            )
        return outputs

    def _sort(self, images: list[EngineImage], crops: np.ndarray) -> tuple[Prepared, dict[int, np.ndarray], list[int]]:
        """Crops from the arena into ``crops``; float32 rows (sent as such, or preloaded) and JPEGs for
        the GPU decoder set aside: (what is known so far, {index: float32 (3, S, S)}, [indices to
        decode]). JPEGs are declined where there is no GPU decoder."""
        prepared = Prepared(images, None, [])
        fp32_rows: dict[int, np.ndarray] = {}
        jpegs: list[int] = []
        for i, image in enumerate(images):
            kind = image.ref.kind
            if image.row is not None:  # preloaded
                fp32_rows[i] = image.row
                prepared.decode.append("cpu")
            elif kind == "crop":
                crops[i] = self._crop(image)
                prepared.decode.append("cpu")
            elif kind == "fp32":
                fp32_rows[i] = self._fp32(image)
                prepared.decode.append("tensor")
            elif self.jpeg_decoder is not None:
                jpegs.append(i)
                prepared.decode.append("gpu")
            else:  # a JPEG and no GPU decoder (only a front end out of step with this engine sends one)
                prepared.decode.append(DECLINED)
        return prepared, fp32_rows, jpegs

    # -- host path (float32 NumPy batches) ----------------------------------------------------------
    def _prepare_host(self, images: list[EngineImage]) -> Prepared:
        from model.preprocessing import normalize_batch

        n = len(images)
        crops = np.zeros((self._padded(n), *self._crop_shape), np.uint8)
        prepared, rows, _ = self._sort(images, crops)
        if not rows:  # nothing preloaded: one pass over the whole batch
            prepared.batch = normalize_batch(crops, mean=self.metadata.mean, std=self.metadata.std)
            return prepared
        batch = np.zeros((crops.shape[0], *self._tensor_shape), np.float32)
        for i, row in rows.items():
            batch[i] = row
        rest = [i for i in range(n) if i not in rows]
        if rest:
            batch[rest] = normalize_batch(crops[rest], mean=self.metadata.mean, std=self.metadata.std)
        prepared.batch = batch
        return prepared

    def _run_host(self, prepared: Prepared, n: int, k: int, want_logits: bool):
        batch: np.ndarray = prepared.batch  # type: ignore[assignment]  # the host path's
        logits = self.backend.infer(batch)
        if logits.shape[0] != batch.shape[0]:
            raise RuntimeError(f"backend returned {logits.shape[0]} rows for a batch of {batch.shape[0]}")
        logits = logits[:n]
        indices, probabilities = top_k_rows(softmax(logits), k) if k else (None, None)
        return indices, probabilities, (logits.astype(np.float32) if want_logits else None)

    # -- tensor path (PyTorch on the backend's device) ----------------------------------------------
    def _prepare_tensor(self, images: list[EngineImage]) -> Prepared:
        import torch

        from model.preprocessing import normalize_tensor

        backend = self.backend
        device = torch.device(backend.device)
        cuda = device.type == "cuda"
        n = len(images)
        # Not zero-filled (up to 38 MB a batch): only the padding rows are zeroed. A row is read back
        # only for an image whose crop was written into it, here or on the device below.
        crops_host = torch.empty((self._padded(n), *self._crop_shape), dtype=torch.uint8, pin_memory=cuda)
        crops_host[n:] = 0
        host = crops_host.numpy()
        prepared, fp32_rows, jpegs = self._sort(images, host)
        decode = prepared.decode
        stream = self._prepare_stream
        context = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        with context, torch.inference_mode():
            if stream is not None:
                prepared.started = torch.cuda.Event(enable_timing=True)
                prepared.started.record(stream)
            # JPEGs first, while this stream has nothing of this batch queued: the decoder drains it
            # (see gpu_decode.torchvision_decoder), which then waits for nothing but older batches.
            crops = self.jpeg_decoder.decode([self._jpeg(images[i]) for i in jpegs]) if jpegs else []
            on_device = {}
            for i, crop in zip(jpegs, crops, strict=True):
                if not isinstance(crop, Exception):
                    on_device[i] = crop
                    continue
                log.debug("the GPU decoder declined a JPEG (%s): back to its front end", crop)
                decode[i] = DECLINED  # its row in the batch stays unwritten
            # One asynchronous copy from pinned memory; a copy from pageable memory would wait for the GPU.
            chw = crops_host.to(device, non_blocking=True).permute(0, 3, 1, 2)  # (padded, 3, S, S) uint8 view
            if on_device:
                chw = chw.contiguous()
                for i, crop in on_device.items():
                    chw[i] = crop
            batch = normalize_tensor(chw, self.metadata.mean, self.metadata.std, dtype=backend.input_dtype)
            if backend.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            if fp32_rows:
                rows = torch.from_numpy(np.stack(list(fp32_rows.values())))
                rows = (rows.pin_memory() if cuda else rows).to(device, dtype=batch.dtype, non_blocking=True)
                for row, i in zip(rows, fp32_rows, strict=True):
                    batch[i] = row
            if stream is not None:
                prepared.ready = torch.cuda.Event(enable_timing=True)
                prepared.ready.record(stream)
        prepared.batch = batch
        return prepared

    def _run_tensor(self, prepared: Prepared, n: int, k: int, want_logits: bool):
        import torch

        backend = self.backend
        report = self.on_gpu_seconds if prepared.started is not None else None  # set with ready, on CUDA only
        with torch.inference_mode():
            if report is not None:  # the inference's start: on the backend's stream, once the input is ready
                with backend.stream_context():
                    torch.cuda.current_stream().wait_event(prepared.ready)
                    inference_start = torch.cuda.Event(enable_timing=True)
                    inference_start.record()
            logits = backend.infer_tensor(prepared.batch, prepared.ready)
            with backend.stream_context():
                if report is not None:
                    inferred = torch.cuda.Event(enable_timing=True)
                    inferred.record()
                rows = logits[:n].float()
                wanted: list[torch.Tensor] = []
                if k:
                    probs = torch.softmax(rows, dim=1)
                    values, order = torch.sort(probs, dim=1, descending=True, stable=True)
                    wanted += [order[:, :k], values[:, :k]]
                if want_logits:
                    wanted.append(rows)
                # Read back before returning: nothing may read the graph's buffers after that.
                host = iter(_to_host(wanted, cuda=rows.is_cuda))
        if report is not None:  # every event has completed: the stream they precede was waited for
            try:
                report(
                    prepared.started.elapsed_time(prepared.ready) / 1000,
                    inference_start.elapsed_time(inferred) / 1000,
                )
            except Exception:  # a measurement, never the batch's answers
                log.exception("timing a batch's CUDA streams failed")
        indices, probabilities = (next(host), next(host)) if k else (None, None)
        return indices, probabilities, (next(host) if want_logits else None)


def _to_host(tensors: list, cuda: bool) -> list[np.ndarray]:
    """Tensors -> NumPy arrays. On CUDA: asynchronous copies into pinned memory on the current stream,
    then one wait for everything queued on it, asleep (``.cpu()`` on each would wait once per tensor,
    spinning a core)."""
    import torch

    from service.gpu_decode import wait_for_stream

    if not cuda:
        return [tensor.cpu().numpy() for tensor in tensors]
    hosts = [torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True) for tensor in tensors]
    for host, tensor in zip(hosts, tensors, strict=True):
        host.copy_(tensor, non_blocking=True)
    wait_for_stream()
    return [host.numpy() for host in hosts]
