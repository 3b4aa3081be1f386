"""JPEG decoding on the GPU for the engine: nvJPEG through torchvision, then the shared tensor
resize + crop, all on the device. Images it cannot take come back as exceptions, per image, and the
engine decodes those on its CPU instead (service.preprocess), so a client never sees the difference.

``torchvision.io.decode_jpeg(list_of_cpu_uint8_tensors, mode=RGB, device="cuda")`` is present wherever
PyTorch's CUDA build and torchvision are; it does not apply EXIF orientation on CUDA (its
``apply_exif_orientation`` is CPU-only), so the front end reads the orientation from the header and
it is applied here on the decoded tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from model.preprocessing import apply_exif_orientation_tensor, resize_crop_tensor

log = logging.getLogger(__name__)

DecodeBatch = Callable[[list[torch.Tensor]], Sequence[torch.Tensor]]


def torchvision_decoder(device: str) -> DecodeBatch:
    """nvJPEG via torchvision, or an ImportError/RuntimeError saying why it is not available here."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(data: list[torch.Tensor]) -> Sequence[torch.Tensor]:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)

    return decode


class JpegDecoder:
    """Encoded JPEGs (host bytes) -> upright (3, crop, crop) uint8 crops on ``device``."""

    def __init__(self, device: str, resize_size: int, crop_size: int, decode_batch: DecodeBatch | None = None) -> None:
        self.device = device
        self.resize_size = resize_size
        self.crop_size = crop_size
        self._decode_batch = decode_batch or torchvision_decoder(device)

    def decode(self, jpegs: Sequence[tuple[memoryview, int]]) -> list[torch.Tensor | Exception]:
        """One crop or one exception per (bytes, EXIF orientation), in order."""
        data = [torch.frombuffer(buffer, dtype=torch.uint8) for buffer, _ in jpegs]
        try:
            images: list[torch.Tensor | Exception] = list(self._decode_batch(data))
        except RuntimeError as exc:  # the batch call returns nothing when one image fails: find which
            log.debug("batch JPEG decode failed (%s); decoding one by one", exc)
            images = [self._decode_one(tensor) for tensor in data]
        out: list[torch.Tensor | Exception] = []
        for image, (_buffer, orientation) in zip(images, jpegs, strict=True):
            if isinstance(image, Exception):
                out.append(image)
                continue
            try:
                upright = apply_exif_orientation_tensor(image, orientation)
                out.append(resize_crop_tensor(upright, self.resize_size, self.crop_size))
            except (RuntimeError, ValueError) as exc:
                out.append(exc)
        return out

    def _decode_one(self, tensor: torch.Tensor) -> torch.Tensor | Exception:
        try:
            return self._decode_batch([tensor])[0]
        except RuntimeError as exc:
            return exc
