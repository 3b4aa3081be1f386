"""Image transforms of the 2012 recipe: PIL work per sample in loader workers, tensor work per batch.

Split so that the expensive, branchy part (JPEG decode, resize, crop, flip) runs in DataLoader worker
processes and ships uint8 tensors (4x fewer bytes than float32 to pin and copy), while the arithmetic
part (to float, PCA lighting noise, normalization) runs batch-wise on whatever device trains.

Sources: crops, flips and lighting follow Krizhevsky et al. 2012, section 4.1; the ImageNet PCA
eigenvalues/eigenvectors (for RGB in [0, 1]) are the ones used by fb.resnet.torch and torchvision's
references. Mean/std, the resize rule and the center crop are the service's (``model/preprocessing.py``),
so evaluation here sees exactly what the service feeds the model.
"""

from __future__ import annotations

import torch
from PIL import Image

from model.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    crop_offsets,
    device_constant,
    resize_crop,
    resized_size,
)

# Principal components of ImageNet RGB pixels in [0, 1]: eigenvalues and eigenvectors (as columns).
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
LIGHTING_STD = 0.1  # paper: alpha ~ N(0, 0.1)


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Scale so the shorter side is ``size`` pixels, keeping the aspect ratio (the service's size rule)."""
    w, h = img.size
    if min(w, h) == size:
        return img
    return img.resize(resized_size(w, h, size), Image.Resampling.BILINEAR)


def crop_box(img: Image.Image, left: int, top: int, size: int) -> Image.Image:
    return img.crop((left, top, left + size, top + size))


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"image {w}x{h} is smaller than the {size}x{size} crop")
    return crop_box(img, *crop_offsets(w, h, size), size)


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) uint8."""
    return (
        torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        .view(img.size[1], img.size[0], 3)
        .permute(2, 0, 1)
        .contiguous()
    )


def _rescaled_square(img: Image.Image, resize_size: int) -> Image.Image:
    # Paper: "rescaled the image such that the shorter side was of length 256, and then cropped out
    # the central 256x256 patch"; all crops below are taken from that square.
    return center_crop(resize_shorter(img.convert("RGB"), resize_size), resize_size)


class TrainTransform:
    """PIL image -> (3, crop, crop) uint8: a random crop of the rescaled square, flipped half the time.

    Randomness comes from torch's generator, which DataLoader seeds per worker, so runs repeat.
    """

    def __init__(self, resize_size: int, crop_size: int, hflip_prob: float = 0.5) -> None:
        if crop_size > resize_size:
            raise ValueError(f"crop_size {crop_size} must not exceed resize_size {resize_size}")
        self.resize_size, self.crop_size, self.hflip_prob = resize_size, crop_size, hflip_prob

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = _rescaled_square(img, self.resize_size)
        span = self.resize_size - self.crop_size + 1
        left, top = (int(v) for v in torch.randint(span, (2,)))
        img = crop_box(img, left, top, self.crop_size)
        if torch.rand(()) < self.hflip_prob:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_uint8_tensor(img)


class EvalTransform:
    """PIL image -> (3, crop, crop) uint8: resize the shorter side, then the center crop (as served)."""

    def __init__(self, resize_size: int, crop_size: int) -> None:
        self.resize_size, self.crop_size = resize_size, crop_size

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return to_uint8_tensor(resize_crop(img.convert("RGB"), self.resize_size, self.crop_size))


def ten_crop_boxes(full: int, crop: int) -> list[tuple[int, int]]:
    """(left, top) of the paper's five patches of a ``full`` square: four corners, then the center."""
    far, mid = full - crop, (full - crop) // 2
    return [(0, 0), (far, 0), (0, far), (far, far), (mid, mid)]


class TenCropTransform:
    """PIL image -> (10, 3, crop, crop) uint8: the five patches and their mirror images (paper, 4.1)."""

    def __init__(self, resize_size: int, crop_size: int) -> None:
        self.resize_size, self.crop_size = resize_size, crop_size

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = _rescaled_square(img, self.resize_size)
        crops = [
            to_uint8_tensor(crop_box(img, x, y, self.crop_size))
            for x, y in ten_crop_boxes(self.resize_size, self.crop_size)
        ]
        five = torch.stack(crops)  # (5, 3, crop, crop)
        return torch.cat([five, five.flip(-1)])  # (10, 3, crop, crop)


def lighting_noise(images: torch.Tensor, std: float = LIGHTING_STD, alpha: torch.Tensor | None = None) -> torch.Tensor:
    """Fancy PCA: add eigvec @ (alpha * eigval) to every pixel of each image, alpha ~ N(0, std) per image.

    ``images`` is (B, 3, H, W) float RGB in [0, 1]; ``alpha`` (B, 3) may be given to make it exact.
    """
    if alpha is None:
        alpha = torch.randn(images.shape[0], 3, device=images.device) * std  # (B, 3)
    eigval = device_constant(IMAGENET_PCA_EIGVAL, images.device, torch.float32)
    eigvec = device_constant(IMAGENET_PCA_EIGVEC, images.device, torch.float32)
    rgb = (alpha * eigval) @ eigvec.T  # (B, 3): rgb[b, i] = sum_j eigvec[i, j] * alpha[b, j] * eigval[j]
    return images + rgb.to(images.dtype)[:, :, None, None]


def normalize(images: torch.Tensor) -> torch.Tensor:
    mean = device_constant(IMAGENET_MEAN, images.device, images.dtype)[:, None, None]
    std = device_constant(IMAGENET_STD, images.device, images.dtype)[:, None, None]
    return (images - mean) / std


class BatchPreprocess:
    """uint8 (B, 3, H, W) on the device -> normalized float32, with lighting noise when training.

    Float input is taken as already finished in the workers (``--augment-on workers``) and only gets
    its memory format set.
    """

    def __init__(self, lighting_std: float = LIGHTING_STD, channels_last: bool = False) -> None:
        self.lighting_std, self.channels_last = lighting_std, channels_last

    def __call__(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float().div_(255)
            if train and self.lighting_std > 0:
                images = lighting_noise(images, self.lighting_std)
            images = normalize(images)
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images


class FinishInWorker:
    """Wrap a uint8 transform to do the float/lighting/normalize step per sample in the worker."""

    def __init__(self, transform, lighting_std: float = 0.0) -> None:
        self.transform, self.lighting_std = transform, lighting_std

    def __call__(self, img: Image.Image) -> torch.Tensor:
        x = self.transform(img).float().div_(255)
        batch = x if x.dim() == 4 else x[None]  # ten-crop gives (10, 3, h, w)
        if self.lighting_std > 0:
            batch = lighting_noise(batch, self.lighting_std)
        batch = normalize(batch)
        return batch if x.dim() == 4 else batch[0]
