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
    # CPU smoke run on synthetic data (python -m model.synthetic --out data/synthetic --classes 4 ...);
    # He init and lr 0.005 learn it in 36 steps, the default init sits at chance (docs/training.md)
    python -m model.train --data-path data/synthetic --device cpu --epochs 6 --batch-size 32 --init kaiming \
        --lr 0.005 --dropout 0 --resize-size 72 --crop-size 64 --workers 2 --output-dir results/smoke

Writes to --output-dir: checkpoint.pt (latest, with optimizer state; --resume it), best.pt (the
lowest center-crop top-1 error so far; the service can load it), metrics.jsonl and metrics.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from model.alexnet import build, kaiming_init_
from model.data import ImageFolder, ShardSampler, class_labels, make_loader, train_sampler
from model.determinism import drop_identity_pools, replace_local_response_norms, use_deterministic_algorithms
from model.distributed import DistInfo, barrier, cleanup, init_distributed
from model.engine import EpochStats, LossDiverged, evaluate, train_one_epoch
from model.metrics_log import MetricsLog, plot_metrics, read_metrics
from model.progress import Progress
from model.train_args import DEFAULT_LR, check_args, get_args_parser
from model.transforms import (
    BatchPreprocess,
    EvalTransform,
    FinishInWorker,
    TenCropTransform,
    TrainTransform,
)
from model.weights import CheckpointError, load_training_checkpoint, save_checkpoint


def _seed_everything(seed: int, epoch: int, rank: int) -> None:
    # A function of (seed, epoch, rank) only: a run resumed at epoch E draws exactly what an
    # uninterrupted run draws in epoch E (dropout, lighting; crops too with --workers 0).
    torch.manual_seed(seed * 1_000_003 + epoch * 1_009 + rank)


def _plain(args: argparse.Namespace) -> dict[str, Any]:
    """args as JSON-able values, since checkpoints are read back with weights_only=True."""
    return json.loads(json.dumps(vars(args), default=str))


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


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


def set_lr(optimizer: torch.optim.Optimizer, scheduler: Any, lr: float) -> None:
    """Train at ``lr`` from now on; the schedule goes on from it (a StepLR's later steps, or a plateau,
    still multiply it by --lr-gamma)."""
    current = _lr(optimizer)
    factor = lr / current if current > 0 else 1.0  # from a rate of 0 the schedule's base stays as it was
    for group in optimizer.param_groups:  # one group: SGD over model.parameters()
        group["lr"] = lr
        if "initial_lr" in group:
            group["initial_lr"] *= factor
    if hasattr(scheduler, "base_lrs"):  # StepLR's closed form; ReduceLROnPlateau reads the groups
        scheduler.base_lrs = [base * factor for base in scheduler.base_lrs]


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
        replace_local_response_norms(model)  # alexnet2012's; same numbers, same state_dict
        try:
            drop_identity_pools(model, args.crop_size, device)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
    # On the device before the optimizer exists and before --resume loads its state: SGD's
    # load_state_dict puts the momentum buffers on each parameter's device as it finds it then.
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    # Under --resume without --lr, the checkpoint's optimizer state sets the rate below.
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=DEFAULT_LR if args.lr is None else args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
    )
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
            recorded_lr = _lr(optimizer)
            if args.lr is not None:
                set_lr(optimizer, scheduler, args.lr)
            changed = f" (--lr; the checkpoint's was {recorded_lr:g})" if args.lr not in (None, recorded_lr) else ""
            say(f"resumed from {args.resume}: epoch {start_epoch}, step {step}, lr {_lr(optimizer):g}{changed}")
            args.lr = _lr(optimizer)  # what the run's recorded args say it trained at
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
                args.check_loss_every,
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
    except LossDiverged as exc:
        # Raised by every rank at the same step (the check is a collective), so none is left waiting.
        cleanup()
        at = f", step {exc.step} of {len(train_loader)} (global step {step + exc.step})" if exc.step else ""
        kept = (
            f"--resume {saved[1]} continues after epoch {saved[0]}, the last good one"
            if saved
            else "no epoch was saved"
        )
        raise FloatingPointError(
            f"training loss is {exc.loss} ({args.precision}) in epoch {epoch}{at}; {exc.advice}; {kept}"
        ) from None
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
