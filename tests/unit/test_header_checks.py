"""Headers that ask a decoder for far more work than their pixels are refused before PIL opens them;
real images of every format pass (the corpus test sends both kinds through HTTP)."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image

from service.errors import ImageTooLarge
from service.header_checks import MAX_JPEG_SCANS, MAX_RLE_BMP_PIXELS, MAX_TIFF_BLOCKS, check_decode_work
from service.preprocess import PreprocessConfig, preprocess_uint8
from tests.conftest import make_image
from tests.corpus.make_nasty import bmp_rle8, jpeg_many_scans, tiff_many_strips, tiff_one_tile


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def big_endian_tiff_strips(strips: int) -> bytes:
    tags = [(256, 4, 1, 4), (257, 4, 1, strips), (273, 4, strips, 200)]
    ifd = struct.pack(">H", len(tags)) + b"".join(struct.pack(">HHII", *tag) for tag in tags)
    return b"MM\x00*" + struct.pack(">I", 8) + ifd + struct.pack(">I", 0)


def bigtiff_tiles(width: int, height: int, tile: int, tiles: int = 1) -> bytes:
    tags = [(256, 16, 1, width), (257, 16, 1, height), (322, 16, 1, tile), (323, 16, 1, tile), (324, 16, tiles, 64)]
    ifd = struct.pack("<Q", len(tags)) + b"".join(struct.pack("<HHQQ", *tag) for tag in tags)
    return b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + ifd + struct.pack("<Q", 0)


@pytest.mark.parametrize(
    "data, words",
    [
        (jpeg_many_scans(MAX_JPEG_SCANS), "scans; the limit is 100"),
        (tiff_many_strips(MAX_TIFF_BLOCKS + 1), "65537 strips"),
        (big_endian_tiff_strips(MAX_TIFF_BLOCKS + 1), "65537 strips"),
        (bigtiff_tiles(1000, 1000, 256, MAX_TIFF_BLOCKS + 1), "65537 tiles"),
        (tiff_one_tile(256, 256, 16384), "16384x16384 tiles are larger than its 256x256 image"),
        (bigtiff_tiles(300, 300, 4096), "4096x4096 tiles"),
        (bmp_rle8(2000, 1001), "RLE8 BMP is 2000x1001"),
    ],
    ids=[
        "jpeg-scans",
        "tiff-strips",
        "tiff-strips-big-endian",
        "bigtiff-tiles",
        "tiff-tile",
        "bigtiff-tile",
        "bmp-rle",
    ],
)
def test_work_bombs_are_refused_from_the_header(data, words):
    with pytest.raises(ImageTooLarge, match=words):
        check_decode_work(data)
    with pytest.raises(ImageTooLarge):  # and the service's decoder asks before PIL does
        preprocess_uint8(data, PreprocessConfig())


def test_real_images_of_every_format_pass_and_decode():
    photo = Image.open(io.BytesIO(make_image(300, 200, seed=4)))
    files = [
        make_image(300, 200, seed=4),
        encoded(photo, "JPEG", progressive=True),
        encoded(photo, "JPEG", progressive=True, optimize=True, exif=Image.Exif().tobytes()),
        encoded(photo, "TIFF"),
        encoded(photo, "TIFF", compression="tiff_deflate"),
        encoded(photo, "TIFF", big_tiff=True),
        encoded(photo.convert("I;16"), "TIFF"),
        encoded(photo, "BMP"),
        encoded(photo, "PNG"),
        jpeg_many_scans(MAX_JPEG_SCANS - 20),  # a progressive JPEG has about 10 scans; 90 still pass
        tiff_many_strips(MAX_TIFF_BLOCKS),
        tiff_one_tile(200, 150, 256),  # a 256 tile over a smaller image, as writers make them
        tiff_one_tile(700, 600, 1024),  # a power-of-two tile a little larger than the image
        bmp_rle8(1000, 1000),
    ]
    for data in files:
        check_decode_work(data)
    for data in files[:9] + files[11:13]:
        assert preprocess_uint8(data, PreprocessConfig()).shape == (224, 224, 3)
    assert MAX_RLE_BMP_PIXELS >= 1000 * 1000


@pytest.mark.parametrize(
    "data",
    [
        b"II*\x00",
        b"II*\x00\xff\xff\xff\x7f",
        b"MM\x00+" + b"\x00" * 4,
        b"II\x07\x00" + b"\x00" * 20,
        b"BM\x00",
        b"\xff\xd8\xff",
    ],
)
def test_headers_too_short_or_odd_to_read_are_left_to_the_decoder(data):
    check_decode_work(data)  # no exception here: PIL refuses them with its own typed error
