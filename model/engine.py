"""One training epoch and one evaluation pass; counts are summed over ranks, so numbers are exact
under torchrun too.

Evaluation follows the paper (section 6): top-1 and top-5 *error*, from the center crop as the
service sees it, and from ten crops (four corners + center, and their mirror images) whose softmax
outputs are averaged.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.distributed import all_reduce_sum
from model.progress import Progress

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Steps between checks that the training loss is finite. Each check makes the host wait for the device
# once (the loop otherwise never does), so a diverged run stops within this many steps, not at the
# end of an epoch (hours on ImageNet).
LOSS_CHECK_EVERY = 100


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass; fp32 is a no-op."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler) -> None:
    """Backward and step, through the fp16 GradScaler when there is one."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def correct_topk(scores: torch.Tensor, target: torch.Tensor, topk: Iterable[int] = (1, 5)) -> list[torch.Tensor]:
    """How many rows of ``scores`` (B, C) have ``target`` among their k highest, for each k (capped at C)."""
    maxk = min(max(topk), scores.shape[1])
    pred = scores.topk(maxk, dim=1).indices  # (B, maxk)
    hit = pred.eq(target[:, None])  # (B, maxk)
    return [hit[:, : min(k, maxk)].any(dim=1).sum() for k in topk]


def ten_crop_probs(model: nn.Module, crops: torch.Tensor) -> torch.Tensor:
    """(B, 10, 3, H, W) -> (B, C): the softmax over classes, averaged over each image's ten crops."""
    b, n = crops.shape[:2]
    logits = model(crops.flatten(0, 1))  # (B*10, C)
    return logits.float().softmax(dim=1).view(b, n, -1).mean(dim=1)


class LossDiverged(FloatingPointError):
    """The training loss became NaN or infinite, first at ``step`` of the epoch (1-based; None when
    not known), on any rank: every rank raises it at the same step."""

    def __init__(self, loss: float, step: int | None, precision: str) -> None:
        self.loss, self.step, self.precision = loss, step, precision
        at = f" at step {step} of the epoch" if step is not None else ""
        super().__init__(f"training loss is {loss} ({precision}){at}; {self.advice}")

    @property
    def advice(self) -> str:
        return "lower --lr" + (", or use --precision fp32 or bf16" if self.precision == "fp16" else "")


def _first_non_finite(losses: torch.Tensor, first_step: int) -> tuple[int, float] | None:
    """The step and value of the first non-finite entry of ``losses`` (one per step from
    ``first_step``), summed over ranks: a collective, so every rank calls it at the same step, and all
    get the same answer. Reads the device (a wait), so it runs once per LOSS_CHECK_EVERY steps."""
    summed = all_reduce_sum(losses.double()).tolist()  # .double() copies: the window is reused
    for offset, value in enumerate(summed):
        if not math.isfinite(value):
            return first_step + offset, value
    return None


@dataclass
class EpochStats:
    loss: float
    top1_err: float  # fraction, 0..1
    top5_err: float
    images: int
    images_per_s: float


def _stats(sums: torch.Tensor, images: int, images_per_s: float) -> EpochStats:
    """``sums`` (loss sum, top-1 hits, top-5 hits) on the device and this rank's image count, summed
    over ranks. The count is kept on the host: adding it to a device tensor each step would copy it
    from pageable memory, a wait for the GPU every step."""
    loss_sum, c1, c5, n = all_reduce_sum(torch.cat([sums, sums.new_tensor([images])])).tolist()
    n = max(n, 1)
    return EpochStats(loss_sum / n, 1 - c1 / n, 1 - c5 / n, int(n), images_per_s)


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable,
    device: torch.device,
    preprocess: Callable[[torch.Tensor, bool], torch.Tensor],
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    progress: Progress | None = None,
    check_every: int = LOSS_CHECK_EVERY,
) -> EpochStats:
    """One pass over ``loader``; running sums stay on the device so the loop never waits for the GPU
    except when the progress line is printed and every ``check_every`` steps, when it checks that the
    loss is finite (LossDiverged if not). Every rank must see the same number of batches."""
    model.train()
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, top-1 hits, top-5 hits
    window = torch.zeros(check_every, device=device)  # each step's loss since the last check
    seen = 0
    step = 0
    for step, (images, target) in enumerate(loader, start=1):
        images = preprocess(images.to(device, non_blocking=True), True)  # (B, 3, H, W) float32
        target = target.to(device, non_blocking=True)
        with autocast(device, precision):
            output = model(images)  # (B, C)
            loss = criterion(output, target)
        optimizer_step(loss, optimizer, scaler)
        with torch.no_grad():
            c1, c5 = correct_topk(output, target)
            sums += torch.stack([loss.detach().double() * len(target), c1.double(), c5.double()])
            window[(step - 1) % check_every] = loss.detach()  # a device copy, no wait
        seen += len(target)
        if progress is not None:
            progress.update(len(target), loss=loss.detach())  # read (a GPU sync) only when printed
        if step % check_every == 0 and (diverged := _first_non_finite(window, step - check_every + 1)):
            if progress is not None:
                progress.close(loss=diverged[1])
            raise LossDiverged(diverged[1], diverged[0], precision)
    stats = _stats(sums, seen, progress.images_per_s if progress is not None else 0.0)
    if progress is not None:
        progress.close(loss=stats.loss)
    if not math.isfinite(stats.loss):  # in the steps since the last check; stats.loss is the same on every rank
        unchecked = step % check_every
        diverged = _first_non_finite(window[:unchecked], step - unchecked + 1) if unchecked else None
        if diverged is None:  # not expected: a finite loss every step, yet a non-finite sum
            raise LossDiverged(stats.loss, None, precision)
        raise LossDiverged(diverged[1], diverged[0], precision)
    return stats


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    preprocess: Callable[[torch.Tensor, bool], torch.Tensor],
    precision: str = "fp32",
    progress: Progress | None = None,
) -> EpochStats:
    """Loss and top-1/top-5 error over ``loader``. Batches of (B, 3, H, W) are scored by their logits;
    batches of (B, 10, 3, H, W) by the crop-averaged softmax (loss: NLL of that average)."""
    model.eval()
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, top-1 hits, top-5 hits
    seen = 0
    for images, target in loader:
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        with autocast(device, precision):
            if images.dim() == 5:
                b, n = images.shape[:2]
                flat = preprocess(images.flatten(0, 1), False).unflatten(0, (b, n))
                scores = ten_crop_probs(model, flat)  # (B, C) probabilities
                loss = F.nll_loss(scores.clamp_min(1e-12).log(), target, reduction="sum")
            else:
                scores = model(preprocess(images, False)).float()  # (B, C) logits
                loss = F.cross_entropy(scores, target, reduction="sum")
        c1, c5 = correct_topk(scores, target)
        sums += torch.stack([loss.double(), c1.double(), c5.double()])
        seen += len(target)
        if progress is not None:
            progress.update(len(target))
    if progress is not None:
        progress.close()
    return _stats(sums, seen, progress.images_per_s if progress is not None else 0.0)
