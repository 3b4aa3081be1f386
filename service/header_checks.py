"""Work an image's header asks of the decoder beyond its pixel count, refused before it is done.

The pixel limit bounds the decoded image, but some small files make a decoder do far more than
their pixels need, and some of it happens while PIL merely opens the file, before any limit of ours
could run. Measured on the 2-core development host by a resource review (session 7):

- a progressive JPEG repeating one 59-byte scan 1,000 times (200 KB): 37 CPU-seconds, none of it
  cancellable; each scan walks the whole coefficient array again (~1 ns per pixel per scan);
- a 20 MB TIFF of 10 million one-row strips: 3.1 GB and ~2 CPU-minutes (Pillow builds an object per
  strip while opening);
- a 256x256 TIFF declaring one 26752x26752 deflate tile: 2 GB per image (libtiff inflates the tile);
- an RLE-compressed BMP of 40 megapixels in 5 KB: 9 CPU-seconds in Pillow's pure-Python decoder.

So, each a 413 ``image_too_large`` that says which limit: a JPEG of at most ``MAX_JPEG_SCANS`` scans
and ``MAX_JPEG_SCAN_PIXELS`` pixels x scans (``check_jpeg_scans``, once PIL has read its size: that
reads only the markers before the first scan); a TIFF of at most ``MAX_TIFF_BLOCKS`` strips or
tiles, no tile over ``MAX_TIFF_TILE_PIXELS`` unless the image is as large; RLE BMPs up to
``MAX_RLE_BMP_PIXELS`` (``check_decode_work``, before PIL opens the file). Real images are far
inside these: a progressive photo has about 10 scans.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from service.errors import CorruptImage, ImageTooLarge

MAX_JPEG_SCANS = 100
# ~0.4 CPU-seconds: 40 megapixels in 10 scans (a progressive photo), or 12 megapixels in 33.
MAX_JPEG_SCAN_PIXELS = 400_000_000
MAX_TIFF_BLOCKS = 65_536
MAX_TIFF_ENTRIES = 4096  # entries in the first directory (Pillow reads every one; real files have dozens)
# A tile may cover up to 4 times its image's area (a power-of-two tile over an image a little larger
# than the last), or this many pixels whatever the image (67 MB of RGBA: writers tile small images too).
MAX_TIFF_TILE_PIXELS = 4096 * 4096
# ~1 CPU-second in Pillow's Python decoder; 2560x1600 fits.
MAX_RLE_BMP_PIXELS = 4_200_000

# A scan's start and the image's end: entropy-coded data never holds a marker (an 0xFF there is followed by 0x00).
_SOS, _EOI = b"\xff\xda", b"\xff\xd9"
_COUNT_CHUNK = 1 << 20
_NOT_FRAMES = frozenset({0xC4, 0xC8, 0xCC})  # DHT, JPG (reserved), DAC: in the SOF range, not frames
_TIFF_LE = b"II"
# Pillow's TIFF header prefixes (TiffImagePlugin.PREFIXES), the odd ones included.
_TIFF_PREFIXES = (b"MM\x00\x2a", b"II\x2a\x00", b"MM\x2a\x00", b"II\x00\x2a", b"MM\x00\x2b", b"II\x2b\x00")
_TAG_WIDTH, _TAG_LENGTH = 256, 257
_TAG_STRIPS, _TAG_TILE_WIDTH, _TAG_TILE_LENGTH, _TAG_TILES = 273, 322, 323, 324
# The TIFF field types Pillow reads (bytes per value); it skips entries of any other type.
_PILLOW_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8}
# Of those, the integers: BYTE, SHORT, LONG, SBYTE, SSHORT, SLONG, IFD, LONG8.
_INTEGER_TYPES = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 13: "I", 16: "Q"}
_BMP_RLE = {1: "RLE8", 2: "RLE4"}


def check_decode_work(data: bytes) -> None:
    """Raise ImageTooLarge if ``data`` is a TIFF or BMP whose header asks for more decoding work than
    its pixels justify (checked before PIL opens the file, which for a TIFF already does some of it)."""
    if data[:4] in _TIFF_PREFIXES:
        _check_tiff(data)
    elif data.startswith(b"BM"):
        _check_bmp(data)


def check_jpeg_scans(data: bytes, width: int, height: int) -> None:
    """Raise ImageTooLarge if the JPEG ``data`` of ``width`` x ``height`` has too many scans for its size.

    Scans are counted from the first one to the last end-of-image marker: metadata before the first
    scan (an EXIF thumbnail, say) and a trailer after the image may hold any bytes. An upper bound:
    the segments between scans may hold marker bytes too (so the first EOI bytes found need not be
    the image's end), and the decoder stops at the image's end, which is at or before the last EOI
    bytes. ~10 microseconds for a 100 KB photo (``_count_scans``)."""
    first = read_jpeg_header(data).scan
    end = data.rfind(_EOI)
    scans = _count_scans(data, first, end if end > first else len(data))
    if scans > MAX_JPEG_SCANS:
        raise ImageTooLarge(f"the JPEG has {scans} scans; the limit is {MAX_JPEG_SCANS}")
    if scans * width * height > MAX_JPEG_SCAN_PIXELS:
        raise ImageTooLarge(
            f"the JPEG is {width}x{height} in {scans} scans; progressive JPEGs are decoded up to "
            f"{MAX_JPEG_SCAN_PIXELS:,} pixels x scans"
        )


def _count_scans(data: bytes, start: int, end: int) -> int:
    """``data.count(_SOS, start, end)``, in 1 MB chunks with NumPy: on Python 3.11 ``bytes.count`` of two
    bytes takes ~0.8 ns a byte (87 us for a 112 KB photo, 2-core AMD EPYC), this ~0.1, in a front
    end's event loop or decode thread. (The marker's two bytes differ: occurrences never overlap.)"""
    view = np.frombuffer(data, np.uint8)
    count = 0
    for at in range(start, end - 1, _COUNT_CHUNK):
        chunk = view[at : min(at + _COUNT_CHUNK + 1, end)]  # one byte over: a pair across two chunks counts once
        count += int(np.count_nonzero((chunk[:-1] == _SOS[0]) & (chunk[1:] == _SOS[1])))
    return count


def ends_after_scan(data: bytes, scan: int) -> bool:
    """Whether an end-of-image marker follows the first scan, at ``scan`` (``read_jpeg_header``). A
    file cut short (an upload that broke off) has none; an EXIF thumbnail's own, in the header before
    the scan, does not count. False too where the header did not parse (``scan`` 0)."""
    return 0 < scan < data.rfind(_EOI)


@dataclass(frozen=True, slots=True)
class JpegHeader:
    """What a JPEG's segments before its first scan say, read in one walk (``read_jpeg_header``)."""

    scan: int  # offset of the first scan's marker; 0 where the segments do not parse (or take too many steps)
    frame: int | None  # the first frame's start-of-frame marker (0xC0-0xCF), None where none came before


def read_jpeg_header(data: bytes, max_steps: int | None = None) -> JpegHeader:
    """Walk the segments before the first scan. The scan is 0 where they do not parse (a stray byte
    between two segments included, which libjpeg skips with a warning), or (with ``max_steps``) take
    more steps than that, a segment or a fill byte each; the frame is whatever came before."""
    at = 2  # after SOI
    steps = 0
    frame = None
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xDA:
            return JpegHeader(at, frame)
        steps += 1
        if max_steps is not None and steps > max_steps:
            break
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if frame is None and 0xC0 <= marker <= 0xCF and marker not in _NOT_FRAMES:
            frame = marker
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # no length
            at += 2
        else:
            at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return JpegHeader(0, frame)


def _check_tiff(data: bytes) -> None:
    """Strips, tiles and tile size of the first image (the one decoded), read as Pillow reads them
    (``TiffImagePlugin.ImageFileDirectory_v2``: its header prefixes, the first readable entry of a
    tag wins, entries of types it does not know are skipped); a header too short to read is left to
    PIL, which refuses it with its own error."""
    if data[:4] not in _TIFF_PREFIXES:
        return
    order = "<" if data[:2] == _TIFF_LE else ">"
    bigtiff = data[2] == 43  # as Pillow decides it
    offset, layout, count_code = (
        (order + "Q", order + "HHQ8s", order + "Q") if bigtiff else (order + "I", order + "HHI4s", order + "H")
    )
    try:
        (ifd,) = struct.unpack_from(offset, data, 8 if bigtiff else 4)
        (entries,) = struct.unpack_from(count_code, data, ifd)
    except struct.error:
        return
    first, size = ifd + struct.calcsize(count_code), struct.calcsize(layout)
    if first + entries * size > len(data):
        return  # a directory cut short: Pillow refuses the file
    if entries > MAX_TIFF_ENTRIES:
        raise ImageTooLarge(f"the TIFF's first directory has {entries} entries; the limit is {MAX_TIFF_ENTRIES}")
    fields: dict[int, tuple[int, int, bytes]] = {}  # tag -> (type, count, its values' bytes)
    for k in range(entries):
        tag, kind, count, value = struct.unpack_from(layout, data, first + k * size)
        if tag in fields or kind not in _PILLOW_TYPE_SIZES:
            continue
        nbytes = count * _PILLOW_TYPE_SIZES[kind]
        if nbytes == 0:
            continue  # no value: Pillow skips the entry
        if nbytes > len(value):  # stored where the entry points
            (at,) = struct.unpack_from(offset, value)
            value = data[at : at + nbytes]
            if len(value) != nbytes:
                continue  # past the end of the file: Pillow skips the entry
        fields[tag] = (kind, count, value[:nbytes])

    def number(tag: int) -> int | None:
        if tag not in fields:
            return None
        kind, _, value = fields[tag]
        code = _INTEGER_TYPES.get(kind)
        if code is None:
            raise CorruptImage(f"the TIFF's tag {tag} is not an integer (type {kind})")
        return struct.unpack_from(order + code, value)[0]

    for tag, what in ((_TAG_STRIPS, "strips"), (_TAG_TILES, "tiles")):
        if tag in fields and fields[tag][1] > MAX_TIFF_BLOCKS:
            raise ImageTooLarge(f"the TIFF has {fields[tag][1]} {what}; the limit is {MAX_TIFF_BLOCKS}")
    width, length = number(_TAG_WIDTH), number(_TAG_LENGTH)
    tile_width, tile_length = number(_TAG_TILE_WIDTH), number(_TAG_TILE_LENGTH)
    if tile_width is None and tile_length is None:
        return
    tile = abs(tile_width or 1) * abs(tile_length or 1)
    image = abs(width or 0) * abs(length or 0)
    if tile > max(4 * image, MAX_TIFF_TILE_PIXELS):
        raise ImageTooLarge(
            f"the TIFF's {tile_width}x{tile_length} tiles are larger than its {width}x{length} image allows"
        )


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
