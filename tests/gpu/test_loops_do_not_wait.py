"""The training and evaluation loops queue the GPU's work without waiting for it: CUDA's sync debug
mode raises on any call that makes the host wait (a blocking copy, ``.item()``, a host-side count
added to a device tensor). Only the first step may wait, once, to put each constant on the device."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this host"),
]

from torch import nn  # noqa: E402

import model.engine as engine  # noqa: E402
from model.engine import evaluate, train_one_epoch  # noqa: E402
from model.transforms import BatchPreprocess  # noqa: E402


def _batches(device: torch.device, count: int, ten_crop: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator(device="cpu").manual_seed(0)
    shape = (4, 10, 3, 8, 8) if ten_crop else (4, 3, 8, 8)
    return [
        (
            torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator).to(device),
            torch.randint(0, 6, (4,), generator=generator).to(device),
        )
        for _ in range(count)
    ]


@pytest.mark.parametrize("lighting_std", [0.0, 0.1])
def test_training_and_evaluation_steps_never_wait_for_the_gpu(lighting_std, monkeypatch):
    device = torch.device("cuda")
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 6)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    preprocess = BatchPreprocess(lighting_std=lighting_std)
    criterion = nn.CrossEntropyLoss()
    first = _batches(device, 1)
    train_one_epoch(model, criterion, optimizer, first, device, preprocess)  # makes the constants
    evaluate(model, first, device, preprocess)
    torch.cuda.synchronize()

    # Each loop ends by reading its sums (one wait, by design): the steps before it must not wait.
    ended = []

    def read_sums(*args):
        torch.cuda.set_sync_debug_mode(0)
        ended.append(True)
        return stats(*args)

    stats = engine._stats
    monkeypatch.setattr(engine, "_stats", read_sums)
    train, center, ten = _batches(device, 3), _batches(device, 2), _batches(device, 2, ten_crop=True)
    loops = [
        lambda: train_one_epoch(model, criterion, optimizer, train, device, preprocess),
        lambda: evaluate(model, center, device, preprocess),
        lambda: evaluate(model, ten, device, preprocess),
    ]
    torch.cuda.synchronize()  # the batches are on the device before any loop is watched
    try:
        for loop in loops:
            torch.cuda.set_sync_debug_mode("error")
            loop()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(ended) == 3


def test_the_loss_check_is_the_one_wait_of_a_training_epoch_and_comes_every_check_every_steps(monkeypatch):
    """The NaN/inf check reads the device (a wait, by design) once per ``check_every`` steps: the steps
    between checks must still not wait."""
    device = torch.device("cuda")
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 6)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    preprocess, criterion = BatchPreprocess(), nn.CrossEntropyLoss()
    train_one_epoch(model, criterion, optimizer, _batches(device, 1), device, preprocess)  # makes the constants
    checked_from, ended = [], []
    check, stats = engine._first_non_finite, engine._stats

    def watched_check(losses, first_step):
        torch.cuda.set_sync_debug_mode(0)
        try:
            return check(losses, first_step)
        finally:
            checked_from.append(first_step)
            torch.cuda.set_sync_debug_mode("error")

    def read_sums(*args):
        torch.cuda.set_sync_debug_mode(0)
        ended.append(True)
        return stats(*args)

    monkeypatch.setattr(engine, "_first_non_finite", watched_check)
    monkeypatch.setattr(engine, "_stats", read_sums)
    batches = _batches(device, 5)
    torch.cuda.synchronize()  # the batches are on the device before the loop is watched
    try:
        torch.cuda.set_sync_debug_mode("error")
        train_one_epoch(model, criterion, optimizer, batches, device, preprocess, check_every=2)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert checked_from == [1, 3] and ended == [True]  # after steps 2 and 4; step 5's loss is in the sums
