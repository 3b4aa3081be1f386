"""Small synthetic data for export tests: image classes a random AlexNet can tell apart, and a
checkpoint whose last layer is fitted to them in closed form (no training).

Why: an untrained AlexNet's logits are tiny and nearly input-independent, so "INT8 agrees with fp32
on top-1" would be met by a quantization that collapses every output to one class. Here class ``k``
is a colour and stripe orientation; the random convolutional and hidden layers are kept, and
``classifier.6`` becomes a nearest-class-mean classifier on the 4096-d penultimate features, scaled so
the logits are well separated. fp32 then predicts the true class for most images, so agreement
tracks whether the quantized network still computes the same function.

    python -m tests.synthetic --out /tmp/synthetic   # checkpoint.pt, calibration/, eval/
"""

from __future__ import annotations

import argparse
import colorsys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.alexnet import build
from model.weights import save_checkpoint

NUM_CLASSES = 8
IMAGE_SIZE = 256  # = resize_size, so preprocessing only crops


def make_image(label: int, rng: np.random.Generator) -> Image.Image:
    """Stripes at angle ``label * 180/NUM_CLASSES`` degrees in hue ``label/NUM_CLASSES``, with noise."""
    angle = np.pi * label / NUM_CLASSES + rng.normal(0, 0.05)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / 24 + rng.uniform(0, 2 * np.pi))
    contrast = rng.uniform(0.5, 1.0)
    rgb = np.array(colorsys.hsv_to_rgb(label / NUM_CLASSES, 0.8, 0.9), np.float32)
    image = 0.5 + contrast * 0.4 * wave[..., None] * rgb + rng.normal(0, 0.08, (IMAGE_SIZE, IMAGE_SIZE, 3))
    image += rng.uniform(-0.1, 0.1)  # brightness
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))


def write_images(folder: Path, per_class: int, seed: int) -> list[tuple[Path, int]]:
    """``per_class`` PNGs of each class under ``folder/<class>/``; returns (path, label) pairs."""
    rng = np.random.default_rng(seed)
    items = []
    for label in range(NUM_CLASSES):
        (folder / f"class_{label}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = folder / f"class_{label}" / f"{i:03d}.png"
            make_image(label, rng).save(path)
            items.append((path, label))
    return items


def fitted_checkpoint(path: Path, fit_items: list[tuple[Path, int]], seed: int = 0) -> Path:
    """A torchvision-layout AlexNet (random features, seed ``seed``) with a closed-form fitted head."""
    from export.image_folder import preprocess
    from export.onnx_metadata import ModelMetadata

    meta = ModelMetadata(arch="torchvision", labels=[], input_size=224, resize_size=256, weights="", weights_sha256="")
    torch.manual_seed(seed)
    model = build("torchvision", num_classes=NUM_CLASSES).eval()
    x = torch.from_numpy(np.stack([preprocess(p, meta) for p, _ in fit_items]))
    labels = torch.tensor([label for _, label in fit_items])
    with torch.inference_mode():
        feats = model.classifier[:-1](torch.flatten(model.avgpool(model.features(x)), 1))  # (N, 4096)
        means = torch.stack([feats[labels == k].mean(0) for k in range(NUM_CLASSES)])  # (K, 4096)
        # logits = -scale/2 * |f - mean_k|^2 + const(f): nearest class mean, margins of a few units
        scale = 40.0 / torch.cdist(means, means).pow(2).mean()
        # subtracting the mean of the class means shifts every logit of an image alike: same argmax,
        # logits centred on 0 instead of sharing a large offset
        model.classifier[6].weight.copy_(scale * (means - means.mean(0)))
        model.classifier[6].bias.copy_(-0.5 * scale * (means.pow(2).sum(1) - means.pow(2).sum(1).mean()))
    return save_checkpoint(
        path,
        model,
        "torchvision",
        [f"class_{k}" for k in range(NUM_CLASSES)],
        {"source": "synthetic-fitted-head", "seed": seed},
    )


def make_synthetic(
    out: Path, calibration_per_class: int = 4, eval_per_class: int = 8, fit_per_class: int = 12
) -> dict[str, Path]:
    """checkpoint.pt (head fitted on fit/), calibration/ and eval/ under ``out``: three disjoint sets."""
    fit = write_images(out / "fit", fit_per_class, seed=3)
    write_images(out / "calibration", calibration_per_class, seed=1)
    write_images(out / "eval", eval_per_class, seed=2)
    checkpoint = fitted_checkpoint(out / "checkpoint.pt", fit)
    return {"checkpoint": checkpoint, "calibration": out / "calibration", "eval": out / "eval"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--calibration-per-class", type=int, default=4)
    parser.add_argument("--eval-per-class", type=int, default=8)
    args = parser.parse_args()
    print(make_synthetic(args.out, args.calibration_per_class, args.eval_per_class))
