"""Train AlexNet on an ImageFolder data set with the 2012 recipe, on one device or many (torchrun).

    # one GPU, the paper's recipe (SGD 0.9, wd 5e-4, batch 128, lr 0.01 /10 on plateau, 90 epochs)
    python -m model.train --data-path /data/imagenet --precision bf16 --channels-last --workers 16
    # the 2012 paper's network (227 crops, its initialization)
    python -m model.train --data-path /data/imagenet --arch alexnet2012
    # 8 GPUs on one host (--batch-size is per GPU: 16 x 8 keeps the paper's 128)
    torchrun --nproc_per_node=8 -m model.train --data-path /data/imagenet --batch-size 16
    # two hosts: run on each, with --node_rank 0 and 1
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=HOST0 --master_port=29500 \
        -m model.train --data-path /data/imagenet --batch-size 8
    # CPU smoke run on synthetic data (python -m model.synthetic --out data/synthetic --classes 4 ...)
    python -m model.train --data-path data/synthetic --device cpu --epochs 3 --batch-size 32 \
        --resize-size 72 --crop-size 64 --workers 2

Writes to --output-dir: checkpoint.pt (latest, with optimizer state; --resume it), best.pt (the
lowest center-crop top-1 error so far; the service can load it), metrics.jsonl and metrics.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from model.alexnet import ARCHS, arch_spec, build, kaiming_init_
from model.data import ImageFolder, ShardSampler, class_labels, make_loader, train_sampler
from model.determinism import drop_identity_pools, use_deterministic_algorithms
from model.distributed import DistInfo, barrier, cleanup, init_distributed
from model.engine import PRECISIONS, EpochStats, evaluate, train_one_epoch
from model.help_format import DefaultsHelpFormatter
from model.metrics_log import MetricsLog, plot_metrics, read_metrics
from model.progress import Progress
from model.transforms import (
    LIGHTING_STD,
    BatchPreprocess,
    EvalTransform,
    FinishInWorker,
    TenCropTransform,
    TrainTransform,
)
from model.weights import CheckpointError, load_training_checkpoint, save_checkpoint


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
    p.add_argument("--lr", type=float, default=0.01, help="initial learning rate")
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
    return p


def _seed_everything(seed: int, epoch: int, rank: int) -> None:
    # A function of (seed, epoch, rank) only: a run resumed at epoch E draws exactly what an
    # uninterrupted run draws in epoch E (dropout, lighting; crops too with --workers 0).
    torch.manual_seed(seed * 1_000_003 + epoch * 1_009 + rank)


def _plain(args: argparse.Namespace) -> dict[str, Any]:
    """args as JSON-able values, since checkpoints are read back with weights_only=True."""
    return json.loads(json.dumps(vars(args), default=str))


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


# What a checkpoint records that shapes its model or its preprocessing: a resumed run (and --test-only)
# takes these from it when the flag is left out; training refuses a flag that contradicts it.
RECORDED = ("arch", "resize_size", "crop_size", "dropout")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _recorded(path: Path) -> dict[str, Any]:
    """The RECORDED values ``path`` holds (args of checkpoint.pt; arch and sizes of best.pt), or {} if
    unreadable (main's load_training_checkpoint then says why)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return {}
    if not isinstance(payload, dict):
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
    ):
        if value < least:
            raise SystemExit(f"error: {flag} must be at least {least}, got {value}")
    _check_device(args.device)
    _check_data_path(args.data_path)
    if args.resume is not None:
        _adopt_recorded(args)
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


def _refuse_existing_run(output_dir: Path) -> None:
    """A fresh run into a directory holding one would replace its best.pt and empty its metrics.jsonl."""
    checkpoint = output_dir / "checkpoint.pt"
    if not checkpoint.exists():
        return
    try:
        # mmap: only the epoch is read, not the weights
        epoch = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("epoch", "?")
    except Exception:  # unreadable or not ours: still someone's file, still refused
        epoch = "?"
    raise SystemExit(
        f"error: {output_dir} already holds a run (checkpoint.pt, epoch {epoch}); add --resume {checkpoint} "
        "to continue it, or choose another --output-dir"
    )


def _describe(labels: list[str], shown: int = 5) -> str:
    head = ", ".join(labels[:shown]) + (", ..." if len(labels) > shown else "")
    return f"{len(labels)} classes ({head})"


def _first_difference(recorded: list[str], found: list[str]) -> str:
    for index, (a, b) in enumerate(zip(recorded, found, strict=False)):
        if a != b:
            return f" (class {index}: {a!r} in the checkpoint, {b!r} here)"
    return ""


def build_loaders(args: argparse.Namespace, dist_info: DistInfo, device: torch.device):
    """Train and val (center crop, and 10-crop) loaders; each rank sees its own shard."""
    pin = device.type == "cuda" if args.pin_memory is None else args.pin_memory
    train_tf: TrainTransform | FinishInWorker = TrainTransform(args.resize_size, args.crop_size, args.hflip_prob)
    val_tf: EvalTransform | FinishInWorker = EvalTransform(args.resize_size, args.crop_size)
    ten_tf: TenCropTransform | FinishInWorker = TenCropTransform(args.resize_size, args.crop_size)
    if args.augment_on == "workers":
        train_tf, val_tf, ten_tf = (
            FinishInWorker(train_tf, args.lighting_std),
            FinishInWorker(val_tf),
            FinishInWorker(ten_tf),
        )
    try:
        train_set = ImageFolder(args.data_path / "train", train_tf)
        val_set = ImageFolder(args.data_path / "val", val_tf)
    except FileNotFoundError as exc:
        raise SystemExit(f"error: {exc}") from None
    ten_set = ImageFolder(args.data_path / "val", ten_tf)
    if dist_info.is_main:
        for note in (train_set.skipped_note(), val_set.skipped_note()):
            if note:
                print(note)
    if val_set.classes != train_set.classes:
        raise SystemExit(f"error: val classes differ from train classes under {args.data_path}")
    sampler = train_sampler(train_set, dist_info.rank, dist_info.world_size, args.seed)
    if len(sampler) < args.batch_size:
        raise SystemExit(
            f"error: {len(sampler)} training images per process, fewer than one --batch-size {args.batch_size}"
        )
    val_sampler = ShardSampler(len(val_set), dist_info.rank, dist_info.world_size)
    train_loader = make_loader(train_set, args.batch_size, sampler, args.workers, pin, True, args.seed)
    val_loader = make_loader(val_set, args.batch_size, val_sampler, args.workers, pin, False, args.seed)
    # Ten crops make each sample 10 images; a tenth of the batch keeps memory as in training.
    ten_loader = make_loader(ten_set, max(1, args.batch_size // 10), val_sampler, args.workers, pin, False, args.seed)
    return train_set, sampler, train_loader, val_loader, ten_loader


def build_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer):
    if args.lr_scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step_size, gamma=args.lr_gamma)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=args.lr_gamma, patience=args.lr_patience
    )


def _record(
    kind: str, epoch: int, step: int, lr: float, val: EpochStats, train: EpochStats | None = None, seconds: float = 0.0
) -> dict[str, Any]:
    record: dict[str, Any] = {"kind": kind, "epoch": epoch, "step": step, "lr": lr}
    if train is not None:
        record.update(
            train_loss=train.loss,
            train_top1_err=train.top1_err,
            train_top5_err=train.top5_err,
            train_img_per_s=train.images / max(seconds, 1e-9),
            epoch_s=seconds,
        )
    record.update(val_loss=val.loss, val_top1_err=val.top1_err, val_top5_err=val.top5_err, val_images=val.images)
    return record


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or with --test-only evaluate); returns the last metrics record."""
    check_args(args)
    dist_info, device = init_distributed(args.device)
    if args.deterministic:
        use_deterministic_algorithms(device)
    else:
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    main_proc = dist_info.is_main
    say = print if main_proc else (lambda *a, **k: None)

    train_set, sampler, train_loader, val_loader, ten_loader = build_loaders(args, dist_info, device)
    labels = class_labels(train_set.classes)
    _seed_everything(args.seed, -1, 0)  # same initial weights on every rank
    model = build(args.arch, num_classes=len(labels), dropout=args.dropout)
    if args.init == "kaiming":
        kaiming_init_(model)
    if args.deterministic:
        try:
            drop_identity_pools(model, args.crop_size, device)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
    # On the device before the optimizer exists and before --resume loads its state: SGD's
    # load_state_dict puts the momentum buffers on each parameter's device as it finds it then.
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    scheduler = build_scheduler(args, optimizer)
    scaler = torch.amp.GradScaler(device.type) if args.precision == "fp16" else None
    start_epoch, step, best_top1_err = 0, 0, float("inf")

    if args.resume is not None:
        try:
            loaded, state = load_training_checkpoint(args.resume)
        except CheckpointError as exc:
            raise SystemExit(f"error: {exc}") from None
        if loaded.arch != args.arch:
            raise SystemExit(f"error: {args.resume} is arch {loaded.arch!r}; this run is {args.arch!r}")
        if loaded.labels != labels:
            raise SystemExit(
                f"error: {args.resume} was trained on {_describe(loaded.labels)}; "
                f"{args.data_path / 'train'} has {_describe(labels)}{_first_difference(loaded.labels, labels)}; "
                "resume on the same classes, or start a new run"
            )
        model.load_state_dict(loaded.model.state_dict())
        if not args.test_only:
            if "optimizer" not in state:
                raise SystemExit(f"error: {args.resume} has no optimizer state; resume from checkpoint.pt, not best.pt")
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["lr_scheduler"])
            if scaler is not None and "scaler" in state:
                scaler.load_state_dict(state["scaler"])
            start_epoch, step = state["epoch"] + 1, state["step"]
            best_top1_err = state.get("best_top1_err", best_top1_err)
            say(f"resumed from {args.resume}: epoch {start_epoch}, step {step}, lr {_lr(optimizer):g}")
    if not args.test_only and start_epoch >= args.epochs:
        done = f"{args.resume} holds epoch {start_epoch - 1}, so " if args.resume is not None else ""
        raise SystemExit(
            f"error: {done}--epochs {args.epochs} leaves nothing to train; raise --epochs above {start_epoch}"
        )

    model_without_ddp = model
    if dist_info.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    preprocess = BatchPreprocess(args.lighting_std, args.channels_last)
    criterion = nn.CrossEntropyLoss()
    dataset_name = args.dataset_name or args.data_path.resolve().name
    say(
        f"{args.arch}: {len(labels)} classes, {len(train_set)} train images, crop {args.crop_size} of {args.resize_size}, "
        f"{dist_info.world_size} process(es) x batch {args.batch_size} on {device}, {args.precision}"
    )

    def run_eval(loader, epoch: int, tag: str) -> EpochStats:
        return evaluate(
            model,
            loader,
            device,
            preprocess,
            args.precision,
            Progress(len(loader), f"{tag} {epoch}", main_proc, args.print_every_s),
        )

    if args.test_only:
        center = run_eval(val_loader, start_epoch, "val")
        ten = run_eval(ten_loader, start_epoch, "val10")
        say(
            f"center crop: top-1 error {center.top1_err:.2%}, top-5 error {center.top5_err:.2%}; "
            f"10-crop: top-1 error {ten.top1_err:.2%}, top-5 error {ten.top5_err:.2%}"
        )
        cleanup()
        return _record("ten_crop", start_epoch, step, _lr(optimizer), ten)

    log = MetricsLog(args.output_dir / "metrics.jsonl", start_epoch - 1 if args.resume else None) if main_proc else None
    record: dict[str, Any] = {}
    # The last fully saved epoch and the checkpoint that holds it, for the message on Ctrl-C.
    saved: tuple[int, Path] | None = (start_epoch - 1, args.resume) if args.resume is not None else None
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, args.epochs):
            _seed_everything(args.seed, epoch, dist_info.rank)
            sampler.set_epoch(epoch)
            train_loader.generator.manual_seed(args.seed * 1_000_003 + epoch)
            lr = _lr(optimizer)
            start = time.perf_counter()
            train = train_one_epoch(
                model,
                criterion,
                optimizer,
                train_loader,
                device,
                preprocess,
                args.precision,
                scaler,
                Progress(len(train_loader), f"epoch {epoch}", main_proc, args.print_every_s),
            )
            seconds = time.perf_counter() - start
            step += len(train_loader)
            val = run_eval(val_loader, epoch, "val")
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val.top1_err)  # every rank sees the same summed error, so lrs agree
            else:
                scheduler.step()
            record = _record("epoch", epoch, step, lr, val, train, seconds)
            say(
                f"epoch {epoch}: train loss {train.loss:.4f}, val loss {val.loss:.4f}, top-1 error {val.top1_err:.2%}, "
                f"top-5 error {val.top5_err:.2%}, {record['train_img_per_s']:.0f} img/s"
            )
            is_best = val.top1_err < best_top1_err
            best_top1_err = min(best_top1_err, val.top1_err)
            ten_crop: EpochStats | None = None
            if args.ten_crop == "every" or (args.ten_crop == "final" and epoch == args.epochs - 1):
                ten_crop = run_eval(ten_loader, epoch, "val10")
                say(f"epoch {epoch} 10-crop: top-1 error {ten_crop.top1_err:.2%}, top-5 error {ten_crop.top5_err:.2%}")
            if main_proc:
                provenance = {
                    "source": "trained",
                    "dataset": dataset_name,
                    "epoch": epoch,
                    "val_top1": 100 * (1 - val.top1_err),
                    "val_top5": 100 * (1 - val.top5_err),
                    "crop_size": args.crop_size,
                    "resize_size": args.resize_size,
                }
                training_state = {
                    "optimizer": optimizer.state_dict(),
                    "lr_scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "step": step,
                    "best_top1_err": best_top1_err,
                    "args": _plain(args),
                }
                if scaler is not None:
                    training_state["scaler"] = scaler.state_dict()
                # checkpoint.pt last: it marks an epoch whose best.pt and records are all written, so a
                # run interrupted in between redoes the epoch instead of resuming past what it lost.
                if is_best:
                    save_checkpoint(args.output_dir / "best.pt", model_without_ddp, args.arch, labels, provenance)
                assert log is not None
                log.write(record)
                if ten_crop is not None:
                    log.write(_record("ten_crop", epoch, step, lr, ten_crop))
                plot_metrics(read_metrics(log.path), args.output_dir / "metrics.png")
                if args.keep_epoch_checkpoints:
                    save_checkpoint(
                        args.output_dir / f"checkpoint_{epoch}.pt",
                        model_without_ddp,
                        args.arch,
                        labels,
                        provenance,
                        **training_state,
                    )
                save_checkpoint(
                    args.output_dir / "checkpoint.pt",
                    model_without_ddp,
                    args.arch,
                    labels,
                    provenance,
                    **training_state,
                )
            saved = (epoch, args.output_dir / "checkpoint.pt")
            barrier()  # no rank runs ahead while rank 0 writes
    except KeyboardInterrupt:
        if saved is None:
            message = "interrupted before the first epoch was saved: nothing to resume"
        else:
            message = (
                f"interrupted in epoch {epoch}; resume with --resume {saved[1]} (continues at epoch {saved[0] + 1})"
            )
        if main_proc:
            print(message, file=sys.stderr)
        raise SystemExit(130) from None
    cleanup()
    return record


def cli(argv: list[str] | None = None) -> int:
    """``python -m model.train``: refusals (``SystemExit("error: ...")``) print one line and exit 2."""
    args = get_args_parser().parse_args(argv)
    try:
        main(args)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 2
        raise
    except FloatingPointError as exc:  # a diverged run: the message says what to change
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
