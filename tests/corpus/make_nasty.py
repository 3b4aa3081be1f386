"""Writes the nasty-file corpus in tests/corpus/nasty/ (committed; run again to regenerate).

    python tests/corpus/make_nasty.py

Each file name says what it is; EXPECTED maps it to the status the service must answer.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).with_name("nasty")

# file -> HTTP status /classify must answer (never 500)
EXPECTED = {
    "zero_length.jpg": 400,
    "truncated.jpg": 400,
    "truncated.png": 400,
    "wrong_magic.png": 400,
    "text_named.jpg": 400,
    "svg.svg": 415,
    "heic_header.heic": 415,
    "psd_header.psd": 415,
    "huge_dims.png": 413,
    "huge_dims.jpg": 413,
    "huge_dims.gif": 413,
    "huge_dims.bmp": 413,
    "huge_dims.tiff": 413,
    "polyglot_jpeg_zip.jpg": 200,
    "polyglot_gif_html.gif": 200,
    "gray16.png": 200,
    "gray16.tiff": 200,
    "animated.gif": 200,
    "animated.webp": 200,
    "animated.png": 200,
    "exif_bad_orientation.jpg": 200,
    "exif_self_loop.jpg": 200,
    "exif_huge.jpg": 200,
    "cmyk_junk_icc.jpg": 200,
    "cmyk_adobe.jpg": 200,
    "palette_transparency.png": 200,
    "la.png": 200,
    "one_pixel.png": 200,
    "long_strip.png": 200,
    "ztxt_bomb.png": 400,
    "ico.ico": 415,
    # Small files that ask a decoder for far more work than their pixels (service/header_checks.py)
    "jpeg_many_scans.jpg": 413,
    "jpeg_progressive.jpg": 200,
    "tiff_many_strips.tiff": 413,
    "tiff_tile_larger_than_image.tiff": 413,
    "tiff_tiled.tiff": 200,
    "bmp_rle8_large.bmp": 413,
    "bmp_rle8_small.bmp": 200,
}


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _photo(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 100)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _tiff_header_only(width: int, height: int) -> bytes:
    # Grey 8-bit, one strip of 64 bytes that claims to hold width x height pixels.
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 4, 8 + 2 + 12 * 8 + 4), (278, 4, height), (279, 4, 64)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *tag[:2], 1, tag[2]) for tag in tags)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x80" * 64


def _jpeg_with_size(width: int, height: int) -> bytes:
    data = bytearray(_encode(_photo(16, 16), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _exif_self_loop() -> bytes:
    # TIFF header, IFD0 with one entry: ExifIFD pointer (0x8769) pointing back at IFD0.
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x8769, 4, 1, 8) + struct.pack("<I", 8)
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd


def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment; a scan's end includes its entropy-coded data."""
    i, out = 2, []
    while i < len(data):
        marker = data[i + 1]
        if marker == 0xD9:
            out.append((marker, i, i + 2))
            break
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        j = i + 2 + length
        if marker == 0xDA:
            while not (data[j] == 0xFF and data[j + 1] != 0x00 and not 0xD0 <= data[j + 1] <= 0xD7):
                j += 1
        out.append((marker, i, j))
        i = j
    return out


def jpeg_many_scans(repeats: int, width: int = 64, height: int = 48) -> bytes:
    """A progressive JPEG whose last scan comes ``repeats`` more times: each scan walks every block again."""
    data = _encode(Image.new("L", (width, height), 128), "JPEG", progressive=True)
    *_, (_, start, end) = (segment for segment in _jpeg_segments(data) if segment[0] == 0xDA)
    return data[:end] + data[start:end] * repeats + data[end:]


def _tiff(tags: list[tuple[int, int, int, int]], tail: bytes) -> bytes:
    """A little-endian TIFF: IFD0 of (tag, type, count, value or offset) entries at 8, then ``tail``."""
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHIHH", tag, kind, count, value, 0) if kind == 3 and count == 1
        else struct.pack("<HHII", tag, kind, count, value)
        for tag, kind, count, value in tags
    )
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + tail


def tiff_many_strips(strips: int, width: int = 4) -> bytes:
    """``width`` x ``strips`` grey, one row per strip, every strip offset pointing at the same row."""
    row_at = 8 + 2 + 12 * 9 + 4
    tags = [(256, 4, 1, width), (257, 4, 1, strips), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 3, strips, row_at + width), (277, 3, 1, 1), (278, 4, 1, 1), (279, 4, 1, width)]
    return _tiff(tags, bytes(range(1, width + 1)) + struct.pack("<H", row_at) * strips)


def tiff_one_tile(width: int, height: int, tile: int) -> bytes:
    """``width`` x ``height`` grey in one deflated ``tile`` x ``tile`` tile (of zeros)."""
    data = zlib.compress(bytes(tile * tile), 9) if tile <= 1024 else zlib.compress(b"\x00" * 64)
    data_at = 8 + 2 + 12 * 9 + 4
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1),
            (322, 4, 1, tile), (323, 4, 1, tile), (324, 4, 1, data_at), (325, 4, 1, len(data))]
    return _tiff(tags, data)


def bmp_rle8(width: int, height: int) -> bytes:
    """An RLE8 BMP whose every row is one pixel then end-of-line (Pillow pads the rest in Python)."""
    rows = b"\x01\x05\x00\x00" * height + b"\x00\x01"
    palette = b"".join(struct.pack("<BBBB", i, i, i, 0) for i in range(256))
    at = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(rows), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", at + len(rows), 0, 0, at) + info + palette + rows


def build() -> dict[str, bytes]:
    photo = _photo()
    jpeg = _encode(photo, "JPEG")
    png = _encode(photo, "PNG")
    files: dict[str, bytes] = {
        "zero_length.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "truncated.png": png[: len(png) // 2],
        "wrong_magic.png": b"\x89PNX" + png[4:],
        "text_named.jpg": b"this is not a JPEG\n" * 20,
        "heic_header.heic": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
        "psd_header.psd": b"8BPS\x00\x01" + b"\x00" * 6 + struct.pack(">HIIHH", 3, 100_000, 100_000, 8, 3),
        "svg.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
        "huge_dims.png": _png_header_only(100_000, 100_000),
        "huge_dims.jpg": _jpeg_with_size(65_000, 65_000),
        "huge_dims.gif": b"GIF89a" + struct.pack("<HH", 65535, 65535) + _encode(Image.new("P", (1, 1)), "GIF")[10:],
        "huge_dims.bmp": _encode(Image.new("RGB", (4, 4)), "BMP")[:18] + struct.pack("<ii", 60_000, 60_000)
        + _encode(Image.new("RGB", (4, 4)), "BMP")[26:],
        "huge_dims.tiff": _tiff_header_only(200_000, 200_000),
        "polyglot_jpeg_zip.jpg": jpeg + b"PK\x03\x04" + b"\x00" * 26 + b"payload.txt" + b"hello",
        "polyglot_gif_html.gif": _encode(photo.convert("P"), "GIF") + b"<html><script>alert(1)</script></html>",
        "gray16.png": _encode(Image.fromarray(np.linspace(0, 65535, 64 * 48, dtype=np.uint16).reshape(48, 64)), "PNG"),
        "gray16.tiff": _encode(Image.fromarray(np.linspace(0, 65535, 64 * 48, dtype=np.uint16).reshape(48, 64)), "TIFF"),
        "animated.gif": _encode(photo.convert("P"), "GIF", save_all=True, append_images=[_photo(seed=1).convert("P")]),
        "animated.webp": _encode(photo, "WEBP", save_all=True, append_images=[_photo(seed=1)]),
        "animated.png": _encode(photo, "PNG", save_all=True, append_images=[_photo(seed=1)]),
        "exif_bad_orientation.jpg": _encode(photo, "JPEG", exif=_exif_with_orientation(9)),
        "exif_self_loop.jpg": _encode(photo, "JPEG", exif=_exif_self_loop()),
        "exif_huge.jpg": _encode(photo, "JPEG", exif=b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8)
                                 + struct.pack("<H", 4000) + b"\x01" * 48_000),
        "cmyk_junk_icc.jpg": _encode(photo.convert("CMYK"), "JPEG", icc_profile=b"junk" * 200),
        "cmyk_adobe.jpg": _encode(photo.convert("CMYK"), "JPEG"),
        "palette_transparency.png": _encode(photo.convert("P"), "PNG", transparency=0),
        "la.png": _encode(photo.convert("LA"), "PNG"),
        "one_pixel.png": _encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"),
        "long_strip.png": _encode(Image.new("RGB", (1, 30_000), (9, 99, 199)), "PNG"),
        "ztxt_bomb.png": png[:33] + _png_chunk(b"zTXt", b"bomb\x00\x00" + zlib.compress(b"A" * 20_000_000, 9)) + png[33:],
        "ico.ico": _encode(Image.new("RGB", (16, 16)), "ICO"),
        "jpeg_many_scans.jpg": jpeg_many_scans(150),
        "jpeg_progressive.jpg": _encode(photo, "JPEG", progressive=True),
        "tiff_many_strips.tiff": tiff_many_strips(70_000),
        "tiff_tile_larger_than_image.tiff": tiff_one_tile(256, 256, 16384),
        "tiff_tiled.tiff": tiff_one_tile(200, 150, 256),
        "bmp_rle8_large.bmp": bmp_rle8(40_000, 1000),
        "bmp_rle8_small.bmp": bmp_rle8(100, 100),
    }
    assert set(files) == set(EXPECTED)
    return files


def _exif_with_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    total = 0
    for name, data in build().items():
        (OUT / name).write_bytes(data)
        total += len(data)
    print(f"wrote {len(EXPECTED)} files, {total / 1024:.0f} KiB, to {OUT}")
