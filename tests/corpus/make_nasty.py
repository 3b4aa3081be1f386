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
