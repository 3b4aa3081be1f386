"""Headers that ask a decoder for far more work than their pixels are refused before that work is
done; real images of every format pass (the corpus test sends both kinds through HTTP)."""

from __future__ import annotations

import io
import random
import struct

import pytest
from PIL import Image

from service import header_checks
from service.errors import CorruptImage, ImageTooLarge
from service.header_checks import (
    MAX_JPEG_SCAN_PIXELS,
    MAX_JPEG_SCANS,
    MAX_TIFF_BLOCKS,
    MAX_TIFF_ENTRIES,
    JpegHeader,
    check_decode_work,
    check_jpeg_scans,
    ends_after_scan,
    read_jpeg_header,
)
from service.preprocess import PreprocessConfig, preprocess_uint8
from tests.conftest import make_image
from tests.corpus.make_nasty import bmp_rle8, jpeg_many_scans, tiff_many_strips, tiff_one_tile


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def big_endian_tiff_strips(strips: int) -> bytes:
    """Big-endian, every strip offset (LONG, stored after the directory) pointing at one 4-byte row."""
    values_at = 8 + 2 + 12 * 3 + 4
    tags = [(256, 4, 1, 4), (257, 4, 1, strips), (273, 4, strips, values_at)]
    ifd = struct.pack(">H", len(tags)) + b"".join(struct.pack(">HHII", *tag) for tag in tags)
    offsets = struct.pack(">I", values_at + 4 * strips) * strips
    return b"MM\x00*" + struct.pack(">I", 8) + ifd + struct.pack(">I", 0) + offsets + b"\x01\x02\x03\x04"


def bigtiff_tiles(width: int, height: int, tile: int, tiles: int = 1) -> bytes:
    """BigTIFF with LONG8 fields; the tile offsets stored after the directory when there are several."""
    values_at = 16 + 8 + 20 * 5 + 8
    tags = [(256, 16, 1, width), (257, 16, 1, height), (322, 16, 1, tile), (323, 16, 1, tile)]
    tags.append((324, 16, tiles, values_at if tiles > 1 else 0))
    ifd = struct.pack("<Q", len(tags)) + b"".join(struct.pack("<HHQQ", *tag) for tag in tags)
    return (
        b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + ifd + struct.pack("<Q", 0) + bytes(8 * tiles if tiles > 1 else 0)
    )


def classic_tiff_tile_sides(width: int, height: int, tile: int, kind: int = 16, duplicate: int | None = None) -> bytes:
    """Tile sides of type ``kind`` (LONG8: 8 bytes, wider than a classic TIFF's field, so stored where
    the entry points); with ``duplicate``, a second TileWidth/TileLength pair follows (Pillow keeps the first)."""
    pairs = 2 if duplicate is None else 4
    values_at = 8 + 2 + 12 * (2 + pairs) + 4
    fmt = {16: "<Q", 5: "<II"}[kind]
    tags = [(256, 4, 1, struct.pack("<I", width)), (257, 4, 1, struct.pack("<I", height)),
            (322, kind, 1, struct.pack("<I", values_at)), (323, kind, 1, struct.pack("<I", values_at + 8))]  # fmt: skip
    if duplicate is not None:
        tags += [(322, 4, 1, struct.pack("<I", duplicate)), (323, 4, 1, struct.pack("<I", duplicate))]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHI", t, k, c) + v for t, k, c, v in tags)
    values = (struct.pack(fmt, tile) if kind == 16 else struct.pack(fmt, tile, 1)) * 2
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + values


def padded_directory(entries: int) -> bytes:
    """A classic TIFF whose first directory holds ``entries`` private tags (Pillow reads every one)."""
    ifd = struct.pack("<H", entries) + b"".join(struct.pack("<HHIHH", 40000 + k, 3, 1, 1, 0) for k in range(entries))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)


@pytest.mark.parametrize(
    "data, words",
    [
        (tiff_many_strips(MAX_TIFF_BLOCKS + 1), "65537 strips"),
        (big_endian_tiff_strips(MAX_TIFF_BLOCKS + 1), "65537 strips"),
        (bigtiff_tiles(1000, 1000, 256, MAX_TIFF_BLOCKS + 1), "65537 tiles"),
        (tiff_one_tile(256, 256, 16384), "16384x16384 tiles are larger than its 256x256 image"),
        (bigtiff_tiles(300, 300, 8192), "8192x8192 tiles"),
        (classic_tiff_tile_sides(256, 256, 26752), "26752x26752 tiles"),
        (classic_tiff_tile_sides(256, 256, 26752, duplicate=256), "26752x26752 tiles"),
        (b"II\x00\x2a" + tiff_one_tile(256, 256, 16384)[4:], "16384x16384 tiles"),  # a prefix Pillow takes too
        (padded_directory(MAX_TIFF_ENTRIES + 1), "4097 entries; the limit is 4096"),
        (bmp_rle8(4000, 1100), "RLE8 BMP is 4000x1100"),
    ],
    ids=[
        "tiff-strips",
        "tiff-strips-big-endian",
        "bigtiff-tiles",
        "tiff-tile",
        "bigtiff-tile",
        "long8-tile",
        "duplicate-tile-tags",
        "odd-prefix",
        "long-directory",
        "bmp-rle",
    ],
)
def test_tiff_and_bmp_work_bombs_are_refused_before_pil_opens_them(data, words):
    with pytest.raises(ImageTooLarge, match=words):
        check_decode_work(data)
    with pytest.raises(ImageTooLarge):  # and the service's decoder asks before PIL does
        preprocess_uint8(data, PreprocessConfig())


def test_a_tiff_tile_side_that_is_not_an_integer_is_corrupt():
    with pytest.raises(CorruptImage, match="tag 322 is not an integer"):
        check_decode_work(classic_tiff_tile_sides(256, 256, 64, kind=5))  # RATIONAL: Pillow reads it


def test_jpeg_scans_are_bounded_in_number_and_in_pixels_x_scans():
    with pytest.raises(ImageTooLarge, match="scans; the limit is 100"):
        preprocess_uint8(jpeg_many_scans(MAX_JPEG_SCANS), PreprocessConfig())
    ten_scans = encoded(Image.new("RGB", (64, 48)), "JPEG", progressive=True)
    scans = ten_scans.count(b"\xff\xda")
    check_jpeg_scans(ten_scans, 6000, 6000)  # 36 MP progressive: fine
    with pytest.raises(ImageTooLarge, match="pixels x scans"):
        check_jpeg_scans(ten_scans, 6000, MAX_JPEG_SCAN_PIXELS // (6000 * scans) + 1)


def test_one_walk_of_a_jpeg_header_finds_its_frame_and_its_first_scan():
    """The frame (for the GPU route) and the first scan (for the scan count, the cut-short check and
    the event loop's bound) come from one walker, which steps over fill bytes and the markers that
    carry no length (TEM, RSTn) as libjpeg does."""
    data = make_image(64, 48)
    sos = data.index(b"\xff\xda")
    assert read_jpeg_header(data) == JpegHeader(sos, 0xC0)
    # A fill byte and a TEM marker (no length) before the first segment: both skipped.
    padded = data[:2] + b"\xff" + b"\xff\x01" + data[2:]
    assert read_jpeg_header(padded) == JpegHeader(sos + 3, 0xC0)
    # A header cut before its frame: neither; cut after the frame, before the scan: the frame only.
    assert read_jpeg_header(data[:20]) == JpegHeader(0, None)
    sof = data.index(b"\xff\xc0")
    after_frame = data[: sof + 4 + int.from_bytes(data[sof + 2 : sof + 4], "big")]
    assert read_jpeg_header(after_frame) == JpegHeader(0, 0xC0)
    assert read_jpeg_header(b"\xff\xd8\xff\xda\x00\x02").frame is None
    # A stray byte between two segments: not parsed (libjpeg skips it; the route stays the CPU's).
    stray = data[:sof] + b"\x00" + data[sof:]
    assert read_jpeg_header(stray).scan == 0
    # A step bound: PIL writes this JPEG's header in 8 segments.
    assert read_jpeg_header(data, 8).scan == sos and read_jpeg_header(data, 1).scan == 0
    assert ends_after_scan(data, sos) and not ends_after_scan(data[:-2], sos) and not ends_after_scan(data, 0)


def test_scan_markers_are_counted_as_bytes_count_counts_them_across_chunk_edges(monkeypatch):
    """The scan count's NumPy search finds what ``bytes.count`` finds, wherever the window starts and
    ends and wherever a chunk boundary splits a marker (chunks of 7 bytes here)."""
    monkeypatch.setattr(header_checks, "_COUNT_CHUNK", 7)
    rng = random.Random(7)
    for _ in range(2000):
        data = bytes(rng.choice((0xFF, 0xDA, 0x00, 0xD9)) for _ in range(rng.randrange(60)))
        start = rng.randrange(len(data) + 1)
        end = rng.randrange(start, len(data) + 1)
        assert header_checks._count_scans(data, start, end) == data.count(b"\xff\xda", start, end)


def test_scan_markers_in_metadata_before_the_first_scan_do_not_count():
    photo = Image.open(io.BytesIO(make_image(300, 200, seed=4)))
    noisy_icc = b"\xff\xda" * 5000  # 5000 SOS-looking byte pairs inside an ICC profile segment
    data = encoded(photo, "JPEG", icc_profile=noisy_icc)
    assert data.count(b"\xff\xda") > MAX_JPEG_SCANS
    assert preprocess_uint8(data, PreprocessConfig()).shape == (224, 224, 3)


def test_real_images_of_every_format_pass_and_decode():
    photo = Image.open(io.BytesIO(make_image(300, 200, seed=4)))
    decoded = [
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
        tiff_one_tile(200, 150, 256),  # a 256 tile over a smaller image, as writers make them
        tiff_one_tile(700, 600, 1024),  # a power-of-two tile a little larger than the image
    ]
    for data in decoded:
        assert preprocess_uint8(data, PreprocessConfig()).shape == (224, 224, 3)
    for data in (tiff_many_strips(MAX_TIFF_BLOCKS), bigtiff_tiles(1000, 1000, 2048), bmp_rle8(2560, 1600)):
        check_decode_work(data)  # at the limits, headers only


@pytest.mark.parametrize(
    "data",
    [b"II*\x00", b"II*\x00\xff\xff\xff\x7f", b"MM\x00+" + b"\x00" * 4, b"II\x07\x00" + b"\x00" * 20, b"BM\x00"],
)
def test_headers_too_short_or_odd_to_read_are_left_to_the_decoder(data):
    check_decode_work(data)  # no exception here: PIL refuses them with its own typed error


def test_scans_after_the_end_of_the_image_do_not_count_and_end_marker_bytes_inside_it_hide_none():
    photo = encoded(Image.new("RGB", (64, 48)), "JPEG", progressive=True)
    trailer = b"\xff\xda" * 500  # after the image's EOI: a trailer (a ZIP, say)
    assert preprocess_uint8(photo + trailer, PreprocessConfig()).shape == (224, 224, 3)
    bomb = jpeg_many_scans(MAX_JPEG_SCANS)
    with pytest.raises(ImageTooLarge):  # the scans inside the image still count
        preprocess_uint8(bomb + trailer, PreprocessConfig())
    # EOI bytes in a comment segment after the first scan, before the repeated ones: still counted
    sos = bomb.index(b"\xff\xda")
    scan_end = bomb.index(b"\xff", bomb.index(b"\xff\xda", sos + 2) - 1)
    comment = b"\xff\xfe\x00\x04\xff\xd9"
    hidden = bomb[:scan_end] + comment + bomb[scan_end:]
    with pytest.raises(ImageTooLarge):
        preprocess_uint8(hidden, PreprocessConfig())
