"""A synthetic ImageFolder data set of learnable classes, to exercise training, evaluation, export and
serving without ImageNet.

    python -m model.synthetic --out data/synthetic --classes 10
    python -m model.synthetic --out /tmp/tiny --classes 4 --train-per-class 40 --val-per-class 10 --size 80

Class k is a (shape, colour, texture) triple; with 5 shapes, 8 colours and 3 textures (pairwise coprime)
k -> (k % 5, k % 8, k % 3) is one-to-one for k < 120, and any 3 consecutive classes differ in all three
attributes. Each image draws its class's shape at a random position, size and rotation, with jittered
colour, over a noisy random background; files are JPEGs, so decoding is exercised as with ImageNet.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from model.help_format import DefaultsHelpFormatter

SHAPES = ("circle", "square", "triangle", "cross", "ring")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "magenta": (200, 50, 200),
    "cyan": (40, 200, 210),
    "orange": (240, 130, 30),
    "white": (240, 240, 240),
}
TEXTURES = ("solid", "stripes", "checker")
MAX_CLASSES = len(SHAPES) * len(COLOURS) * len(TEXTURES)  # 120


def class_attributes(k: int) -> tuple[str, str, str]:
    """(shape, colour, texture) of class ``k``."""
    if not 0 <= k < MAX_CLASSES:
        raise ValueError(f"class index {k} out of range: at most {MAX_CLASSES} classes")
    return SHAPES[k % len(SHAPES)], list(COLOURS)[k % len(COLOURS)], TEXTURES[k % len(TEXTURES)]


def class_name(k: int) -> str:
    """Folder name; the numeric prefix keeps sorted order equal to class order."""
    return f"c{k:03d}-" + "-".join(class_attributes(k))


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    corners = {"square": 4, "triangle": 3}[shape]
    return [
        (cx + r * math.cos(angle + 2 * math.pi * i / corners), cy + r * math.sin(angle + 2 * math.pi * i / corners))
        for i in range(corners)
    ]


def _mask(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """An 'L' mask of the shape, 255 inside."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    r = rng.uniform(0.22, 0.38) * size
    cx, cy = rng.uniform(r, size - r, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        draw.ellipse((cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r), fill=0)
    elif shape == "cross":
        w = 0.3 * r
        for a in (angle, angle + math.pi / 2):
            dx, dy, nx, ny = r * math.cos(a), r * math.sin(a), w * -math.sin(a), w * math.cos(a)
            draw.polygon(
                [
                    (cx - dx - nx, cy - dy - ny),
                    (cx + dx - nx, cy + dy - ny),
                    (cx + dx + nx, cy + dy + ny),
                    (cx - dx + nx, cy - dy + ny),
                ],
                fill=255,
            )
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, r, angle), fill=255)
    return mask


def _texture(texture: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) in {0.55, 1}: a brightness pattern applied to the shape's colour."""
    if texture == "solid":
        return np.ones((size, size))
    period = max(4, int(size * rng.uniform(0.08, 0.14)))
    yy, xx = np.mgrid[0:size, 0:size]
    if texture == "stripes":
        a = rng.uniform(0, math.pi)
        on = ((xx * math.cos(a) + yy * math.sin(a)) // (period / 2)) % 2 == 0
    else:  # checker
        on = ((xx // period) + (yy // period)) % 2 == 0
    return np.where(on, 1.0, 0.55)


def draw_image(k: int, size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of class ``k``, ``size`` x ``size`` pixels."""
    shape, colour, texture = class_attributes(k)
    # Background: a dim random-coloured gradient plus pixel noise, so the shape is not the only signal
    # the network could lock onto by brightness alone.
    base = rng.uniform(20, 110, size=3)
    ramp = np.linspace(-1, 1, size)[None, :, None] * rng.uniform(-25, 25, size=3)
    background = base + ramp + rng.normal(0, 12, size=(size, size, 3))
    rgb = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 15, size=3), 0, 255)
    foreground = rgb * _texture(texture, size, rng)[:, :, None]
    alpha = np.asarray(_mask(shape, size, rng), dtype=np.float64)[:, :, None] / 255
    pixels = alpha * foreground + (1 - alpha) * background
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def generate(
    out: Path, classes: int, train_per_class: int, val_per_class: int, size: int, seed: int = 0, quality: int = 90
) -> Path:
    """Write ``out/{train,val}/<class>/<n>.JPEG``; the same arguments always give the same files."""
    if not 1 <= classes <= MAX_CLASSES:
        raise ValueError(f"--classes must be in 1..{MAX_CLASSES}, got {classes}")
    for split_index, (split, count) in enumerate((("train", train_per_class), ("val", val_per_class))):
        for k in range(classes):
            folder = out / split / class_name(k)
            folder.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, split_index, k])
            for i in range(count):
                draw_image(k, size, rng).save(folder / f"{split}_{k:03d}_{i:05d}.JPEG", quality=quality)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model.synthetic",
        description="Write a synthetic ImageFolder data set (train/ and val/) of shape/colour/texture classes.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory (train/ and val/ go inside)")
    parser.add_argument("--classes", type=int, default=10, help=f"number of classes, at most {MAX_CLASSES}")
    parser.add_argument("--train-per-class", type=int, default=200, help="training images per class")
    parser.add_argument("--val-per-class", type=int, default=50, help="validation images per class")
    parser.add_argument("--size", type=int, default=256, help="image side, pixels (train with --resize-size <= this)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    return parser


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    generate(args.out, args.classes, args.train_per_class, args.val_per_class, args.size, args.seed, args.quality)
    total = args.classes * (args.train_per_class + args.val_per_class)
    print(f"wrote {total} images of {args.classes} classes to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
