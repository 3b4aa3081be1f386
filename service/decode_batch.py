"""The GPU JPEG decoders' calling convention (``DecodeBatch``), shared by the decoders
(service.gpu_decode) and the chroma probe that measures them (service.chroma_probe): a batch of
encoded JPEGs in, one image or one exception per JPEG out, in order (``decode_each``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

log = logging.getLogger(__name__)

# Encoded JPEGs (1-D uint8 host tensors) -> one (3, H, W) uint8 image or one exception each, in order.
DecodeBatch = Callable[[list[torch.Tensor]], Sequence[torch.Tensor | Exception]]


def decode_each(decode_batch: DecodeBatch, data: list[torch.Tensor]) -> list[torch.Tensor | Exception]:
    """One image or one exception per JPEG: one batch call, or one call per image where the batch call
    raises a RuntimeError (torchvision's returns nothing when one image fails)."""
    try:
        return list(decode_batch(data))
    except RuntimeError as exc:
        log.debug("batch JPEG decode failed (%s); decoding one by one", exc)
    out: list[torch.Tensor | Exception] = []
    for tensor in data:
        try:
            out.append(decode_batch([tensor])[0])
        except RuntimeError as exc:
            out.append(exc)
    return out
