"""What the engine's GPU JPEG path can take, without HTTP, for each GPU decoder (nvImageCodec with and
without its hardware decoder, and torchvision, all nvJPEG), with its chroma as the engine measures it
at start-up: the decode alone, then decode + EXIF + resize + crop
(``service.gpu_decode.JpegDecoder``) with images of one size resized in groups, and one by one.

    python -m loadtest.gpu_decode                              # CUDA, batches of 32 and 256, 3 s each
    python -m loadtest.gpu_decode --batch 64 --images 500x375 --seconds 5 --decoder nvimgcodec
    python -m loadtest.gpu_decode --decoder nvimgcodec --hardware-share 1,0.9,0.65   # hardware vs CUDA split
    python -m loadtest.gpu_decode --decoder nvimgcodec --cpu-threads 4,16 --fancy-upsampling 1,0
    python -m loadtest.gpu_decode --decoder nvimgcodec --pool-keep-mib 1024,0    # its CUDA pool kept or not

nvImageCodec's settings other than the engine's (``--hardware-share``, ``--cpu-threads``: its host
threads, ``--fancy-upsampling 0``: chroma repeated, which the engine never asks for,
``--pool-keep-mib``: what its CUDA memory pool keeps between batches) are each measured as a decoder
of its own, one setting changed at a time: whether its hardware decoder takes the images only when
not asked to interpolate chroma, whether its host threads are the bound, and what mapping its memory
again at every batch costs.

Each row runs its batch over and over, waiting for the GPU after each, and prints images per second,
the host CPU this thread spent per image (``time.thread_time``: in the engine that thread is the
batcher's prepare thread, which shares the process's GIL with the engine's event loop, so its CPU
per image bounds the service whatever the GPU does) and the CPU of the whole process per image
(``time.process_time``: with the decoder's own host threads, which parse and, in nvImageCodec's
hybrid backend, Huffman-decode; their sum over the wall time is the cores it kept busy).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable

import torch

from loadtest.corpus import build_corpus
from model.arg_types import at_least, comma_separated, one_of, positive_float, positive_fraction, positive_int
from model.host import cpu_model
from model.preprocessing import CROP_SIZE, RESIZE_SIZE
from service.decode_batch import DecodeBatch
from service.gpu_decode import (
    GROUP_MAX_BYTES,
    NVIMGCODEC_CPU_THREADS,
    POOL_KEEP_BYTES,
    JpegDecoder,
    decoder_factories,
    nvimgcodec_decoder,
    start_jpeg_decoder,
    wait_for_stream,
)


def measure(run: Callable[[], object], sync: Callable[[], None], seconds: float) -> tuple[int, float, float, float]:
    """(calls, wall seconds, this thread's CPU seconds, the process's CPU seconds) of ``run`` + ``sync``
    repeated for ``seconds``, after one call to warm up."""
    run()
    sync()
    # The process's clock read around the thread's: its span holds the thread's, as its time does.
    calls, wall0, process0, cpu0 = 0, time.perf_counter(), time.process_time(), time.thread_time()
    while True:
        run()
        sync()
        calls += 1
        wall = time.perf_counter() - wall0
        if wall >= seconds:
            cpu = time.thread_time() - cpu0
            return calls, wall, cpu, time.process_time() - process0


def rows(device: str, decode_batch: DecodeBatch, jpegs: list[bytes], batches: list[int], seconds: float) -> list[dict]:
    """One row per (batch size, path): images/s and host CPU us per image."""
    # Asleep while the GPU works, so the thread's CPU time is its own work (waits inside a decoder
    # still spin, and count).
    sync = wait_for_stream if device.startswith("cuda") else (lambda: None)
    out = []
    grouped = JpegDecoder(device, RESIZE_SIZE, CROP_SIZE, decode_batch, GROUP_MAX_BYTES)
    alone = JpegDecoder(device, RESIZE_SIZE, CROP_SIZE, decode_batch, 0)
    for size in batches:
        chosen = [bytearray(jpegs[i % len(jpegs)]) for i in range(size)]
        items = [(memoryview(data), 1) for data in chosen]
        tensors = [torch.frombuffer(data, dtype=torch.uint8) for data in chosen]
        paths = {
            "decode alone": functools.partial(decode_batch, tensors),
            "+ resize, crop: same-size groups": functools.partial(grouped.decode, items),
            "+ resize, crop: one by one": functools.partial(alone.decode, items),
        }
        for name, run in paths.items():
            calls, wall, cpu, process_cpu = measure(run, sync, seconds)
            images = calls * size
            out.append(
                {
                    "batch": size,
                    "path": name,
                    "img_per_s": images / wall,
                    "host_cpu_us_per_img": cpu / images * 1e6,
                    "process_cpu_us_per_img": process_cpu / images * 1e6,
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.gpu_decode",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cuda", help="where to decode (default: cuda)")
    parser.add_argument(
        "--batch",
        type=comma_separated(positive_int),
        default=[32, 256],
        help="batch sizes, comma-separated (default: 32,256)",
    )
    parser.add_argument(
        "--images", default="photos,500x375", help="corpus spec, as python -m loadtest's (default: photos,500x375)"
    )
    parser.add_argument("--seconds", type=positive_float, default=3.0, help="per row (default: 3)")
    names = list(decoder_factories())
    parser.add_argument(
        "--decoder",
        default=",".join(names),
        help=f"GPU decoders to measure, comma-separated, of {names} (default: all; one that does not load "
        "here is reported and skipped)",
    )
    parser.add_argument(
        "--hardware-share",
        type=comma_separated(positive_fraction),
        default=[1.0],
        help="for nvimgcodec: the fractions of each batch offered to the GPU's hardware JPEG decoder "
        "(the rest to nvJPEG's CUDA decoders), comma-separated, each measured as a decoder of its own "
        "(default: 1, the engine's: all of it)",
    )
    parser.add_argument(
        "--cpu-threads",
        type=comma_separated(positive_int),
        default=[NVIMGCODEC_CPU_THREADS],
        help="for nvimgcodec: its host threads, comma-separated, each measured as a decoder of its own "
        f"(default: {NVIMGCODEC_CPU_THREADS}, the engine's)",
    )
    parser.add_argument(
        "--fancy-upsampling",
        type=comma_separated(one_of(int, (0, 1))),
        default=[1],
        help="for nvimgcodec: 1 (interpolated chroma, the engine's) and/or 0 (repeated: would its hardware "
        "decoder take more?), comma-separated (default: 1)",
    )
    parser.add_argument(
        "--pool-keep-mib",
        type=comma_separated(at_least(int, 0)),
        default=[POOL_KEEP_BYTES >> 20],
        help="for nvimgcodec: MiB its CUDA memory pool keeps between batches (0: it hands all back at each "
        f"batch, CUDA's default), comma-separated (default: {POOL_KEEP_BYTES >> 20}, the engine's)",
    )
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA GPU is visible to PyTorch here; --device cpu measures the decoders' CPU paths")
    chosen = [name.strip() for name in args.decoder.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in names]
    if unknown or not chosen:
        parser.error(f"--decoder: {unknown or 'none given'}; choose from {names}")
    shares, threads, fancy, keep = args.hardware_share, args.cpu_threads, args.fancy_upsampling, args.pool_keep_mib
    # nvImageCodec's settings other than the engine's, one at a time: (label, nvimgcodec_decoder's keyword, value)
    variants = [(f"hardware share {v:g}", "hardware_share", v) for v in shares if v != 1.0]
    variants += [(f"{v} CPU threads", "cpu_threads", v) for v in threads if v != NVIMGCODEC_CPU_THREADS]
    variants += [("chroma repeated (fancy_upsampling=0)", "fancy_upsampling", False) for v in fancy if v == 0]
    variants += [(f"pool keeps {v} MiB", "pool_keep_bytes", v << 20) for v in keep if v << 20 != POOL_KEEP_BYTES]
    if variants and "nvimgcodec" not in chosen:
        parser.error(
            "--hardware-share, --cpu-threads, --fancy-upsampling and --pool-keep-mib set nvimgcodec, which "
            "--decoder leaves out"
        )
    # (label, factories to start it from: None = the engine's own) for each decoder measured
    runs: list[tuple[str, dict | None]] = []
    engines = 1.0 in shares and NVIMGCODEC_CPU_THREADS in threads and 1 in fancy and POOL_KEEP_BYTES >> 20 in keep
    for name in chosen:
        if name != "nvimgcodec" or engines:
            runs.append((name, None))
        if name == "nvimgcodec":
            for what, keyword, value in variants:
                label = f"nvimgcodec, {what}"
                runs.append((label, {label: functools.partial(nvimgcodec_decoder, **{keyword: value})}))
    corpus = build_corpus(args.images)
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "no GPU"
    print(f"host: {cpu_model()}, {gpu}; images: {', '.join(f'{c.width}x{c.height}' for c in corpus)}")
    measured = 0
    for name, factories in runs:
        try:  # as the engine starts it: a decoder that loads but cannot decode (no nvJPEG) is refused
            decoder = start_jpeg_decoder(args.device, RESIZE_SIZE, CROP_SIZE, [name], factories)[0]
        except RuntimeError as exc:
            print(f"{name}: not measured, {exc}")
            continue
        print(
            f"{name} ({decoder.chroma}):\n{'batch':>5}  {'path':<34} {'img/s':>9} {'host CPU us/img':>16} "
            f"{'process CPU us/img':>19}"
        )
        for row in rows(args.device, decoder.decode_batch, [c.data for c in corpus], args.batch, args.seconds):
            print(
                f"{row['batch']:>5}  {row['path']:<34} {row['img_per_s']:>9.0f} {row['host_cpu_us_per_img']:>16.1f} "
                f"{row['process_cpu_us_per_img']:>19.1f}"
            )
        measured += 1
    if not measured:
        print("error: no decoder could be measured", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
