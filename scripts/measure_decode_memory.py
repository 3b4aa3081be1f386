"""Peak memory of decoding one image, by the mode PIL decodes to, against the service's estimate.

    python scripts/measure_decode_memory.py [--megapixels 10]

Each format and mode is decoded in a fresh process (decode + to_rgb + resize + crop, as a front end
does); a thread samples the resident set every 0.5 ms, and the peak above the process's size before
decoding is divided by the image's pixels. ``preprocess.decode_peak_bytes`` (which the decode memory
budget charges) should be at or above every measured figure: rows where it is not say UNDER. Re-run
after a Pillow upgrade. A benchmark, not a test: it prints, and exits 1 only on an UNDER row.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import threading
import time

import numpy as np
from PIL import Image

_TURNED = Image.Exif()
_TURNED[0x0112] = 6  # EXIF orientation: rotate 90 degrees to display
# (name, PIL mode of the array, save format, save options)
CASES = [
    ("1-bit PNG", "1", "PNG", {}),
    ("L PNG", "L", "PNG", {}),
    ("P PNG", "P", "PNG", {}),
    ("P PNG, transparent colour", "P", "PNG", {"transparency": 0}),
    ("P GIF", "P", "GIF", {}),
    ("LA PNG", "LA", "PNG", {}),
    ("RGB PNG", "RGB", "PNG", {}),
    ("RGB WebP", "RGB", "WEBP", {}),
    ("RGB BMP", "RGB", "BMP", {}),
    ("RGB TIFF", "RGB", "TIFF", {}),
    ("RGB JPEG", "RGB", "JPEG", {}),
    ("RGB JPEG, EXIF-turned", "RGB", "JPEG", {"exif": _TURNED.tobytes()}),
    ("RGBA PNG", "RGBA", "PNG", {}),
    ("RGBA PNG, EXIF-turned", "RGBA", "PNG", {"exif": _TURNED.tobytes()}),
    ("RGBA WebP", "RGBA", "WEBP", {}),
    ("CMYK JPEG", "CMYK", "JPEG", {}),
    ("I;16 PNG", "I;16", "PNG", {}),
    ("I TIFF", "I", "TIFF", {}),
    ("F TIFF", "F", "TIFF", {}),
]


def make(mode: str, fmt: str, options: dict, width: int, height: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    ramp = (x + y).astype(np.int64)
    if mode == "1":
        image = Image.fromarray((ramp % 2).astype(bool))
    elif mode in ("L", "P"):
        image = Image.fromarray((ramp % 256).astype(np.uint8), "L")
        image = image.convert("P") if mode == "P" else image
    elif mode == "I;16":
        image = Image.fromarray((ramp % 65536).astype(np.uint16))
    elif mode == "I":
        image = Image.fromarray(ramp.astype(np.int32), "I")
    elif mode == "F":
        image = Image.fromarray(ramp.astype(np.float32), "F")
    else:
        bands = len(mode)
        image = Image.fromarray(np.stack([(ramp * (k + 1)) % 256 for k in range(bands)], -1).astype(np.uint8), mode)
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def measure_one(path: str) -> None:
    """In the child: decode ``path`` the way a front end does and print 'pixels peak_bytes estimate mode'."""
    from service.preprocess import PreprocessConfig, decode_opened, decode_peak_bytes, open_for_decode, transform_uint8

    with open(path, "rb") as file:
        data = file.read()
    config = PreprocessConfig()
    page = os.sysconf("SC_PAGE_SIZE")

    def resident() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * page

    image = open_for_decode(data, config)
    estimate, pixels, mode = decode_peak_bytes(image), image.size[0] * image.size[1], image.mode
    before = resident()
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    transform_uint8(decode_opened(image), config)
    done.set()
    sampler.join()
    print(pixels, peak[0] - before, estimate, mode)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        measure_one(sys.argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, default=10.0, help="size of each test image (default 10)")
    args = parser.parse_args()
    width = int((args.megapixels * 1e6 * 4 / 3) ** 0.5)
    height = int(width * 3 / 4)
    print(f"{width}x{height} images; bytes per pixel at the peak of decode + to_rgb + resize + crop")
    print(f"{'image':28s} {'decoded as':>10s} {'measured':>9s} {'estimate':>9s}")
    under = 0
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name, mode, fmt, options in CASES:
        path = f"/tmp/decode-memory-{os.getpid()}.img"
        with open(path, "wb") as out:
            out.write(make(mode, fmt, options, width, height))
        try:
            result = subprocess.run(
                [sys.executable, __file__, "--child", path], capture_output=True, text=True, check=True, cwd=root
            )
        finally:
            os.unlink(path)
        pixels, peak, estimate, decoded_as = result.stdout.split()
        measured, charged = int(peak) / int(pixels), int(estimate) / int(pixels)
        flag = "  UNDER" if charged < measured else ""
        under += bool(flag)
        print(f"{name:28s} {decoded_as:>10s} {measured:9.1f} {charged:9.1f}{flag}")
    return 1 if under else 0


if __name__ == "__main__":
    sys.exit(main())
