"""python -m model.train stops within --check-loss-every steps of a NaN/inf loss, not at the end of the
epoch: exit 1, one line saying where and what to change; the last good epoch is left whole and
resumable; under torchrun every rank stops at the same step (a NaN on one rank leaves none waiting)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from model import train
from model.metrics_log import read_metrics
from model.transforms import BatchPreprocess
from model.weights import load_checkpoint, load_training_checkpoint
from tests.integration.test_train import SMALL, run_train

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

# Puts a NaN into training batch POISON_AT (counted over the run, from 1) of rank POISON_RANK; with
# model.train's BatchPreprocess replaced by it, the forward pass, the loss and the weights go NaN.
POISON = """
import os

from model.transforms import BatchPreprocess


class Poisoned(BatchPreprocess):
    steps = 0

    def __call__(self, images, train):
        images = super().__call__(images, train)
        if train:
            Poisoned.steps += 1
            if Poisoned.steps == POISON_AT and os.environ.get("RANK", "0") == str(POISON_RANK):
                images = images.clone()
                images[0, 0, 0, 0] = float("nan")
        return images
"""


def _poisoned(at: int, rank: int = 0) -> type[BatchPreprocess]:
    scope: dict = {"POISON_AT": at, "POISON_RANK": rank}
    exec(POISON, scope)
    return scope["Poisoned"]


def test_a_nan_in_epoch_1_stops_it_within_check_loss_every_steps_and_keeps_epoch_0(
    tiny4, tmp_path, monkeypatch, capsys
):
    # tiny4 at batch 8: 4 steps an epoch. The NaN comes in epoch 1's first step; checked every 2 steps.
    out = tmp_path / "run"
    common = [*SMALL, "--data-path", str(tiny4), "--output-dir", str(out), "--batch-size", "8", "--ten-crop", "never"]
    poisoned = _poisoned(at=5)
    monkeypatch.setattr(train, "BatchPreprocess", poisoned)
    assert train.cli([*common, "--epochs", "3", "--check-loss-every", "2"]) == 1
    checkpoint = out / "checkpoint.pt"
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: training loss is nan (fp32) in epoch 1, step 1 of 4 (global step 5); lower --lr; "
        f"--resume {checkpoint} continues after epoch 0, the last good one"
    )
    assert poisoned.steps == 6  # stopped at the check after step 2: steps 3 and 4 never ran

    # Epoch 0 whole, nothing of epoch 1 written, no temporary file left behind.
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "checkpoint.pt", "metrics.jsonl", "metrics.png"]
    assert load_training_checkpoint(checkpoint)[1]["epoch"] == 0
    assert load_checkpoint(out / "best.pt").provenance["epoch"] == 0
    assert [(r["kind"], r["epoch"]) for r in read_metrics(out / "metrics.jsonl")] == [("epoch", 0)]

    monkeypatch.undo()  # what the message says: epoch 0 resumes, at a lower rate
    resumed = run_train(*common[len(SMALL) :], "--epochs", "2", "--resume", str(checkpoint), "--lr", "0.001")
    assert resumed["lr"] == 0.001
    assert resumed["epoch"] == 1 and resumed["step"] == 8
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [0, 1]


def test_a_diverging_lr_stops_at_the_first_check(tiny4, tmp_path, capsys):
    argv = [*SMALL, "--data-path", str(tiny4), "--output-dir", str(tmp_path / "run"), "--batch-size", "8"]
    assert train.cli([*argv, "--epochs", "1", "--ten-crop", "never", "--lr", "1e6", "--check-loss-every", "1"]) == 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("error: training loss is nan (fp32) in epoch 0, step ")
    assert last.endswith("; lower --lr; no epoch was saved")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_under_torchrun_a_nan_on_one_rank_stops_every_rank_at_the_same_step(tiny4, tmp_path):
    # 32 images over 2 ranks at 4 per rank and step: 4 steps. Rank 1 alone gets a NaN at step 2;
    # the check after step 3 is a collective, so both ranks see it and stop there, together.
    script = tmp_path / "poisoned_train.py"
    script.write_text(
        f"POISON_AT, POISON_RANK = 2, 1\n{POISON}\n"
        "import sys\n\nfrom model import train\n\ntrain.BatchPreprocess = Poisoned\nsys.exit(train.cli())\n"
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", str(script), *SMALL]
    cmd += ["--data-path", str(tiny4), "--output-dir", str(tmp_path / "ddp"), "--epochs", "2", "--batch-size", "4"]
    cmd += ["--ten-crop", "never", "--check-loss-every", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=REPO)
    assert proc.returncode != 0
    said = "error: training loss is nan (fp32) in epoch 0, step 2 of 4 (global step 2); lower --lr; no epoch was saved"
    assert proc.stderr.count(said) == 2, proc.stdout[-3000:] + proc.stderr[-3000:]  # each rank, the same step
    assert "epoch 0: train loss" not in proc.stdout  # stopped before the end of the epoch
    assert not (tmp_path / "ddp" / "checkpoint.pt").exists()
