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
    raises (torchvision's does when one image fails) or does not answer every JPEG. One image's failure,
    whatever its type, is that image's: a batch is not lost for it (a failed batch counts towards the
    engine's backend failures, which mark it unhealthy). But a decoder that raises something other
    than a RuntimeError for the batch and the same again for every image is broken, not the images:
    that is raised, as a failed batch."""
    try:
        out = list(decode_batch(data))
    except Exception as exc:
        failed: Exception | None = exc
        log.debug("batch JPEG decode failed (%s: %s); decoding one by one", type(exc).__name__, exc)
    else:
        if len(out) == len(data):
            return out
        failed = None
        _warn_once("the JPEG decoder answered fewer images than a batch held; decoding that batch one by one")
    each: list[torch.Tensor | Exception] = []
    for tensor in data:
        try:
            answer = list(decode_batch([tensor]))
        except Exception as exc:
            each.append(exc)
            continue
        if len(answer) == 1:
            each.append(answer[0])
        else:
            each.append(RuntimeError(f"the JPEG decoder answered {len(answer)} images for one"))
    if failed is not None and not isinstance(failed, RuntimeError) and all(type(i) is type(failed) for i in each):
        raise failed
    return each


_said: set[str] = set()  # the warnings given, each once


def _warn_once(message: str) -> None:
    """A warning the first time only: a decoder that does it once does it for every batch."""
    if message not in _said:
        _said.add(message)
        log.warning("%s (said once)", message)
