"""The training command line (``python -m model.train``): its flags, their checks, and what a resumed
run (or ``--test-only``) takes from its checkpoint. model/train.py runs what these describe."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

from model.alexnet import ARCHS, arch_spec
from model.atomic_write import OutputPathError, check_output_folder
from model.engine import LOSS_CHECK_EVERY, PRECISIONS
from model.help_format import DefaultsHelpFormatter
from model.transforms import (
    LIGHTING_STD,
)
from model.weights import CheckpointError, peek_checkpoint, require_checkpoint_file

DEFAULT_LR = 0.01  # the paper's, for batch 128


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m model.train",
        description="Train AlexNet with the 2012 recipe (torchrun for many GPUs).",
        formatter_class=DefaultsHelpFormatter,
        add_help=add_help,
    )
    p.add_argument("--data-path", type=Path, required=True, help="directory with train/<class>/ and val/<class>/")
    p.add_argument(
        "--arch",
        default=None,
        choices=sorted(ARCHS),
        help="network layout (default: the --resume checkpoint's, else torchvision)",
    )
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cuda or cpu (torchrun: GPU LOCAL_RANK)",
    )
    p.add_argument("-b", "--batch-size", type=int, default=128, help="images per step per process")
    p.add_argument("--epochs", type=int, default=90, help="total epochs")
    p.add_argument(
        "-j", "--workers", type=int, default=min(8, os.cpu_count() or 1), help="data loader processes per process"
    )
    # Optimizer, paper section 5.
    p.add_argument(
        "--lr",
        type=float,
        help=f"initial learning rate (default: {DEFAULT_LR}); with --resume, the rate from the resumed epoch on, "
        "the schedule continuing from it (default: the checkpoint's)",
    )
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=5e-4, help="weight decay")
    p.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="dropout probability in the classifier (default: the --resume checkpoint's, else 0.5)",
    )
    p.add_argument(
        "--init",
        default="arch",
        choices=["arch", "kaiming"],
        help="arch: the layout's own (torchvision's default; the paper's for alexnet2012); kaiming: He init, which learns from the first steps (short and small runs)",
    )
    p.add_argument(
        "--lr-scheduler",
        default="plateau",
        choices=["plateau", "step"],
        help="plateau: /gamma when val top-1 error stops improving (paper); step: /gamma every --lr-step-size epochs",
    )
    p.add_argument("--lr-gamma", type=float, default=0.1, help="factor the learning rate is multiplied by")
    p.add_argument("--lr-patience", type=int, default=3, help="plateau: epochs without improvement before a cut")
    p.add_argument("--lr-step-size", type=int, default=30, help="step: epochs between cuts")
    # Data and augmentation, paper section 4.1.
    p.add_argument(
        "--resize-size",
        type=int,
        default=None,
        help="shorter side before cropping, pixels (default: the --resume checkpoint's, else the arch's, 256)",
    )
    p.add_argument(
        "--crop-size",
        type=int,
        default=None,
        help="network input, pixels (default: the --resume checkpoint's, else 224, or 227 for alexnet2012)",
    )
    p.add_argument("--hflip-prob", type=float, default=0.5, help="probability of a horizontal flip")
    p.add_argument("--lighting-std", type=float, default=LIGHTING_STD, help="fancy-PCA lighting alpha std; 0 disables")
    p.add_argument(
        "--augment-on",
        default="device",
        choices=["device", "workers"],
        help="where to-float, lighting and normalization run: batch-wise on the training device, or per image in the loader workers",
    )
    p.add_argument(
        "--ten-crop",
        default="final",
        choices=["final", "every", "never"],
        help="when to also evaluate with the paper's 10-crop averaging",
    )
    # Speed.
    p.add_argument(
        "--precision", default="fp32", choices=sorted(PRECISIONS), help="autocast dtype (fp16 adds a gradient scaler)"
    )
    p.add_argument(
        "--channels-last", action="store_true", help="NHWC memory format (faster convolutions on tensor cores)"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument(
        "--pin-memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="page-locked loader buffers (default: on for CUDA)",
    )
    # Bookkeeping.
    p.add_argument(
        "--output-dir", type=Path, default=Path("results/train"), help="checkpoints, metrics.jsonl, metrics.png"
    )
    p.add_argument("--resume", type=Path, default=None, help="checkpoint.pt to continue from")
    p.add_argument(
        "--keep-epoch-checkpoints", action="store_true", help="also keep checkpoint_<epoch>.pt for every epoch"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of initialization, sampling and augmentation")
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="repeatable runs: torch.use_deterministic_algorithms (slower on GPU; on CUDA only at the arch's own crop size, see model/determinism.py)",
    )
    p.add_argument(
        "--dataset-name",
        default=None,
        help="name recorded in the checkpoint's provenance (default: the data directory's name)",
    )
    p.add_argument(
        "--test-only", action="store_true", help="only evaluate (center and 10-crop) the --resume checkpoint"
    )
    p.add_argument(
        "--print-every-s", type=float, default=10.0, help="progress line interval when not on a terminal, seconds"
    )
    p.add_argument(
        "--check-loss-every",
        type=int,
        default=LOSS_CHECK_EVERY,
        help="steps between checks that the training loss is finite; a NaN/inf stops the run within this many "
        "steps (each check waits for the device once)",
    )
    return p


# What a checkpoint records that shapes its model or its preprocessing: a resumed run (and --test-only)
# takes these from it when the flag is left out; training refuses a flag that contradicts it.
RECORDED = ("arch", "resize_size", "crop_size", "dropout")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _recorded(path: Path) -> dict[str, Any]:
    """The RECORDED values ``path`` holds (args of checkpoint.pt; arch and sizes of best.pt), or {} if
    unreadable (main's load_training_checkpoint then says why)."""
    payload = peek_checkpoint(path)
    if payload is None:
        return {}
    found = {**payload.get("provenance", {}), "arch": payload.get("arch"), **payload.get("args", {})}
    return {name: found[name] for name in RECORDED if found.get(name) is not None}


def _adopt_recorded(args: argparse.Namespace) -> None:
    for name, value in _recorded(args.resume).items():
        given = getattr(args, name)
        if given is None:
            setattr(args, name, value)
        elif given != value and not (args.test_only and name in ("resize_size", "crop_size", "dropout")):
            # --test-only may evaluate at other sizes on purpose; dropout does nothing in evaluation.
            raise SystemExit(
                f"error: {_flag(name)} {given} differs from {value}, which {args.resume} was trained with; "
                f"leave {_flag(name)} out to continue with {value}, or start a new run in another --output-dir"
            )


def _check_device(name: str) -> None:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SystemExit(f"error: --device {name}: not a device; use cuda, cuda:N or cpu") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name}, but CUDA is not available here; use --device cpu")


def _check_data_path(path: Path) -> None:
    if not path.is_dir():
        raise SystemExit(f"error: --data-path {path}: no such directory")
    missing = [split for split in ("train", "val") if not (path / split).is_dir()]
    if missing:
        hint = ""
        if path.name in ("train", "val") and (path.parent / "train").is_dir() and (path.parent / "val").is_dir():
            hint = f"; did you mean --data-path {path.parent}?"
        raise SystemExit(
            f"error: --data-path {path} must contain train/ and val/ (each <class>/<image>); "
            f"it has no {' or '.join(m + '/' for m in missing)}{hint}"
        )


def check_args(args: argparse.Namespace) -> None:
    for flag, value, least in (
        ("--batch-size", args.batch_size, 1),
        ("--workers", args.workers, 0),
        ("--epochs", args.epochs, 0),
        ("--check-loss-every", args.check_loss_every, 1),
    ):
        if value < least:
            raise SystemExit(f"error: {flag} must be at least {least}, got {value}")
    _check_device(args.device)
    _check_data_path(args.data_path)
    if args.lr is not None and not args.lr >= 0:  # also NaN
        raise SystemExit(f"error: --lr must be at least 0, got {args.lr}")
    if args.resume is not None:
        try:  # now, not after the data is loaded
            require_checkpoint_file(args.resume)
        except CheckpointError as exc:
            raise SystemExit(f"error: --resume {exc}") from None
        _adopt_recorded(args)
    else:
        args.lr = DEFAULT_LR if args.lr is None else args.lr
    args.arch = args.arch or "torchvision"
    args.dropout = 0.5 if args.dropout is None else args.dropout
    spec = arch_spec(args.arch)
    args.resize_size = args.resize_size or spec.resize_size
    args.crop_size = args.crop_size or spec.input_size
    if args.crop_size < spec.min_input_size:
        raise SystemExit(
            f"error: --crop-size {args.crop_size} is below {spec.min_input_size}, the smallest input arch {args.arch!r} accepts"
        )
    if args.crop_size > args.resize_size:
        raise SystemExit(f"error: --crop-size {args.crop_size} exceeds --resize-size {args.resize_size}")
    if args.test_only and args.resume is None:
        raise SystemExit("error: --test-only needs --resume CHECKPOINT")
    if not args.test_only and args.resume is None:
        _refuse_existing_run(args.output_dir)
    if not args.test_only:  # a test-only run writes nothing
        try:
            check_output_folder(args.output_dir, "--output-dir")
        except OutputPathError as exc:
            raise SystemExit(f"error: {exc}") from None


def _refuse_existing_run(output_dir: Path) -> None:
    """A fresh run into a directory holding one would replace its best.pt and empty its metrics.jsonl."""
    checkpoint = output_dir / "checkpoint.pt"
    if not checkpoint.exists():
        return
    # Unreadable or not ours: still someone's file, still refused.
    epoch = (peek_checkpoint(checkpoint) or {}).get("epoch", "?")
    raise SystemExit(
        f"error: {output_dir} already holds a run (checkpoint.pt, epoch {epoch}); add --resume {checkpoint} "
        "to continue it, or choose another --output-dir"
    )
