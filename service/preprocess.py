"""Image bytes -> normalized (3, crop, crop) float32 array, exactly as torchvision's ImageNet eval preset.

torchvision's ``ImageClassification(crop_size=224)`` on a PIL image does: resize the shorter side to 256
with PIL bilinear (PIL always antialiases), the longer side to ``int(256 * long / short)``; center crop
at ``int(round((size - crop) / 2))``; scale to [0, 1]; subtract mean and divide by std. This module does
the same with PIL and NumPy, so the model sees what it was trained on.

Decoding is defensive: the format is checked against an allow-list and the pixel count against a limit
*before* pixels are decoded, truncated files are refused, EXIF orientation is applied, and every mode
(grayscale, 16-bit, CMYK, palette, alpha) ends as RGB.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import (  # noqa: F401
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)

from service.errors import CorruptImage, EmptyBody, ImageTooLarge, NotAnImage, UnsupportedImageFormat

# JPEG draft decoding keeps at least this multiple of the resize target, so the final bilinear
# resize still does real antialiased downscaling and the result stays within ~1/255 of a full decode.
DRAFT_MARGIN = 2
# Past this many pixels on the long side after the resize (aspect ratio > 16 for a 256 resize), only
# the crop's source region is resized: a 1x40000 image would otherwise become a 256x10240000 buffer.
# That path can differ from resize-then-crop by 1/255 on ~0.1% of pixels (box rounding).
MAX_RESIZED_SIDE = 4096
# The parsers tried on incoming bytes (JPEG's also reads MPO, the multi-picture JPEG of phone cameras),
# registered by the imports above rather than lazily from several decode threads at once.
PARSERS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_SUPPORTED = ", ".join(sorted(PARSERS))
# Magic numbers of image formats people send but we do not decode, so they get 415, not "not an image".
_OTHER_FORMATS = (
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"qoif", "QOI"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
)
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
# Our own limit (PreprocessConfig.max_pixels) is checked from the header before any pixel is decoded,
# with a message that names the size; PIL's global bomb check would only duplicate it, less clearly.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class PreprocessConfig:
    resize_size: int = 256
    crop_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    max_pixels: int = 40_000_000
    jpeg_draft: bool = True


def resized_size(width: int, height: int, resize_size: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to ``resize_size``, as torchvision computes it."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize_size, int(resize_size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        # PIL's own I;16 -> RGB conversion clips at 255 (a white image); scale the range down instead.
        wide = np.asarray(image, dtype=np.uint32 if image.mode != "I" else np.int64)
        peak = 65535 if image.mode != "I" else max(int(wide.max()), 1)
        image = Image.fromarray((np.clip(wide, 0, peak) * 255 // peak).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels are shown over white, as a browser shows them; their stored colour is noise.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def _sniff_other_image_format(data: bytes) -> str | None:
    for magic, name in _OTHER_FORMATS:
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"avif", b"avis"):
        return "HEIF/AVIF"
    if data.lstrip()[:5].lower() in (b"<svg ", b"<?xml"):
        return "SVG"
    return None


def decode(data: bytes, config: PreprocessConfig) -> Image.Image:
    """Bytes -> an upright RGB PIL image, or a typed 4xx error naming the problem."""
    if not data:
        raise EmptyBody("the image is empty (0 bytes)")
    try:
        # Only our formats' parsers ever see the bytes: PIL's other plugins (dozens of rarely used
        # formats) are attack surface we do not need.
        image: Image.Image = Image.open(io.BytesIO(data), formats=PARSERS)
    except UnidentifiedImageError:
        other = _sniff_other_image_format(data)
        if other:
            raise UnsupportedImageFormat(f"image format {other} is not supported; send one of {_SUPPORTED}") from None
        raise NotAnImage(f"not a recognizable image; send one of {_SUPPORTED}") from None
    except Exception as exc:  # PIL raises many types on hostile headers
        raise CorruptImage(f"unreadable image header ({type(exc).__name__})") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise CorruptImage(f"image has no pixels ({width}x{height})")
    if width * height > config.max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {config.max_pixels}")
    try:
        if config.jpeg_draft and image.format in ("JPEG", "MPO"):
            # Target keeps the shorter side >= DRAFT_MARGIN * resize_size; draft never goes below it.
            scale = DRAFT_MARGIN * config.resize_size / min(width, height)
            if scale < 1:
                image.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
        image.load()  # decode now, inside the try, so truncation surfaces here
        image = ImageOps.exif_transpose(image) or image
        return _to_rgb(image)
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImage(f"truncated or corrupt image data ({exc})") from None


def transform(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """RGB PIL image -> (3, crop, crop) float32, normalized with ImageNet mean and std."""
    width, height = image.size
    new_w, new_h = resized_size(width, height, config.resize_size)
    crop = config.crop_size
    top = round((new_h - crop) / 2.0)
    left = round((new_w - crop) / 2.0)
    if max(new_w, new_h) <= MAX_RESIZED_SIDE:
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        image = image.crop((left, top, left + crop, top + crop))
    else:
        sx, sy = width / new_w, height / new_h
        box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
        image = image.resize((crop, crop), Image.Resampling.BILINEAR, box=box)
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)  # (crop, crop, 3) in [0, 1]
    mean = np.asarray(config.mean, dtype=np.float32)
    std = np.asarray(config.std, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))  # (3, crop, crop)


def preprocess(data: bytes, config: PreprocessConfig) -> np.ndarray:
    """Image bytes -> (3, crop, crop) float32; raises a ServiceError subclass on bad input."""
    return transform(decode(data, config), config)
