"""The chroma probe: whether a GPU JPEG decoder (a ``DecodeBatch``) interpolates the colour of 4:2:0 and
4:2:2 JPEGs as the CPU path (PIL, libjpeg-turbo) does, or repeats it as nvJPEG's default flags do. It
decodes a batch of probe JPEGs, one of each kind a backend of nvImageCodec may take, and measures each
against PIL's pixels (``chroma_diff``); the worst probe is held against ``CHROMA_THRESHOLD``. The engine
runs it on each candidate decoder at start-up (service.gpu_decode, ``start_jpeg_decoder``);
scripts/measure_chroma_upsampling.py calibrates it (docs/gpu.md, "JPEG chroma on the GPU").
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

import numpy as np
import torch

from service.decode_batch import DecodeBatch, decode_each

# The chroma probes: mean |diff| (levels of 255) between a decoder's pixels of each of CHROMA_PROBES and
# PIL's; the largest decides. nvImageCodec routes each image to one backend (its hardware decoder takes
# baseline JPEGs, perhaps only some; the hybrid backend progressive ones; nvJPEG's CUDA decoder changes
# Huffman decoder above hybrid_huffman_threshold, 1000x1000 pixels in DALI, which sets it), so one small
# probe measured only the backend that took it: each kind here may go to another. Calibrated on a 2-core
# AMD EPYC with nvImageCodec's CPU decoder (libjpeg-turbo), fancy_upsampling=1 / =0 (chroma repeated):
# 4:2:0 128x96 0.00 / 97.8, 4:2:2 128x96 0.00 / 64.3, progressive 4:2:0 128x96 0.00 / 97.8,
# 4:2:0 1280x960 0.00 / 98.9. Emulated from the source image of the first in floating point, with no
# JPEG loss at all: interpolated as libjpeg-turbo does 2.5, with other kernels or phases (corner-aligned
# bilinear, bicubic) 24 and 30. So a decoder that interpolates as libjpeg-turbo does, with its own IDCT
# and rounding, should stay well under the threshold, and one that repeats chroma lands far over it on
# every probe (4:2:2 least, its chroma halved in one direction only; docs/gpu.md, "JPEG chroma on the GPU").
CHROMA_THRESHOLD = 8.0


class ChromaProbe(NamedTuple):
    """How one chroma probe is encoded."""

    width: int  # whole 16x16 MCUs
    height: int
    subsampling: int  # PIL's: 2 = 4:2:0, 1 = 4:2:2
    progressive: bool


CHROMA_PROBES = {
    "4:2:0 128x96": ChromaProbe(128, 96, 2, False),
    "4:2:2 128x96": ChromaProbe(128, 96, 1, False),
    "progressive 4:2:0 128x96": ChromaProbe(128, 96, 2, True),
    # As large as a photo and over DALI's hybrid_huffman_threshold: a hardware decoder's kind of image.
    "4:2:0 1280x960": ChromaProbe(1280, 960, 2, False),
}


@functools.cache
def chroma_probe_jpegs() -> Mapping[str, bytes]:
    """Each of ``CHROMA_PROBES`` as a JPEG (quality 90) of a magenta and green checker of 2x2-pixel
    squares: the colour changes at every chroma sample, where repeating it differs most from
    interpolating it. Built once: 0.7 MB, nearly all of it the large one, in about 40-50 ms on a 2-core
    AMD EPYC (where one ``chroma_diff`` then takes 8-10 ms: scripts/measure_chroma_upsampling.py)."""
    from PIL import Image

    out: dict[str, bytes] = {}
    for name, probe in CHROMA_PROBES.items():
        rows, cols = np.mgrid[0 : probe.height, 0 : probe.width]
        magenta = ((rows // 2 + cols // 2) % 2 == 0)[..., None]
        pixels = np.where(magenta, np.array([255, 0, 255], np.uint8), np.array([0, 255, 0], np.uint8))  # (H, W, 3)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(
            buffer, "JPEG", quality=90, subsampling=probe.subsampling, progressive=probe.progressive
        )
        out[name] = buffer.getvalue()
    return MappingProxyType(out)  # cached: read-only


@functools.cache
def chroma_probe_references() -> Mapping[str, np.ndarray]:
    """PIL's pixels of each chroma probe, (H, W, 3) int16: decoded once, not once per candidate."""
    from PIL import Image

    out = {}
    for name, data in chroma_probe_jpegs().items():
        with Image.open(io.BytesIO(data)) as image:
            out[name] = np.asarray(image.convert("RGB")).astype(np.int16)
            out[name].flags.writeable = False  # cached: read-only
    return MappingProxyType(out)


@dataclass(frozen=True)
class ChromaDiff:
    """What ``chroma_diff`` measured: mean |diff| in levels of 255 from PIL's pixels per probe decoded,
    and the probes the decoder refused (the engine declines such JPEGs: a front end's CPU path, PIL,
    decodes them)."""

    by_probe: dict[str, float]
    refused: tuple[str, ...] = ()

    @property
    def worst(self) -> str:
        """The probe furthest from PIL's pixels (the first of equals)."""
        return max(self.by_probe, key=lambda name: self.by_probe[name])

    @property
    def levels(self) -> float:
        """The largest mean |diff|: what is held against ``CHROMA_THRESHOLD``."""
        return self.by_probe[self.worst]

    @property
    def interpolated(self) -> bool:
        return self.levels < CHROMA_THRESHOLD


def chroma_diff(decode_batch: DecodeBatch) -> ChromaDiff:
    """``decode_batch``'s pixels of the chroma probes (before any resize), decoded in one call, against
    PIL's (the CPU path's decoder). A probe that comes back as an exception is refused, not measured;
    raises the first exception where every probe is, and a RuntimeError for a wrong-shaped image."""
    jpegs, references = chroma_probe_jpegs(), chroma_probe_references()
    images = decode_each(
        decode_batch, [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in jpegs.values()]
    )
    by_probe: dict[str, float] = {}
    refused: dict[str, Exception] = {}
    for name, image in zip(jpegs, images, strict=True):
        if isinstance(image, Exception):
            refused[name] = image
            continue
        reference = references[name]
        pixels = image.permute(1, 2, 0).cpu().numpy()  # (3, H, W) -> (H, W, 3); waits for the decode
        if pixels.shape != reference.shape or pixels.dtype != np.uint8:
            raise RuntimeError(
                f"the chroma probe {name} came back as {pixels.dtype} {pixels.shape}, not uint8 {reference.shape}"
            )
        by_probe[name] = float(np.abs(pixels.astype(np.int16) - reference).mean())
    if not by_probe:
        raise next(iter(refused.values()))
    return ChromaDiff(by_probe, tuple(refused))


def describe_chroma(diff: ChromaDiff) -> str:
    """What the engine reports of a decoder whose chroma probes measured ``diff``: the worst probe, and
    in full those over the threshold and those refused."""
    refused = f"; refused, so decoded by the CPU path: {', '.join(diff.refused)}" if diff.refused else ""
    if diff.interpolated:
        return (
            f"chroma interpolated: {len(diff.by_probe)} probes, the worst {diff.levels:.1f} levels from the CPU "
            f"path ({diff.worst}){refused}"
        )
    over = sorted((item for item in diff.by_probe.items() if item[1] >= CHROMA_THRESHOLD), key=lambda item: -item[1])
    figures = ", ".join(f"{name} {levels:.1f}" for name, levels in over)
    return (
        f"chroma repeated on {len(over)} of {len(diff.by_probe)} probes (levels from the CPU path, threshold "
        f"{CHROMA_THRESHOLD:g}: {figures}){refused}; crops differ from the CPU path's, docs/gpu.md"
    )
