"""model/transforms.py and model/synthetic.py: crops, flips, lighting, ten-crop geometry, the generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.data import ImageFolder, class_labels
from model.synthetic import MAX_CLASSES, class_attributes, class_name, generate
from model.transforms import (
    IMAGENET_PCA_EIGVAL,
    IMAGENET_PCA_EIGVEC,
    EvalTransform,
    TenCropTransform,
    TrainTransform,
    lighting_noise,
)


def _image(w: int, h: int, seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB"), pixels


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)


def test_eval_transform_is_the_center_crop():
    img, pixels = _image(8, 8)
    out = EvalTransform(resize_size=8, crop_size=4)(img)
    assert out.dtype == torch.uint8 and out.shape == (3, 4, 4)
    assert torch.equal(out, _chw(pixels[2:6, 2:6]))


def test_train_transform_flip_mirrors_the_same_crop():
    img, _ = _image(12, 12)
    torch.manual_seed(7)
    plain = TrainTransform(12, 8, hflip_prob=0.0)(img)
    torch.manual_seed(7)
    flipped = TrainTransform(12, 8, hflip_prob=1.0)(img)
    assert plain.shape == (3, 8, 8) and plain.dtype == torch.uint8
    assert torch.equal(flipped, plain.flip(-1))


def test_train_transform_crops_vary_and_stay_inside():
    img, pixels = _image(10, 10)
    torch.manual_seed(0)
    crops = {TrainTransform(10, 6, hflip_prob=0.0)(img).numpy().tobytes() for _ in range(40)}
    windows = {_chw(pixels[t : t + 6, left : left + 6]).numpy().tobytes() for t in range(5) for left in range(5)}
    assert len(crops) > 5 and crops <= windows


def test_train_transform_rescales_shorter_side_and_takes_central_square():
    img, _ = _image(40, 20)  # resized to 32x16 -> central 16x16 square -> 16x16 crop is all of it
    out = TrainTransform(16, 16, hflip_prob=0.0)(img)
    expected = np.asarray(img.resize((32, 16), Image.BILINEAR))[:, 8:24]
    assert torch.equal(out, _chw(expected))


def test_ten_crop_is_corners_center_and_mirrors():
    img, pixels = _image(6, 6)
    crops = TenCropTransform(resize_size=6, crop_size=4)(img)
    assert crops.shape == (10, 3, 4, 4)
    five = [pixels[0:4, 0:4], pixels[0:4, 2:6], pixels[2:6, 0:4], pixels[2:6, 2:6], pixels[1:5, 1:5]]
    expected = [_chw(p) for p in five] + [_chw(p[:, ::-1]) for p in five]
    for got, want in zip(crops, expected, strict=True):
        assert torch.equal(got, want)


def test_lighting_noise_matches_hand_computation():
    images = torch.rand(2, 3, 4, 5)
    alpha = torch.tensor([[0.1, -0.2, 0.05], [0.0, 0.3, -0.1]])
    out = lighting_noise(images, alpha=alpha)
    for b in range(2):
        for i in range(3):
            shift = sum(IMAGENET_PCA_EIGVEC[i][j] * alpha[b, j].item() * IMAGENET_PCA_EIGVAL[j] for j in range(3))
            assert torch.allclose(out[b, i], images[b, i] + shift, atol=1e-6)


def test_lighting_noise_is_random_per_image():
    torch.manual_seed(0)
    out = lighting_noise(torch.zeros(64, 3, 1, 1), std=0.1)[:, :, 0, 0]  # (64, 3): each image's shift
    assert len({tuple(row.tolist()) for row in out}) == 64
    # Mostly along the first principal component (eigenvalue 0.2175): std ~ 0.1 * 0.2175 * |eigvec|
    assert 0.005 < out[:, 0].std().item() < 0.05


def test_synthetic_set_layout_and_determinism(tmp_path):
    generate(tmp_path / "a", classes=3, train_per_class=2, val_per_class=1, size=32, seed=3)
    generate(tmp_path / "b", classes=3, train_per_class=2, val_per_class=1, size=32, seed=3)
    for split, count in (("train", 6), ("val", 3)):
        files_a = sorted((tmp_path / "a" / split).glob("*/*.JPEG"))
        files_b = sorted((tmp_path / "b" / split).glob("*/*.JPEG"))
        assert len(files_a) == count
        assert [f.read_bytes() for f in files_a] == [f.read_bytes() for f in files_b]
    dataset = ImageFolder(tmp_path / "a" / "train", EvalTransform(32, 32))
    assert dataset.classes == [class_name(k) for k in range(3)]
    assert class_labels(dataset.classes) == dataset.classes
    image, target = dataset[5]
    assert image.shape == (3, 32, 32) and target == 2


def test_synthetic_classes_are_distinct_and_bounded():
    assert len({class_attributes(k) for k in range(MAX_CLASSES)}) == MAX_CLASSES
    with pytest.raises(ValueError, match=str(MAX_CLASSES)):
        class_attributes(MAX_CLASSES)


def test_imagenet_wnids_get_imagenet_names():
    wnids = [f"n{i:08d}" for i in range(1000)]
    assert class_labels(wnids)[0] == "tench"
