"""Training throughput in images/s: the model alone on random tensors already on the device (the
ceiling), and through the full JPEG pipeline (decode, crop, flip in workers; copy; lighting; step),
for each precision and memory format.

    python -m model.bench_train                                      # GPU: batch 128, 224 px, defaults below
    python -m model.bench_train --data-path /data/imagenet --workers 16
    python -m model.bench_train --device cpu --batch-size 16 --image-size 64 --resize-size 72 \
        --steps 3 --warmup 1 --precisions fp32 bf16 --synthetic-images 64 --workers 2   # tiny CPU run

Without --data-path the JPEG rows read a synthetic set (python -m model.synthetic) written to a
temporary directory. Each row is a full SGD step (forward, backward, update) with the training recipe's
optimizer; timings wait for the device (cuda.synchronize) before the clock is read.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from model.alexnet import ARCHS, arch_spec, build
from model.data import ImageFolder
from model.engine import PRECISIONS, autocast, optimizer_step
from model.help_format import DefaultsHelpFormatter
from model.host import cpu_model
from model.synthetic import generate
from model.transforms import LIGHTING_STD, BatchPreprocess, TrainTransform

MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {cpu_model()}, {torch.get_num_threads()} threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Row:
    source: str
    precision: str
    memory_format: str
    batch_size: int
    images_per_s: float
    ms_per_step: float


def _tensor_batches(
    args: argparse.Namespace, device: torch.device, fmt: torch.memory_format, classes: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, classes, (args.batch_size,), device=device)
    while True:
        yield x, y


def _jpeg_batches(
    loader: DataLoader, device: torch.device, preprocess: BatchPreprocess
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for images, target in loader:
        yield preprocess(images.to(device, non_blocking=True), True), target.to(device, non_blocking=True)


def bench_one(
    args: argparse.Namespace,
    device: torch.device,
    source: str,
    precision: str,
    fmt_name: str,
    dataset: ImageFolder | None,
) -> Row:
    """Time ``args.steps`` training steps after ``args.warmup`` untimed ones."""
    fmt = MEMORY_FORMATS[fmt_name]
    classes = len(dataset.classes) if dataset is not None else 1000
    torch.manual_seed(0)
    model = build(args.arch, num_classes=classes).to(device).to(memory_format=fmt).train()  # type: ignore[call-overload]
    if args.compile:
        model = torch.compile(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    criterion = nn.CrossEntropyLoss()
    if source == "tensors":
        batches = _tensor_batches(args, device, fmt, classes)
    else:
        assert dataset is not None, "the JPEG rows need a dataset"
        sampler = RandomSampler(dataset, replacement=True, num_samples=(args.warmup + args.steps) * args.batch_size)
        loader = DataLoader(
            dataset,
            batch_size=args.batch_size,
            sampler=sampler,
            num_workers=args.workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
            prefetch_factor=4 if args.workers else None,
        )
        batches = _jpeg_batches(loader, device, BatchPreprocess(LIGHTING_STD, fmt_name == "channels_last"))

    def step() -> None:
        images, target = next(batches)
        with autocast(device, precision):
            loss = criterion(model(images), target)
        optimizer_step(loss, optimizer, scaler)

    for _ in range(args.warmup):  # includes worker start-up, cuDNN autotuning and compilation
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    seconds = time.perf_counter() - start
    return Row(
        source,
        precision,
        fmt_name,
        args.batch_size,
        args.steps * args.batch_size / seconds,
        1000 * seconds / args.steps,
    )


def format_table(rows: list[Row], title: str) -> str:
    header = f"{'source':<8} {'precision':<9} {'memory format':<14} {'batch':>5} {'img/s':>10} {'ms/step':>9}"
    lines = [title, header, "-" * len(header)]
    lines += [
        f"{r.source:<8} {r.precision:<9} {r.memory_format:<14} {r.batch_size:>5} {r.images_per_s:>10.1f} {r.ms_per_step:>9.1f}"
        for r in rows
    ]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(
        prog="python -m model.bench_train",
        description="AlexNet training throughput (img/s) per precision and memory format.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--arch", default="torchvision", choices=sorted(ARCHS), help="network layout")
    p.add_argument("--device", default="cuda" if cuda else "cpu", help="cuda or cpu")
    p.add_argument("-b", "--batch-size", type=int, default=128, help="images per step")
    p.add_argument("--image-size", type=int, default=None, help="crop fed to the network, pixels (default: the arch's)")
    p.add_argument(
        "--resize-size", type=int, default=None, help="JPEG rows: shorter side before cropping (default: the arch's)"
    )
    p.add_argument(
        "--precisions",
        nargs="+",
        default=["fp32", "bf16", "fp16"] if cuda else ["fp32", "bf16"],
        choices=sorted(PRECISIONS),
        help="autocast dtypes to measure",
    )
    p.add_argument(
        "--memory-formats",
        nargs="+",
        default=list(MEMORY_FORMATS),
        choices=list(MEMORY_FORMATS),
        help="memory formats to measure",
    )
    p.add_argument(
        "--sources",
        nargs="+",
        default=["tensors", "jpeg"],
        choices=["tensors", "jpeg"],
        help="random on-device tensors (model ceiling) and/or the JPEG pipeline",
    )
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per row")
    p.add_argument("--steps", type=int, default=20, help="timed steps per row")
    p.add_argument("--compile", action="store_true", help="torch.compile the model in every row")
    p.add_argument(
        "--data-path", type=Path, default=None, help="ImageFolder root with train/ (default: a temporary synthetic set)"
    )
    p.add_argument("-j", "--workers", type=int, default=8, help="JPEG rows: loader processes")
    p.add_argument("--synthetic-images", type=int, default=512, help="images in the temporary synthetic set")
    p.add_argument(
        "--json", type=Path, default=None, help="also write the rows and the device's name to this JSON file"
    )
    return p


def main(args: argparse.Namespace) -> list[Row]:
    spec = arch_spec(args.arch)
    args.image_size = args.image_size or spec.input_size
    args.resize_size = args.resize_size or max(spec.resize_size, args.image_size)
    if args.image_size < spec.min_input_size:
        raise SystemExit(
            f"error: --image-size {args.image_size} is below {spec.min_input_size}, the smallest input of {args.arch!r}"
        )
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        dataset = None
        if "jpeg" in args.sources:
            root = args.data_path
            if root is None:
                classes = 10
                print(
                    f"writing {args.synthetic_images} synthetic JPEGs ({args.resize_size} px) to {tmp} ...", flush=True
                )
                root = generate(Path(tmp), classes, max(1, args.synthetic_images // classes), 0, args.resize_size)
            dataset = ImageFolder(root / "train", TrainTransform(args.resize_size, args.image_size))
        for source in args.sources:
            for precision in args.precisions:
                for fmt_name in args.memory_formats:
                    row = bench_one(args, device, source, precision, fmt_name, dataset if source == "jpeg" else None)
                    print(f"  {source} {precision} {fmt_name}: {row.images_per_s:.1f} img/s", flush=True)
                    rows.append(row)
    title = (
        f"AlexNet ({args.arch}) training throughput on {device_name(device)}; torch {torch.__version__}; "
        f"{args.image_size}x{args.image_size} input, SGD step{', torch.compile' if args.compile else ''}"
    )
    print(format_table(rows, title))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "title": title,
                    "device": device_name(device),
                    "torch": torch.__version__,
                    "compile": args.compile,
                    "rows": [asdict(r) for r in rows],
                },
                indent=1,
            )
            + "\n"
        )
    return rows


if __name__ == "__main__":
    main(get_args_parser().parse_args())
    sys.exit(0)
