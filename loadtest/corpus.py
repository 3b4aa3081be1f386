"""The images a load test sends: a few shipped real photographs plus generated images of chosen sizes.

    photos            the JPEGs in loadtest/corpus/ (public domain / CC0, see loadtest/corpus/LICENSE)
    500x375           generated, the typical web photo (ImageNet's median is about 500x375)
    4032x3024         generated, a 12 MP phone photo

Generated images are smooth gradients plus noise, JPEG quality 90, made on demand (seeded, so every run
and every client sends the same bytes) and never written into the repo.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
_SIZE = re.compile(r"^(\d+)x(\d+)$")


@dataclass(frozen=True)
class CorpusImage:
    name: str
    data: bytes
    width: int
    height: int
    content_type: str = "image/jpeg"


def generate_jpeg(width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    """A deterministic photo-like JPEG: gradients, low-frequency blobs and mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 160
    for _ in range(6):  # a few soft "objects", so the image is not one gradient
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.05, 0.3) * min(width, height)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None]
        base += blob * rng.uniform(-80, 80, 3).astype(np.float32)
    # Noise at a coarse scale (upsampled), like texture, rather than per-pixel static that JPEG hates.
    small = rng.normal(0, 12, (max(1, height // 4), max(1, width // 4), 3)).astype(np.float32)
    noise = np.kron(small, np.ones((4, 4, 1), np.float32))[:height, :width]
    pad_h, pad_w = height - noise.shape[0], width - noise.shape[1]
    if pad_h or pad_w:
        noise = np.pad(noise, ((0, pad_h), (0, pad_w), (0, 0)))
    pixels = np.clip(base + noise + rng.uniform(20, 60, 3), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def shipped_photos() -> list[CorpusImage]:
    out = []
    for path in sorted(CORPUS_DIR.glob("*.jpg")):
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
        out.append(CorpusImage(path.stem, data, width, height))
    return out


def parse_spec(spec: str) -> list[str]:
    """ "photos,500x375" -> ["photos", "500x375"]; raises ValueError naming what is allowed."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise ValueError("empty image spec; use e.g. 'photos,500x375,4032x3024'")
    for part in parts:
        size = _SIZE.match(part)
        if part != "photos" and not size:
            raise ValueError(f"image spec entry {part!r}: use 'photos' or WIDTHxHEIGHT such as 500x375")
        if size and 0 in map(int, size.groups()):
            raise ValueError(f"image spec entry {part!r}: width and height must be >= 1 pixel")
    return parts


def build_corpus(spec: str = "photos,500x375", per_size: int = 4, seed: int = 0) -> list[CorpusImage]:
    """The images named by ``spec``: ``per_size`` generated images for each WIDTHxHEIGHT entry."""
    images: list[CorpusImage] = []
    for part in parse_spec(spec):
        if part == "photos":
            photos = shipped_photos()
            if not photos:
                raise ValueError(f"no photos in {CORPUS_DIR}")
            images.extend(photos)
            continue
        width, height = map(int, _SIZE.match(part).groups())
        for i in range(per_size):
            images.append(CorpusImage(f"gen-{part}-{i}", generate_jpeg(width, height, seed + i), width, height))
    return images
