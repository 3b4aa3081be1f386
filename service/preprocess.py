"""Image bytes -> the model's input: a (crop, crop, 3) uint8 crop or a normalized (3, crop, crop) float32.

The preset itself (torchvision's ImageNet eval preset: sizes, resize rule, crop offsets, mean/std,
normalisation) is defined once in ``model/preprocessing.py``; this module is the service's defensive
decoder in front of it. Decoding is defensive: the format is checked against an allow-list and the
pixel count against a limit *before* pixels are decoded, truncated files are refused, EXIF orientation
is applied, and every mode (grayscale, 16-bit, CMYK, palette, alpha) ends as RGB.

``preprocess_uint8`` stops before normalisation (what crosses a process boundary: 150 KB, not 602 KB
of float32); ``preprocess`` is ``normalize(preprocess_uint8(...))``, bit for bit.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import (  # noqa: F401
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)

from model.preprocessing import (
    CROP_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESIZE_SIZE,
    exif_orientation,
    normalize,
    resize_crop_uint8,
    to_rgb,
    upright,
)
from service.errors import CorruptImage, EmptyBody, ImageTooLarge, NotAnImage, UnsupportedImageFormat
from service.header_checks import check_decode_work, check_jpeg_scans, ends_after_scan, read_jpeg_header

# JPEG draft decoding keeps at least this multiple of the resize target, so the final bilinear
# resize still does real antialiased downscaling and the result stays within ~1/255 of a full decode.
DRAFT_MARGIN = 2
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
# Our own limit (PreprocessConfig.max_pixels) is checked from the header before any pixel is decoded,
# with a message that names the size; PIL's global bomb check would only duplicate it, less clearly.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class PreprocessConfig:
    resize_size: int = RESIZE_SIZE
    crop_size: int = CROP_SIZE
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    max_pixels: int = 40_000_000
    jpeg_draft: bool = True

    @property
    def crop_bytes(self) -> int:
        """Bytes of one uint8 (crop, crop, 3) crop."""
        return self.crop_size * self.crop_size * 3

    @classmethod
    def for_model(cls, model, max_pixels: int, jpeg_draft: bool) -> PreprocessConfig:
        """The preset of a model (anything with resize_size, input_size, mean, std: ONNX metadata or the
        engine's ModelInfo) under the service's limits."""
        return cls(model.resize_size, model.input_size, tuple(model.mean), tuple(model.std), max_pixels, jpeg_draft)


def _sniff_other_image_format(data: bytes) -> str | None:
    for magic, name in _OTHER_FORMATS:
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"avif", b"avis"):
        return "HEIF/AVIF"
    if data.lstrip()[:5].lower() in (b"<svg ", b"<?xml"):
        return "SVG"
    return None


def open_checked(data: bytes, config: PreprocessConfig) -> Image.Image:
    """Bytes -> a PIL image whose header passed every check (format, size), no pixel decoded yet."""
    if not data:
        raise EmptyBody("the image is empty (0 bytes)")
    check_decode_work(data)  # before PIL: some of that work would start while it opens the file
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
    if image.format in ("JPEG", "MPO"):
        check_jpeg_scans(data, width, height)
    return image


# Peak memory of decoding one image, bytes per pixel of the decoded size, by the mode PIL decodes to:
# measured (resident set, sampled) through decode + upright + to_rgb + resize_crop on 10-megapixel
# images, the largest over the formats that decode to that mode, and ~10-20% over it: python
# scripts/measure_decode_memory.py prints both. WebP's decoder keeps a copy of its own beside PIL's.
_DECODE_BYTES_PER_PIXEL = {
    "1": 6,
    "L": 6,
    "P": 6,
    "RGB": 11,
    "YCbCr": 11,
    "CMYK": 10,
    "I;16": 8,
    "I;16B": 8,
    "I;16L": 8,
    "F": 10,
    "I": 10,
    "LA": 12,
    "La": 12,
    "PA": 12,
    "RGBA": 12,
    "RGBa": 12,
}
_TRANSPARENT_PALETTE_BYTES_PER_PIXEL = 8  # P with a transparent colour: composited on white in bands
_WEBP_EXTRA_BYTES_PER_PIXEL = 8
_UNKNOWN_BYTES_PER_PIXEL = 20  # a mode not measured: over every measured one


def open_for_decode(data: bytes, config: PreprocessConfig) -> Image.Image:
    """Bytes -> a PIL image whose header passed every check, set to decode at the size it will
    decode at (a large JPEG at reduced DCT size), no pixel decoded yet."""
    image = open_checked(data, config)
    if config.jpeg_draft and image.format in ("JPEG", "MPO"):
        width, height = image.size
        # Target keeps the shorter side >= DRAFT_MARGIN * resize_size; draft never goes below it.
        scale = DRAFT_MARGIN * config.resize_size / min(width, height)
        if scale < 1:
            try:
                image.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
            except (OSError, SyntaxError, ValueError) as exc:
                raise CorruptImage(f"truncated or corrupt image data ({exc})") from None
    return image


def decode_peak_bytes(image: Image.Image) -> int:
    """About the most memory ``decode_opened`` + ``transform_uint8`` take for ``image``, from its header."""
    width, height = image.size
    if image.mode == "P" and "transparency" in image.info:
        per_pixel = _TRANSPARENT_PALETTE_BYTES_PER_PIXEL
    else:
        per_pixel = _DECODE_BYTES_PER_PIXEL.get(image.mode, _UNKNOWN_BYTES_PER_PIXEL)
    if image.format == "WEBP":
        per_pixel += _WEBP_EXTRA_BYTES_PER_PIXEL
    return width * height * per_pixel


def decode_opened(image: Image.Image) -> Image.Image:
    """An image from ``open_for_decode`` -> upright RGB, or a typed 4xx error naming the problem."""
    try:
        image.load()  # decode now, inside the try, so truncation surfaces here
        turned = upright(image)
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImage(f"truncated or corrupt image data ({exc})") from None
    # Each step's input is freed once its output exists (close() drops the pixels, whoever else holds
    # the image), so a turned or converted image never sits beside two full-size copies of itself.
    if turned is not image:
        image.close()
    rgb = to_rgb(turned)
    if rgb is not turned:
        turned.close()
    return rgb


def decode(data: bytes, config: PreprocessConfig) -> Image.Image:
    """Bytes -> an upright RGB PIL image, or a typed 4xx error naming the problem."""
    return decode_opened(open_for_decode(data, config))


def transform_uint8(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """RGB PIL image -> (crop, crop, 3) uint8, C-contiguous: resized and center-cropped, not normalized."""
    return resize_crop_uint8(image, config.resize_size, config.crop_size)


def transform(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """RGB PIL image -> (3, crop, crop) float32, normalized with the config's mean and std."""
    return normalize(transform_uint8(image, config), config.mean, config.std)


def preprocess_uint8(data: bytes, config: PreprocessConfig) -> np.ndarray:
    """Image bytes -> (crop, crop, 3) uint8 RGB crop, C-contiguous; raises a ServiceError subclass on bad input."""
    return transform_uint8(decode(data, config), config)


def preprocess(data: bytes, config: PreprocessConfig) -> np.ndarray:
    """Image bytes -> (3, crop, crop) float32; raises a ServiceError subclass on bad input."""
    return normalize(preprocess_uint8(data, config), config.mean, config.std)


# The JPEG frames nvJPEG decodes: Huffman-coded DCT, baseline (SOF0), extended sequential (SOF1) and
# progressive (SOF2). Not lossless (SOF3), hierarchical (SOF5-7) or arithmetic-coded (SOF9-15) JPEGs,
# which PIL (libjpeg-turbo) decodes: those stay in the front ends, rather than going to the engine only
# to be declined there and come back (a round trip and a batch slot for nothing).
GPU_JPEG_FRAMES = frozenset({0xC0, 0xC1, 0xC2})


def inspect_jpeg(data: bytes, config: PreprocessConfig, max_gpu_pixels: int) -> int | None:
    """For the GPU path: the EXIF orientation (1-8) of a JPEG the GPU decoder can take, None for one it
    should not (CMYK or other modes nvJPEG's RGB output does not cover, frames other than
    ``GPU_JPEG_FRAMES``, over ``max_gpu_pixels``, a file cut short: nvJPEG's GPU decoders may fill in
    what is missing where PIL refuses it), or the same typed error ``decode`` would raise for a bad
    header. No pixel is decoded here."""
    image = open_checked(data, config)
    width, height = image.size
    if image.format != "JPEG" or image.mode not in ("RGB", "L") or width * height > max_gpu_pixels:
        return None
    header = read_jpeg_header(data)
    if header.frame not in GPU_JPEG_FRAMES or not ends_after_scan(data, header.scan):
        return None
    return exif_orientation(image)
