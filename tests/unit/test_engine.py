"""model/engine.py: top-k counting, 10-crop evaluation against a hand-computed average, and a diverged
loss stopping the epoch within --check-loss-every steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from model.engine import LossDiverged, correct_topk, evaluate, ten_crop_probs, train_one_epoch
from model.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchPreprocess, EvalTransform, TenCropTransform

CLASSES = 8  # more than 5, so that top-5 error can be anything but 0


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, CLASSES))


def _hand_ten_crop_probs(model: nn.Module, pixels: np.ndarray) -> np.ndarray:
    """Average of softmax over the paper's ten 4x4 patches of a 6x6 image, computed with numpy."""
    weight = model[1].weight.detach().double().numpy()
    bias = model[1].bias.detach().double().numpy()
    x = (pixels / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)  # (6, 6, 3)
    patches = [x[0:4, 0:4], x[0:4, 2:6], x[2:6, 0:4], x[2:6, 2:6], x[1:5, 1:5]]
    patches += [p[:, ::-1] for p in patches]
    probs = []
    for patch in patches:
        logits = weight @ patch.transpose(2, 0, 1).reshape(-1) + bias  # flatten in (C, H, W) order
        e = np.exp(logits - logits.max())
        probs.append(e / e.sum())
    return np.mean(probs, axis=0)


def test_correct_topk_counts():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    target = torch.tensor([2, 0, 0])
    top1, top2, top5 = correct_topk(scores, target, topk=(1, 2, 5))
    assert (top1.item(), top2.item(), top5.item()) == (1, 2, 3)  # top-5 of 3 classes is every class


def test_ten_crop_evaluation_matches_hand_computed_average():
    model = _tiny_model()
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8) for _ in range(4)]
    transform = TenCropTransform(resize_size=6, crop_size=4)
    crops = torch.stack([transform(Image.fromarray(p, "RGB")) for p in images])  # (4, 10, 3, 4, 4) uint8
    preprocess = BatchPreprocess(lighting_std=0.0)

    got = ten_crop_probs(model, preprocess(crops.flatten(0, 1), False).unflatten(0, (4, 10)))
    hand = np.stack([_hand_ten_crop_probs(model, p) for p in images])  # (4, 8)
    assert np.allclose(got.detach().double().numpy(), hand, atol=1e-5)

    # Targets placed by the hand-computed ranking: 1st, 3rd, last and 6th most probable class, so
    # top-1 is right once (error 3/4) and top-5 twice (error 2/4).
    ranked = np.argsort(-hand, axis=1)  # (4, 8) classes by falling probability
    targets = torch.tensor([ranked[0, 0], ranked[1, 2], ranked[2, -1], ranked[3, 5]])
    stats = evaluate(model, [(crops[:2], targets[:2]), (crops[2:], targets[2:])], torch.device("cpu"), preprocess)
    hand_loss = -np.mean(np.log(hand[np.arange(4), targets.numpy()]))
    assert stats.images == 4
    assert (stats.top1_err, stats.top5_err) == (3 / 4, 2 / 4)
    assert abs(stats.loss - hand_loss) < 1e-5


def test_ten_crop_average_differs_from_center_crop():
    """Guard against an 'average' that quietly uses only one patch."""
    model = _tiny_model()
    pixels = np.random.default_rng(2).integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    preprocess = BatchPreprocess(lighting_std=0.0)
    center = EvalTransform(6, 4)(Image.fromarray(pixels, "RGB"))[None]  # (1, 3, 4, 4)
    center_probs = model(preprocess(center, False)).softmax(1).detach().double().numpy()[0]
    assert not np.allclose(center_probs, _hand_ten_crop_probs(model, pixels), atol=1e-4)


def test_center_crop_evaluation_counts_errors():
    model = _tiny_model()
    x = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    preprocess = BatchPreprocess(lighting_std=0.0)
    with torch.no_grad():
        pred = model(preprocess(x, False)).argmax(1)
    target = pred.clone()
    target[:2] = (pred[:2] + 1) % CLASSES  # two wrong on purpose
    stats = evaluate(model, [(x, target)], torch.device("cpu"), preprocess)
    assert stats.top1_err == 2 / 5 and stats.images == 5


def _train_until_diverged(batches: int, nan_at: int, check_every: int, precision: str = "fp32"):
    """Train ``_tiny_model`` on ``batches`` float batches, the ``nan_at``-th (1-based) holding a NaN;
    returns the LossDiverged raised and how many batches the loop took."""
    model = _tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    taken = []

    def loader():
        generator = torch.Generator().manual_seed(0)
        for index in range(1, batches + 1):
            taken.append(index)
            images = torch.rand(4, 3, 4, 4, generator=generator)
            if index == nan_at:
                images[0, 0, 0, 0] = math.nan
            yield images, torch.randint(0, CLASSES, (4,), generator=generator)

    with pytest.raises(LossDiverged) as raised:
        train_one_epoch(
            model, torch.nn.CrossEntropyLoss(), optimizer, loader(), torch.device("cpu"),
            lambda x, train: x, precision, check_every=check_every,
        )  # fmt: skip
    return raised.value, len(taken)


def test_a_nan_loss_stops_the_epoch_at_the_next_check_and_names_its_step():
    diverged, taken = _train_until_diverged(batches=40, nan_at=6, check_every=4)
    assert taken == 8  # the check after step 8, not the end of the epoch (40)
    assert (diverged.step, math.isnan(diverged.loss)) == (6, True)
    assert str(diverged) == "training loss is nan (fp32) at step 6 of the epoch; lower --lr"


def test_a_nan_after_the_last_check_is_found_at_the_end_of_the_epoch():
    diverged, taken = _train_until_diverged(batches=10, nan_at=9, check_every=4, precision="fp16")
    assert (taken, diverged.step) == (10, 9)
    assert str(diverged).endswith("at step 9 of the epoch; lower --lr, or use --precision fp32 or bf16")
