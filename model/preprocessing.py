"""The ImageNet eval preset, defined once: sizes, mean/std, the resize and crop rules, normalisation.

torchvision's ``ImageClassification(crop_size=224)`` (``AlexNet_Weights.IMAGENET1K_V1.transforms()``)
on a PIL image: resize the shorter side to 256 with PIL bilinear (PIL always antialiases), the longer
side to ``int(256 * long / short)``; center crop at ``int(round((size - crop) / 2))``; scale to [0, 1];
subtract ``mean`` and divide by ``std``. Here the same steps are split where the service splits its
work: resize + crop to a (crop, crop, 3) **uint8** array (what crosses a process boundary), then
normalisation of one image or of a batch into (B, 3, crop, crop) float32.

The same preset on torch tensors, for CPU and CUDA alike, serves the GPU JPEG path: nvJPEG
(``service.gpu_decode``) gives a (3, H, W) uint8 tensor without applying EXIF orientation; ``apply_exif_orientation_tensor`` turns it as PIL's ``ImageOps.exif_transpose``
would, ``resize_crop_tensor`` makes the (3, crop, crop) uint8 crop with torch's antialiased bilinear
(PIL's filter, in float32 instead of PIL's fixed point: within one level of PIL on the same pixels), and
``normalize_tensor`` writes a batch of crops straight into the backend's input buffer.
tests/unit/test_preprocessing_parity.py holds the two paths to each other.

Used by ``service/preprocess.py`` (after its defensive decode), ``export/image_folder.py`` (INT8
calibration, agreement checks) and ``model/transforms.py`` (evaluation). torch is imported only by
the tensor functions: the service's HTTP processes use the PIL/NumPy half without loading torch.
"""

from __future__ import annotations

import functools
import io
from typing import TYPE_CHECKING, cast

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_SIZE = 256  # shorter side before the crop, pixels
CROP_SIZE = 224  # square crop the model sees, pixels
# Past this many pixels on the long side after the resize (aspect ratio > 16 for a 256 resize), only
# the crop's source region is resized: a 1x40000 image would otherwise become a 256x10240000 buffer.
# With PIL that path can differ from resize-then-crop by 1/255 on ~0.1% of pixels (box rounding).
MAX_RESIZED_SIDE = 4096
EXIF_ORIENTATION_TAG = 0x0112
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def resized_size(width: int, height: int, resize_size: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to ``resize_size``, as torchvision computes it."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize_size, int(resize_size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def crop_offsets(width: int, height: int, crop_size: int) -> tuple[int, int]:
    """(left, top) of the center ``crop_size`` square of a ``width`` x ``height`` image, as torchvision.

    ``round`` rounds half to even, as torchvision's ``int(round(...))`` does: 117 / 2 -> 58.
    """
    return round((width - crop_size) / 2.0), round((height - crop_size) / 2.0)


def _check_sizes(resize_size: int, crop_size: int) -> None:
    if not 1 <= crop_size <= resize_size:
        raise ValueError(f"crop_size {crop_size} must be between 1 and resize_size {resize_size}")


def exif_orientation(image: Image.Image | bytes) -> int:
    """The EXIF orientation (1-8) PIL's ``ImageOps.exif_transpose`` would apply; 1 when absent or invalid.

    ``image`` is an opened PIL image or JPEG bytes (only PIL's JPEG parser sees them; anything else
    raises ``PIL.UnidentifiedImageError``). Reads only the header (EXIF, or XMP where there is no EXIF
    tag): nothing is decoded, so the GPU path can ask before nvJPEG decodes.
    """
    if isinstance(image, bytes | bytearray | memoryview):
        with Image.open(io.BytesIO(image), formats=("JPEG",)) as opened:
            return exif_orientation(opened)
    value = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says (decodes it), or ``image`` itself when upright."""
    return ImageOps.exif_transpose(image) or image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: 16-bit scaled down (not clipped), palette and alpha composited on white.

    The conversions that need full-size temporaries (16-bit scaling, compositing) run on bands of rows
    (``_by_bands``): every step works pixel by pixel, so the result is the same as converting the whole
    image, with one full-size image (the result) besides ``image`` (a 40-megapixel RGBA took ~1 GB).
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        # PIL's own I;16 -> RGB conversion clips at 255 (a white image); scale the range down instead.
        # Mode I's extrema are (low, high) as ints: its peak is the whole image's, not a band's.
        peak = 65535 if image.mode != "I" else max(cast(int, image.getextrema()[1]), 1)
        image = _by_bands(image, "L", functools.partial(_scale_to_eight_bits, peak=peak))
    if image.mode == "P" and "transparency" not in image.info:
        return image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La", "P"):
        return _by_bands(image, "RGB", _composite_on_white)
    return image.convert("RGB") if image.mode != "RGB" else image


# Rows per band in ``_by_bands``: about this many pixels (~4 MB of RGBA per temporary).
_BAND_PIXELS = 1 << 20


def _by_bands(image: Image.Image, mode: str, convert) -> Image.Image:
    """A new image of ``mode``: ``convert`` applied to bands of ``image``'s rows, pasted in place."""
    width, height = image.size
    result = Image.new(mode, image.size)
    rows = max(1, _BAND_PIXELS // width)
    for top in range(0, height, rows):
        box = (0, top, width, min(top + rows, height))
        result.paste(convert(image.crop(box)), box)
    return result


def _scale_to_eight_bits(band: Image.Image, peak: int) -> Image.Image:
    """16- or 32-bit grayscale -> L, 0..``peak`` scaled to 0..255 (rounding down), outside it clipped."""
    wide = np.asarray(band, dtype=np.uint32 if band.mode != "I" else np.int64)
    return Image.fromarray((np.clip(wide, 0, peak) * 255 // peak).astype(np.uint8), mode="L")


def _composite_on_white(band: Image.Image) -> Image.Image:
    """Alpha (or a palette's transparent colour) -> RGB over white, as a browser shows it: the stored
    colour of a transparent pixel is noise."""
    rgba = band.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def resize_crop(image: Image.Image, resize_size: int = RESIZE_SIZE, crop_size: int = CROP_SIZE) -> Image.Image:
    """PIL image -> its center ``crop_size`` square after resizing the shorter side to ``resize_size``.

    Antialiased bilinear (PIL's), torchvision's size rule and crop offsets. When the resized long side
    would exceed ``MAX_RESIZED_SIDE``, only the crop's source box is resized (bounded work).
    """
    _check_sizes(resize_size, crop_size)
    width, height = image.size
    new_w, new_h = resized_size(width, height, resize_size)
    left, top = crop_offsets(new_w, new_h, crop_size)
    if max(new_w, new_h) <= MAX_RESIZED_SIDE:
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        return image.crop((left, top, left + crop_size, top + crop_size))
    sx, sy = width / new_w, height / new_h
    box = (left * sx, top * sy, (left + crop_size) * sx, (top + crop_size) * sy)
    return image.resize((crop_size, crop_size), Image.Resampling.BILINEAR, box=box)


def resize_crop_uint8(image: Image.Image, resize_size: int = RESIZE_SIZE, crop_size: int = CROP_SIZE) -> np.ndarray:
    """RGB PIL image -> (crop, crop, 3) uint8, C-contiguous: ``resize_crop``'s pixels, before normalisation."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode}; convert it with to_rgb() first")
    # np.array, not np.asarray: PIL hands NumPy a read-only buffer; callers may write into the crop.
    return np.array(resize_crop(image, resize_size, crop_size), dtype=np.uint8, order="C")


@functools.lru_cache(maxsize=8)
def _lookup_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    # (3, 256) float32: every value a uint8 channel can normalise to, computed with exactly the float32
    # operations of the per-pixel formula ((v / 255) - mean) / std, so a lookup is bit-identical to it.
    levels = np.arange(256, dtype=np.float32) / np.float32(255.0)
    mean32, std32 = np.asarray(mean, np.float32)[:, None], np.asarray(std, np.float32)[:, None]
    table = (levels[None, :] - mean32) / std32
    table.flags.writeable = False
    return table


def normalize_batch(
    u8: np.ndarray,
    out: np.ndarray | None = None,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> np.ndarray:
    """(B, H, W, 3) uint8 crops -> (B, 3, H, W) float32 ``((u8 / 255) - mean) / std``, into ``out`` if given.

    One pass over the pixels (a per-channel table lookup), bit-identical to the float32 formula;
    ``out`` may be a preallocated buffer (a view of a larger batch is fine).
    """
    if u8.dtype != np.uint8 or u8.ndim != 4 or u8.shape[3] != 3:
        raise ValueError(f"expected (B, H, W, 3) uint8 crops, got {u8.shape} {u8.dtype}")
    b, h, w, _ = u8.shape
    if out is None:
        out = np.empty((b, 3, h, w), dtype=np.float32)
    elif out.shape != (b, 3, h, w) or out.dtype != np.float32:
        raise ValueError(f"out must be ({b}, 3, {h}, {w}) float32, got {out.shape} {out.dtype}")
    table = _lookup_table(tuple(float(m) for m in mean), tuple(float(s) for s in std))
    for c in range(3):
        # mode="clip" is never needed for uint8 indices but lets numpy write into ``out`` unbuffered.
        np.take(table[c], u8[..., c], out=out[:, c], mode="clip")
    return out


def normalize(
    u8: np.ndarray,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> np.ndarray:
    """One (H, W, 3) uint8 crop -> (3, H, W) float32, C-contiguous: ``normalize_batch`` of one image."""
    return normalize_batch(u8[None], mean=mean, std=std)[0]


# -- the same preset on torch tensors (CPU or CUDA) ----------------------------------------
LAYOUTS = ("NCHW", "NHWC")


def apply_exif_orientation_tensor(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """(..., H, W) image -> the same turned as EXIF ``orientation`` (1-8) says, as PIL's exif_transpose.

    Any other value (absent, 0, 9, ...) leaves the image as it is, as PIL does.
    """
    if orientation == 2:  # mirrored
        return image.flip(-1)
    if orientation == 3:  # upside down
        return image.flip(-2, -1)
    if orientation == 4:  # mirrored upside down
        return image.flip(-2)
    if orientation == 5:  # PIL TRANSPOSE: mirror along the main diagonal
        return image.transpose(-2, -1).contiguous()
    if orientation == 6:  # PIL ROTATE_270: a quarter turn clockwise
        return image.transpose(-2, -1).flip(-1)
    if orientation == 7:  # PIL TRANSVERSE: mirror along the anti-diagonal
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:  # PIL ROTATE_90: a quarter turn counter-clockwise
        return image.transpose(-2, -1).flip(-2)
    return image


def _aa_weights(in_size: int, out_size: int, first: int, count: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """Rows ``first .. first+count`` of the (out_size, in_size) antialiased bilinear resampling matrix.

    The filter torch's ``interpolate(antialias=True)`` and PIL use: a triangle stretched by the scale
    when downscaling, taps ``[int(center - support + .5), int(center + support + .5))``, normalised.
    Returns (weights (count, span) float64, index of the first source pixel the span covers).
    """
    import torch

    scale = in_size / out_size
    support = max(scale, 1.0)
    inv = 1.0 / support
    center = scale * (torch.arange(first, first + count, dtype=torch.float64, device=device) + 0.5)  # (count,)
    lo = (center - support + 0.5).floor().clamp(min=0)
    hi = (center + support + 0.5).floor().clamp(max=in_size)
    start, stop = int(lo.min()), int(hi.max())
    src = torch.arange(start, stop, dtype=torch.float64, device=device)[None, :]  # (1, span)
    weights = (1 - ((src - center[:, None] + 0.5) * inv).abs()).clamp(min=0)
    weights = weights * ((src >= lo[:, None]) & (src < hi[:, None]))
    return weights / weights.sum(1, keepdim=True), start


def _resize_crop_region(image: torch.Tensor, new_w: int, new_h: int, left: int, top: int, crop: int) -> torch.Tensor:
    # Only the crop's output pixels and the source pixels under them: two small matrix products
    # (separable filter) instead of a resized image that can be millions of pixels long.
    import torch

    h, w = image.shape[-2:]
    wy, y0 = _aa_weights(h, new_h, top, crop, image.device)  # (crop, span_y)
    wx, x0 = _aa_weights(w, new_w, left, crop, image.device)  # (crop, span_x)
    region = image[..., y0 : y0 + wy.shape[1], x0 : x0 + wx.shape[1]].to(torch.float64)  # (..., 3, span_y, span_x)
    return wy @ region @ wx.T  # (..., 3, crop, crop); float64, so no TF32 setting can reach it


def resize_crop_tensor(image: torch.Tensor, resize_size: int = RESIZE_SIZE, crop_size: int = CROP_SIZE) -> torch.Tensor:
    """(3, H, W) uint8 image on any device -> (3, crop, crop) uint8 center crop, the PIL path's pixels.

    Shorter side to ``resize_size`` with antialiased bilinear on float, torchvision's size rule and crop
    offsets, then round and clamp to uint8. When the resized long side would exceed
    ``MAX_RESIZED_SIDE``, only the crop's source region is resampled.

    A batch of images of one size, (N, 3, H, W), gives (N, 3, crop, crop): each crop the same as that
    image's alone, in one call per step instead of one per image (on CUDA: kernel launches per batch).
    """
    import torch
    import torch.nn.functional as F

    if image.dtype != torch.uint8 or image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"expected a (3, H, W) or (N, 3, H, W) uint8 image, got {tuple(image.shape)} {image.dtype}")
    if not 1 <= crop_size <= resize_size:
        raise ValueError(f"crop_size {crop_size} must be between 1 and resize_size {resize_size}")
    height, width = image.shape[-2:]
    new_w, new_h = resized_size(width, height, resize_size)
    left, top = crop_offsets(new_w, new_h, crop_size)
    if max(new_w, new_h) > MAX_RESIZED_SIDE:
        crop = _resize_crop_region(image, new_w, new_h, left, top, crop_size)
    elif (new_w, new_h) == (width, height):
        return image[..., top : top + crop_size, left : left + crop_size].contiguous()
    else:
        batch = image if image.dim() == 4 else image[None]
        resized = F.interpolate(
            batch.float(), size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
        )
        if image.dim() == 3:
            resized = resized[0]  # (3, new_h, new_w)
        crop = resized[..., top : top + crop_size, left : left + crop_size]
    return crop.round_().clamp_(0, 255).to(torch.uint8).contiguous()


@functools.lru_cache(maxsize=64)
def device_constant(values: tuple, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``values`` (numbers, or tuples of them) as a tensor on ``device``, made once per device and
    dtype. ``torch.tensor(values, device="cuda")`` copies from pageable host memory and so waits for
    everything queued on the GPU, every time: in a loop that stops the CPU from running ahead."""
    import torch

    with torch.inference_mode(False):  # an ordinary tensor, usable by code that records gradients
        return torch.tensor(values, dtype=dtype, device=device)


@functools.lru_cache(maxsize=16)
def _channel_constants(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # On the batch's device, as tensors: a CPU scalar divisor lets CUDA multiply by its reciprocal
    # instead of dividing, which is not bit-identical to the NumPy path.
    import torch

    def const(values: tuple[float, ...]) -> torch.Tensor:
        return device_constant(values, device, torch.float32)

    return const((255.0,)), const(mean)[:, None, None], const(std)[:, None, None]


def normalize_tensor(
    batch: torch.Tensor,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    dtype: torch.dtype | None = None,
    out: torch.Tensor | None = None,
    *,
    layout: str = "NCHW",
) -> torch.Tensor:
    """uint8 crops (B, 3, H, W), or (B, H, W, 3) with ``layout="NHWC"`` -> (B, 3, H, W) ``dtype``.

    ``((x / 255) - mean) / std`` computed in float32 (bit for bit the NumPy path's values on the CPU),
    on the batch's device, then cast to ``dtype`` (default float32). Written into ``out`` when given
    (e.g. the backend's input buffer; any strides, e.g. channels_last), whose dtype then wins over
    ``dtype``. No host synchronisation once a device's constants are cached.
    """
    import torch

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if batch.dtype != torch.uint8 or batch.dim() != 4:
        raise ValueError(f"expected a (B, 3, H, W) or (B, H, W, 3) uint8 batch, got {tuple(batch.shape)} {batch.dtype}")
    nchw = batch.permute(0, 3, 1, 2) if layout == "NHWC" else batch
    if nchw.shape[1] != 3:
        raise ValueError(f"expected 3 channels in layout {layout}, got shape {tuple(batch.shape)}")
    if out is not None:
        if tuple(out.shape) != tuple(nchw.shape) or out.device != batch.device or not out.dtype.is_floating_point:
            raise ValueError(
                f"out must be a floating {tuple(nchw.shape)} tensor on {batch.device}, "
                f"got {tuple(out.shape)} {out.dtype} on {out.device}"
            )
        dtype = out.dtype
    dtype = dtype or torch.float32
    scale, mean_t, std_t = _channel_constants(tuple(float(m) for m in mean), tuple(float(s) for s in std), batch.device)
    # float32 arithmetic, in place in ``out`` when it is float32: no other buffer the size of the batch.
    work = out if out is not None and out.dtype == torch.float32 else torch.empty(nchw.shape, device=batch.device)
    work.copy_(nchw).div_(scale).sub_(mean_t).div_(std_t)
    if work is out or dtype == torch.float32:
        return work
    if out is not None:
        return out.copy_(work)
    return work.to(dtype)
