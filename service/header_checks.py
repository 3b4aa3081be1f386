"""Work an image's header asks of the decoder beyond its pixel count, refused before PIL sees it.

The pixel limit bounds the decoded image, but some small files make a decoder do far more than
their pixels need, and some of it happens while PIL merely opens the file, before any limit of ours
could run. Measured on the 2-core development host (see the closing notes of session 7):

- a progressive JPEG repeating one 59-byte scan 1,000 times (200 KB): 37 CPU-seconds, none of it
  cancellable; each scan walks the whole coefficient array again;
- a 20 MB TIFF of 10 million one-row strips: 3.1 GB and ~2 CPU-minutes (Pillow builds an object per
  strip while opening);
- a 256x256 TIFF declaring one 26752x26752 deflate tile: 2 GB per image (libtiff inflates the tile);
- an RLE-compressed BMP of 40 megapixels in 5 KB: 9 CPU-seconds in Pillow's pure-Python decoder.

So: at most ``MAX_JPEG_SCANS`` scans; at most ``MAX_TIFF_BLOCKS`` strips or tiles, and no tile larger
than twice its image a side; RLE BMPs up to ``MAX_RLE_BMP_PIXELS``. Each refusal is a 413 ``image_too_large`` that
says which. Real images are far inside these (a progressive photo has about 10 scans).
"""

from __future__ import annotations

import struct

from service.errors import ImageTooLarge

MAX_JPEG_SCANS = 100
MAX_TIFF_BLOCKS = 65_536
# A tile side may be up to twice its image's (a power-of-two tile over an image a little larger than
# the last), or this (writers use 256 or 512 tiles for small images).
TIFF_TILE_SLACK = 512
MAX_RLE_BMP_PIXELS = 2_000_000

_JPEG = b"\xff\xd8\xff"
_SOS = b"\xff\xda"  # a scan's start; entropy-coded data never holds it (an 0xFF there is followed by 0x00)
_TIFF_LE, _TIFF_BE = b"II", b"MM"
_TAG_WIDTH, _TAG_LENGTH = 256, 257
_TAG_STRIPS, _TAG_TILE_WIDTH, _TAG_TILE_LENGTH, _TAG_TILES = 273, 322, 323, 324
# TIFF field types whose single value sits in the entry: BYTE, SHORT, LONG, SSHORT, SLONG, LONG8.
_INTEGER_TYPES = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 16: "Q"}
_BMP_RLE = {1: "RLE8", 2: "RLE4"}


def check_decode_work(data: bytes) -> None:
    """Raise ImageTooLarge if ``data``'s header asks for more decoding work than its pixels justify."""
    if data.startswith(_JPEG):
        _check_jpeg(data)
    elif data[:2] in (_TIFF_LE, _TIFF_BE):
        _check_tiff(data)
    elif data.startswith(b"BM"):
        _check_bmp(data)


def _check_jpeg(data: bytes) -> None:
    # An upper bound (an EXIF thumbnail or a second picture of an MPO file adds its own scans), found
    # at memory speed: ~20 microseconds for a 100 KB photo.
    scans = data.count(_SOS)
    if scans > MAX_JPEG_SCANS:
        raise ImageTooLarge(f"the JPEG has {scans} scans; the limit is {MAX_JPEG_SCANS}")


def _check_tiff(data: bytes) -> None:
    """Strips, tiles and tile size of the first image (the one decoded); a header too short or odd to
    read is left to PIL, which refuses it with its own error."""
    order = "<" if data[:2] == _TIFF_LE else ">"
    try:
        (version,) = struct.unpack_from(order + "H", data, 2)
        if version == 42:  # classic TIFF: 4-byte offsets, 12-byte entries
            (ifd,) = struct.unpack_from(order + "I", data, 4)
            (entries,) = struct.unpack_from(order + "H", data, ifd)
            first, size, layout = ifd + 2, 12, order + "HHI4s"
        elif version == 43:  # BigTIFF: 8-byte offsets, 20-byte entries
            (ifd,) = struct.unpack_from(order + "Q", data, 8)
            (entries,) = struct.unpack_from(order + "Q", data, ifd)
            first, size, layout = ifd + 8, 20, order + "HHQ8s"
        else:
            return
        fields: dict[int, tuple[int, int, bytes]] = {}
        for k in range(min(entries, 4096)):
            tag, kind, count, value = struct.unpack_from(layout, data, first + k * size)
            fields[tag] = (kind, count, value)
    except struct.error:
        return

    def number(tag: int) -> int | None:
        if tag not in fields:
            return None
        kind, _, value = fields[tag]
        code = _INTEGER_TYPES.get(kind)
        try:
            return struct.unpack_from(order + code, value)[0] if code else None
        except struct.error:  # an 8-byte type in a classic TIFF's 4-byte field
            return None

    for tag, what in ((_TAG_STRIPS, "strips"), (_TAG_TILES, "tiles")):
        if tag in fields and fields[tag][1] > MAX_TIFF_BLOCKS:
            raise ImageTooLarge(f"the TIFF has {fields[tag][1]} {what}; the limit is {MAX_TIFF_BLOCKS}")
    width, length = number(_TAG_WIDTH), number(_TAG_LENGTH)
    tile_width, tile_length = number(_TAG_TILE_WIDTH), number(_TAG_TILE_LENGTH)
    if None in (width, length, tile_width, tile_length):
        return
    if tile_width > max(2 * width, TIFF_TILE_SLACK) or tile_length > max(2 * length, TIFF_TILE_SLACK):  # type: ignore[operator]
        raise ImageTooLarge(f"the TIFF's {tile_width}x{tile_length} tiles are larger than its {width}x{length} image")


def _check_bmp(data: bytes) -> None:
    try:
        header_size, width, height, _, _, compression = struct.unpack_from("<IiiHHI", data, 14)
    except struct.error:
        return
    if header_size < 40 or compression not in _BMP_RLE:
        return
    pixels = abs(width * height)
    if pixels > MAX_RLE_BMP_PIXELS:
        raise ImageTooLarge(
            f"the {_BMP_RLE[compression]} BMP is {abs(width)}x{abs(height)} = {pixels} pixels; run-length "
            f"encoded BMPs are decoded up to {MAX_RLE_BMP_PIXELS}"
        )
