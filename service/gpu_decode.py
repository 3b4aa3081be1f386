"""JPEG decoding on the GPU for the engine: nvJPEG through torchvision, then the shared tensor
resize + crop, all on the device. Images it cannot take come back as exceptions, per image, and the
engine decodes those on its CPU instead (service.preprocess), so a client never sees the difference.

``torchvision.io.decode_jpeg(list_of_cpu_uint8_tensors, mode=RGB, device="cuda")`` is present wherever
PyTorch's CUDA build and torchvision are; it does not apply EXIF orientation on CUDA (its
``apply_exif_orientation`` is CPU-only), so the front end reads the orientation from the header and
it is applied here on the decoded tensor.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence

import torch

from model.preprocessing import apply_exif_orientation_tensor, resize_crop_tensor

log = logging.getLogger(__name__)

DecodeBatch = Callable[[list[torch.Tensor]], Sequence[torch.Tensor]]
# Decoded bytes (uint8 values summed over a group's images) resized in one call: bounds the group's
# float32 copy (four times as many bytes: 192 MiB) whatever the batch size.
GROUP_MAX_BYTES = 48 << 20


def same_size_groups(
    images: list[tuple[int, torch.Tensor]], max_bytes: int = GROUP_MAX_BYTES
) -> list[list[tuple[int, torch.Tensor]]]:
    """(index, image) pairs grouped by shape and dtype, first seen first, each group cut to at most
    ``max_bytes`` of uint8 values (and at least one image)."""
    by_shape: dict[tuple, list[list[tuple[int, torch.Tensor]]]] = {}
    for item in images:
        image = item[1]
        chunks = by_shape.setdefault((tuple(image.shape), image.dtype), [[]])
        if chunks[-1] and (len(chunks[-1]) + 1) * image.numel() > max_bytes:
            chunks.append([])
        chunks[-1].append(item)
    return [chunk for chunks in by_shape.values() for chunk in chunks]


def wait_for_stream(stream: torch.cuda.Stream | None = None) -> None:
    """Block until the work queued on ``stream`` (default: the current stream) is done, asleep on a
    blocking event: ``Stream.synchronize`` and ``.cpu()`` spin a core while they wait (CUDA's default
    on a host with more cores than GPU contexts), a core the front ends could use."""
    done = torch.cuda.Event(blocking=True)
    done.record(stream)
    done.synchronize()


def torchvision_decoder(device: str) -> DecodeBatch:
    """nvJPEG via torchvision, or an ImportError/RuntimeError saying why it is not available here.

    torchvision allocates the decoded images on the caller's current stream but has nvJPEG write them
    from a stream of its own that does not wait for the caller's (torchvision's decode_jpegs_cuda.cpp;
    pytorch/vision PR #9606). Memory the caller's stream freed with kernels still queued that use it
    could be handed to nvJPEG and overwritten under them, so the caller's stream is drained first. It
    costs little: torchvision waits for its own stream on every call anyway.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    on_cuda = torch.device(device).type == "cuda"

    def decode(data: list[torch.Tensor]) -> Sequence[torch.Tensor]:
        if on_cuda:
            wait_for_stream(torch.cuda.current_stream(device))
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)

    return decode


def tiny_jpeg() -> bytearray:
    """A 32x24 JPEG: loads the decoder at start-up and warms the engine's GPU path before it is ready."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 24), (120, 80, 40)).save(out, "JPEG")
    return bytearray(out.getvalue())


class JpegDecoder:
    """Encoded JPEGs (host bytes) -> upright (3, crop, crop) uint8 crops on ``device``."""

    def __init__(
        self,
        device: str,
        resize_size: int,
        crop_size: int,
        decode_batch: DecodeBatch | None = None,
        group_bytes: int | None = None,
    ) -> None:
        self.device = device
        self.resize_size = resize_size
        self.crop_size = crop_size
        self._decode_batch = decode_batch or torchvision_decoder(device)
        # Decoded bytes resized in one call (see same_size_groups); 0 = one image at a time. By default
        # groups on CUDA, where every call is a few kernel launches from this thread under the GIL,
        # and one by one on the CPU, where a group's float32 copy falls out of the caches (48 images
        # of 500x375, one thread, 2-core AMD EPYC: 190 ms in one group, 74 ms one by one).
        on_cuda = torch.device(device).type == "cuda"
        self.group_bytes = group_bytes if group_bytes is not None else (GROUP_MAX_BYTES if on_cuda else 0)

    def decode(self, jpegs: Sequence[tuple[memoryview, int]]) -> list[torch.Tensor | Exception]:
        """One crop or one exception per (bytes, EXIF orientation), in order.

        On CUDA, upright images of one size are resized and cropped together (``same_size_groups``):
        a batch of photos of one size costs a few kernel launches, not a few per image.
        """
        data = [torch.frombuffer(buffer, dtype=torch.uint8) for buffer, _ in jpegs]
        try:
            images: list[torch.Tensor | Exception] = list(self._decode_batch(data))
        except RuntimeError as exc:  # the batch call returns nothing when one image fails: find which
            log.debug("batch JPEG decode failed (%s); decoding one by one", exc)
            images = [self._decode_one(tensor) for tensor in data]
        out: list[torch.Tensor | Exception] = list(images)
        upright: list[tuple[int, torch.Tensor]] = []
        for i, (image, (_buffer, orientation)) in enumerate(zip(images, jpegs, strict=True)):
            if isinstance(image, Exception):
                continue
            try:
                upright.append((i, apply_exif_orientation_tensor(image, orientation)))
            except (RuntimeError, ValueError) as exc:
                out[i] = exc
        for group in same_size_groups(upright, self.group_bytes):
            crops: Sequence[torch.Tensor | Exception]
            try:
                stacked = torch.stack([image for _, image in group])
                crops = resize_crop_tensor(stacked, self.resize_size, self.crop_size).unbind()
            except (RuntimeError, ValueError) as exc:
                crops = (exc,) * len(group)
            for (i, _), crop in zip(group, crops, strict=True):
                out[i] = crop
        return out

    def _decode_one(self, tensor: torch.Tensor) -> torch.Tensor | Exception:
        try:
            return self._decode_batch([tensor])[0]
        except RuntimeError as exc:
            return exc
