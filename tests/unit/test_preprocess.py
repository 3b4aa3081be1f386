"""Preprocessing: torchvision's ImageNet eval preset, defensive decoding, every mode to RGB, the uint8 hand-off."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import model.preprocessing as preprocessing
import service.preprocess as service_preprocess
from model.preprocessing import normalize, normalize_batch, resized_size, upright
from service.errors import CorruptImage, EmptyBody, ImageTooLarge, NotAnImage, UnsupportedImageFormat
from service.header_checks import read_jpeg_header
from service.preprocess import (
    PreprocessConfig,
    decode,
    decode_opened,
    decode_peak_bytes,
    inspect_jpeg,
    open_for_decode,
    preprocess,
    preprocess_uint8,
    transform,
)
from tests.conftest import make_image, require_or_skip
from tests.torchvision_modules import import_torchvision

CONFIG = PreprocessConfig(jpeg_draft=False)
MEAN = np.array(CONFIG.mean, dtype=np.float32)[:, None, None]
STD = np.array(CONFIG.std, dtype=np.float32)[:, None, None]


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "size, expected",
    [
        ((500, 375), (341, 256)),
        ((375, 500), (256, 341)),
        ((256, 256), (256, 256)),
        ((4032, 3024), (341, 256)),
        ((1000, 257), (996, 256)),
    ],
)
def test_resized_size_truncates_the_long_side_like_torchvision(size, expected):
    assert resized_size(*size, 256) == expected


def test_output_shape_dtype_and_uniform_colour_values():
    image = Image.new("RGB", (500, 375), (10, 128, 250))
    x = transform(image, CONFIG)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    expected = (np.array([10, 128, 250], dtype=np.float32)[:, None, None] / 255 - MEAN) / STD
    np.testing.assert_allclose(x, np.broadcast_to(expected, x.shape), rtol=0, atol=1e-6)


def test_center_crop_takes_the_middle():
    # A 500x375 image resizes to 341x256; the crop starts at column round(117 / 2) = 58 (rounds half to even).
    image = Image.new("RGB", (341, 256), (0, 0, 0))
    pixels = np.zeros((256, 341, 3), np.uint8)
    pixels[:, 58:282] = 255  # exactly the 224 columns the crop should keep
    image = Image.fromarray(pixels)
    x = transform(image, CONFIG)
    white = (1.0 - MEAN) / STD
    np.testing.assert_allclose(x, np.broadcast_to(white, x.shape), atol=1e-6)


def test_matches_an_independent_torch_resize_within_interpolation_noise():
    """torch's antialiased bilinear (torchvision's tensor path) differs from PIL only by rounding."""
    image = Image.open(io.BytesIO(make_image(500, 375, seed=3))).convert("RGB")
    ours = transform(image, CONFIG)
    t = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    resized = F.interpolate(t, size=(256, 341), mode="bilinear", antialias=True, align_corners=False)
    crop = resized[0, :, 16:240, 58:282].clamp(0, 255).round() / 255
    reference = ((crop - torch.tensor(MEAN)) / torch.tensor(STD)).numpy()
    assert np.abs(ours - reference).mean() < 0.01  # 0.01 in normalized units is ~0.6/255 of a pixel
    assert np.abs(ours - reference).max() < 0.1


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (500, 375), (257, 256), (256, 1000), (224, 224), (97, 1500)])
def test_matches_torchvision_exactly_where_it_is_installed(size):
    """torchvision's own AlexNet preset on the same PIL image. Runs in CI: `make install` puts the
    torchvision wheel's pure-Python files beside our CPU torch (tests/torchvision_modules.py)."""
    try:
        models = import_torchvision("models")
    except ImportError as exc:
        require_or_skip(False, f"torchvision's presets are not importable here ({exc})")
    preset = models.AlexNet_Weights.IMAGENET1K_V1.transforms()
    assert (preset.resize_size, preset.crop_size) == ([CONFIG.resize_size], [CONFIG.crop_size])
    assert (tuple(preset.mean), tuple(preset.std)) == (CONFIG.mean, CONFIG.std)
    image = Image.open(io.BytesIO(make_image(*size, seed=4))).convert("RGB")
    reference = preset(image).numpy()
    np.testing.assert_allclose(transform(image, CONFIG), reference, rtol=0, atol=1e-6)
    # The uint8 crop before normalisation is torchvision's exactly: same pixels, not only close floats.
    tv_functional = import_torchvision("transforms.functional")
    tv_crop = tv_functional.center_crop(tv_functional.resize(image, [256]), [224])
    np.testing.assert_array_equal(preprocess_uint8(make_image(*size, seed=4), CONFIG), np.asarray(tv_crop))


def test_jpeg_draft_decoding_stays_close_to_a_full_decode():
    data = make_image(2000, 1500, seed=5)
    full = preprocess(data, CONFIG)
    draft = preprocess(data, PreprocessConfig(jpeg_draft=True))
    assert np.abs(full - draft).mean() < 0.02  # normalized units: ~1/255 of a pixel on average


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_supported_format_decodes_to_rgb(fmt):
    data = make_image(120, 90, seed=1, fmt=fmt)
    image = decode(data, CONFIG)
    assert image.mode == "RGB" and image.size == (120, 90)


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16", "1"])
def test_every_mode_becomes_rgb(mode):
    base = Image.open(io.BytesIO(make_image(64, 48, seed=2, fmt="PNG")))
    image = base.convert("L").convert("I;16") if mode == "I;16" else base.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    out = decode(encode(image, fmt), CONFIG)
    assert out.mode == "RGB" and out.size == (64, 48)


def test_sixteen_bit_grey_keeps_its_range_instead_of_clipping_white():
    grey16 = Image.fromarray(np.full((32, 32), 32768, dtype=np.uint16))
    out = np.asarray(decode(encode(grey16, "PNG"), CONFIG))
    assert 120 <= out.mean() <= 135


def test_transparent_pixels_are_shown_over_white():
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    out = np.asarray(decode(encode(rgba, "PNG"), CONFIG))
    assert (out == 255).all()


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (60, 30), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode(encode(image, "JPEG", exif=exif.tobytes()), CONFIG)
    assert out.size == (30, 60)


def test_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    out = np.asarray(decode(buffer.getvalue(), CONFIG))
    assert out[..., 0].mean() > 200 and out[..., 2].mean() < 50


@pytest.mark.parametrize(
    "data, error",
    [
        (b"", EmptyBody),
        (b"hello, this is not an image", NotAnImage),
        (make_image(200, 150)[:600], CorruptImage),
        (encode(Image.new("RGB", (8, 8)), "ICO"), UnsupportedImageFormat),
    ],
    ids=["empty", "text", "truncated-jpeg", "ico"],
)
def test_bad_input_gets_a_typed_error(data, error):
    with pytest.raises(error):
        preprocess(data, CONFIG)


def test_pixel_limit_is_checked_before_decoding():
    # A 20000x20000 PNG of one colour compresses to a few hundred KB but would decode to 1.2 GB.
    big = encode(Image.new("L", (20000, 20000)), "PNG", optimize=False)
    with pytest.raises(ImageTooLarge, match="20000x20000"):
        decode(big, PreprocessConfig(max_pixels=10_000_000))


@pytest.mark.parametrize("size", [(1, 40000), (40000, 1), (3, 9000)])
def test_extreme_aspect_ratios_are_cropped_before_resizing(size):
    """A 1x40000 image would resize to 256x10240000 (2.6 G pixels); only the crop region is resized."""
    image = Image.new("RGB", size, (200, 100, 50))
    x = transform(image, CONFIG)
    expected = (np.array([200, 100, 50], dtype=np.float32)[:, None, None] / 255 - MEAN) / STD
    np.testing.assert_allclose(x, np.broadcast_to(expected, x.shape), atol=1e-6)


def test_the_cropped_resize_path_stays_within_one_level_of_the_full_resize(monkeypatch):
    import model.preprocessing as preprocessing

    image = Image.open(io.BytesIO(make_image(500, 375, seed=9))).convert("RGB")
    full = transform(image, CONFIG)
    monkeypatch.setattr(preprocessing, "MAX_RESIZED_SIDE", 0)
    cropped = transform(image, CONFIG)
    assert np.abs(full - cropped).max() <= 1.01 / 255 / min(CONFIG.std)


def test_formats_we_do_not_serve_are_never_parsed():
    """PIL knows PPM, but only our six parsers see the bytes: PPM is 'not an image' here."""
    with pytest.raises(NotAnImage):
        decode(encode(Image.new("RGB", (8, 8)), "PPM"), CONFIG)
    with pytest.raises(UnsupportedImageFormat, match="SVG"):
        decode(b'<svg xmlns="http://www.w3.org/2000/svg"/>', CONFIG)


def _legacy_float_path(image: Image.Image) -> np.ndarray:
    """The float arithmetic preprocess() did before the uint8 hand-off existed, on an already cropped image."""
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    mean, std = np.asarray(CONFIG.mean, np.float32), np.asarray(CONFIG.std, np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


@pytest.mark.parametrize(
    "width, height, fmt, mode",
    [
        (500, 375, "JPEG", "RGB"),
        (375, 500, "PNG", "RGB"),
        (31, 977, "PNG", "L"),
        (2000, 1500, "JPEG", "RGB"),
        (1, 1, "PNG", "RGB"),
    ],
)
def test_the_uint8_crop_normalized_is_the_float_path_bit_for_bit(width, height, fmt, mode):
    data = make_image(width, height, seed=width, fmt=fmt, mode=mode)
    for config in (CONFIG, PreprocessConfig()):  # full decode, and JPEG draft decode as served
        crop = preprocess_uint8(data, config)
        assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
        assert crop.flags["C_CONTIGUOUS"] and crop.flags["WRITEABLE"]
        floats = preprocess(data, config)
        assert floats.shape == (3, 224, 224) and floats.dtype == np.float32 and floats.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(floats, _legacy_float_path(Image.fromarray(crop)))
        np.testing.assert_array_equal(floats, normalize(crop))


def test_normalize_batch_is_the_per_image_path_and_fills_a_preallocated_batch():
    crops = np.random.default_rng(0).integers(0, 256, size=(5, 224, 224, 3), dtype=np.uint8)
    expected = np.stack([_legacy_float_path(Image.fromarray(c)) for c in crops])
    np.testing.assert_array_equal(normalize_batch(crops), expected)
    buffer = np.full((8, 3, 224, 224), np.nan, np.float32)  # e.g. a padded batch: fill the first rows
    assert normalize_batch(crops, out=buffer[:5]).base is buffer
    np.testing.assert_array_equal(buffer[:5], expected)
    assert np.isnan(buffer[5:]).all()
    other = normalize_batch(crops[:1], mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    np.testing.assert_allclose(other[0], (crops[0].transpose(2, 0, 1) / 255 - 0.5) / 0.25, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        normalize_batch(crops.astype(np.float32))
    with pytest.raises(ValueError, match="out must be"):
        normalize_batch(crops, out=np.empty((5, 3, 224, 224), np.float64))


def test_the_decode_memory_estimate_follows_the_decoded_size_and_mode():
    """What the decode budget charges (scripts/measure_decode_memory.py holds the figures to the
    measured peaks): the size after JPEG draft reduction, more bytes per pixel with alpha or 16 bits."""
    served = PreprocessConfig()
    big_jpeg = open_for_decode(make_image(4000, 3000, seed=1), served)
    assert big_jpeg.size == (1000, 750)  # drafted at 1/4: the shorter side stays >= 2 x 256
    assert decode_peak_bytes(big_jpeg) == 1000 * 750 * 11
    full = open_for_decode(make_image(4000, 3000, seed=1), CONFIG)  # draft off: charged in full
    assert decode_peak_bytes(full) == 4000 * 3000 * 11
    per_pixel = {}
    for mode, fmt in (("L", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"), ("I;16", "PNG"), ("RGBA", "WEBP")):
        out = io.BytesIO()
        Image.new(mode, (100, 50)).save(out, fmt)
        per_pixel[mode, fmt] = decode_peak_bytes(open_for_decode(out.getvalue(), served)) / 5000
    assert per_pixel == {
        ("L", "PNG"): 6,
        ("RGB", "PNG"): 11,
        ("RGBA", "PNG"): 12,
        ("LA", "PNG"): 12,
        ("I;16", "PNG"): 8,
        ("RGBA", "WEBP"): 20,  # WebP's decoder holds a copy of its own
    }
    out = io.BytesIO()
    Image.new("P", (100, 50)).save(out, "PNG", transparency=0)
    assert decode_peak_bytes(open_for_decode(out.getvalue(), served)) == 5000 * 8


def _to_rgb_whole(image: Image.Image) -> Image.Image:
    """The conversion as it was before it ran in bands: the reference ``to_rgb`` must equal exactly."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        wide = np.asarray(image, dtype=np.uint32 if image.mode != "I" else np.int64)
        peak = 65535 if image.mode != "I" else max(int(wide.max()), 1)
        image = Image.fromarray((np.clip(wide, 0, peak) * 255 // peak).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def _modes_image(mode: str, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(7)
    if mode == "I":  # negative values and a maximum in the last rows only: the scale is the whole image's
        values = rng.integers(-5000, 70000, (height, width), dtype=np.int32)
        values[-1, -1] = 2_000_000
        return Image.fromarray(values, "I")
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    if mode.startswith("P"):
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).quantize(64)
        if mode == "P+transparency":
            image.info["transparency"] = 5
        elif mode == "P+alpha-table":
            image.info["transparency"] = bytes(range(0, 256, 4))
        return image
    bands = len(Image.getmodebands(mode) * "x")
    return Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8)[..., :bands].copy().squeeze(), mode)


@pytest.mark.parametrize(
    "mode", ["RGBA", "LA", "RGBa", "PA", "P+transparency", "P+alpha-table", "P", "I;16", "I", "CMYK", "L"]
)
def test_to_rgb_in_bands_equals_converting_the_whole_image(mode, monkeypatch):
    width, height = 37, 29
    if mode == "PA":
        image = _modes_image("P+transparency", width, height).convert("PA")
    else:
        image = _modes_image(mode, width, height)
    monkeypatch.setattr(preprocessing, "_BAND_PIXELS", 5 * width + 3)  # 5 rows a band, the last one shorter
    out = preprocessing.to_rgb(image)
    assert out.mode == "RGB" and out.size == (width, height)
    assert np.array_equal(np.asarray(out), np.asarray(_to_rgb_whole(image)))


def test_decoding_frees_each_full_size_step_once_the_next_exists(monkeypatch):
    """An EXIF-turned RGBA image: the decoded pixels and the turned copy are closed as soon as they are
    used, so at most two full-size images are alive at once (scripts/measure_decode_memory.py measures it)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    opened = open_for_decode(encode(Image.new("RGBA", (40, 30), (10, 20, 30, 0)), "PNG", exif=exif.tobytes()), CONFIG)
    turned: list[Image.Image] = []
    monkeypatch.setattr(service_preprocess, "upright", lambda image: turned.append(upright(image)) or turned[-1])
    out = decode_opened(opened)
    assert out.size == (30, 40) and np.asarray(out).min() == 255
    for closed in (opened, turned[0]):
        with pytest.raises(ValueError, match="closed image"):
            closed.getpixel((0, 0))


def _frame_as(data: bytes, marker: int) -> bytes:
    """``data`` (a JPEG PIL wrote) with its frame header's marker changed: the header only, for routing."""
    sof = data.index(b"\xff\xc0") if b"\xff\xc0" in data else data.index(b"\xff\xc2")
    return data[:sof] + bytes([0xFF, marker]) + data[sof + 2 :]


def test_the_gpu_route_takes_huffman_coded_dct_jpegs_only():
    """nvJPEG decodes baseline, extended and progressive Huffman JPEGs; lossless and arithmetic-coded
    ones (which PIL decodes) stay with the front end's CPU decoder."""
    config = PreprocessConfig()
    baseline = make_image(64, 48)
    out = io.BytesIO()
    Image.open(io.BytesIO(baseline)).save(out, "JPEG", progressive=True)
    progressive = out.getvalue()
    assert read_jpeg_header(baseline).frame == 0xC0 and read_jpeg_header(progressive).frame == 0xC2
    assert inspect_jpeg(baseline, config, 10**8) == 1 and inspect_jpeg(progressive, config, 10**8) == 1
    for marker in (0xC1, 0xC2):
        assert inspect_jpeg(_frame_as(baseline, marker), config, 10**8) == 1
    for marker in (0xC3, 0xC9, 0xCA, 0xCB):  # lossless; arithmetic-coded sequential, progressive, lossless
        assert read_jpeg_header(_frame_as(baseline, marker)).frame == marker
        assert inspect_jpeg(_frame_as(baseline, marker), config, 10**8) is None


def test_a_jpeg_cut_short_stays_with_the_cpu_path_which_refuses_it_as_corrupt():
    """nvJPEG's GPU decoders may fill in a file cut short where PIL refuses it (400 corrupt_image): a
    JPEG with no end-of-image marker after its first scan is not for the GPU, even where one sits in
    its header (an EXIF thumbnail's)."""
    config = PreprocessConfig()
    photo = make_image(320, 240, seed=3)
    thumbnail_eoi = photo[:2] + b"\xff\xe1\x00\x08Exif\xff\xd9" + photo[2:]  # an APP1 holding EOI bytes
    for whole in (photo, thumbnail_eoi):
        assert inspect_jpeg(whole, config, 10**8) == 1
        cut = whole[: len(whole) * 2 // 3]
        assert inspect_jpeg(cut, config, 10**8) is None
        with pytest.raises(CorruptImage):
            preprocess_uint8(cut, config)
