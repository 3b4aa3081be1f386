"""python -m model.train end to end on CPU: it learns, it resumes exactly, it runs under torchrun
(2 gloo processes), and its checkpoints are what the service loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import train
from model.metrics_log import read_metrics
from model.synthetic import class_name
from model.weights import load_checkpoint, load_training_checkpoint

pytestmark = pytest.mark.slow

# Reduced sizes so a step is ~0.2 s on 2 cores; 64 is just above the torchvision layout's minimum (63).
SMALL = ["--device", "cpu", "--resize-size", "72", "--crop-size", "64", "--workers", "0", "--print-every-s", "30"]


def run_train(*argv: str) -> dict:
    return train.main(train.get_args_parser().parse_args([*SMALL, *argv]))


def test_training_learns_the_synthetic_classes(synthetic4, tmp_path):
    out = tmp_path / "run"
    # The paper's optimizer; He init, a lower lr and no dropout so that 36 steps are enough on a CPU
    # (with PyTorch's default init AlexNet sits at chance for its first ~50 steps).
    last = run_train(
        "--data-path",
        str(synthetic4),
        "--output-dir",
        str(out),
        "--epochs",
        "6",
        "--batch-size",
        "32",
        "--init",
        "kaiming",
        "--lr",
        "0.005",
        "--dropout",
        "0",
    )
    records = read_metrics(out / "metrics.jsonl")
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == list(range(6))
    assert [r["step"] for r in epochs] == [6 * (e + 1) for e in range(6)]  # 192 images / 32
    # Falling loss: from near ln(4) = 1.39 after the first epoch to well below it.
    assert epochs[-1]["train_loss"] < 0.6 * epochs[1]["train_loss"]
    assert epochs[-1]["val_loss"] < 0.5 * epochs[1]["val_loss"]
    assert last["val_top1_err"] <= 0.1  # >= 90% held-out accuracy, chance is 25%
    ten = [r for r in records if r["kind"] == "ten_crop"]
    assert len(ten) == 1 and ten[0]["val_images"] == 40 and ten[0]["val_top1_err"] <= 0.2
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    best = load_checkpoint(out / "best.pt")  # the service's loader accepts it
    assert best.labels == [class_name(k) for k in range(4)]
    assert best.provenance["source"] == "trained"
    assert best.provenance["dataset"] == synthetic4.name
    assert best.provenance["val_top1"] == pytest.approx(100 * (1 - min(r["val_top1_err"] for r in epochs)))
    assert best.provenance["crop_size"] == 64


def test_resume_continues_from_the_same_step_and_lr(tiny4, tmp_path):
    common = [
        "--data-path",
        str(tiny4),
        "--batch-size",
        "8",
        "--ten-crop",
        "never",
        "--lr-scheduler",
        "step",
        "--lr-step-size",
        "1",
        "--lr-gamma",
        "0.5",
    ]
    straight = run_train(*common, "--output-dir", str(tmp_path / "straight"), "--epochs", "2")
    run_train(*common, "--output-dir", str(tmp_path / "split"), "--epochs", "1")
    resumed = run_train(
        *common,
        "--output-dir",
        str(tmp_path / "split"),
        "--epochs",
        "2",
        "--resume",
        str(tmp_path / "split" / "checkpoint.pt"),
    )

    assert resumed["epoch"] == straight["epoch"] == 1
    assert resumed["step"] == straight["step"] == 8  # 32 images / 8 per step, 2 epochs
    assert resumed["lr"] == straight["lr"] == 0.005  # 0.01 halved after epoch 0
    a, a_state = load_training_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b, b_state = load_training_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert b_state["step"] == a_state["step"] == 8
    assert b_state["optimizer"]["param_groups"][0]["lr"] == a_state["optimizer"]["param_groups"][0]["lr"] == 0.0025
    # Same data order, crops, lighting and dropout after the resume: the weights agree.
    for (name, wa), wb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.allclose(wa, wb, rtol=1e-4, atol=1e-6), name
    split_log = read_metrics(tmp_path / "split" / "metrics.jsonl")
    assert [(r["epoch"], r["step"], r["lr"]) for r in split_log] == [(0, 4, 0.01), (1, 8, 0.005)]

    evaluated = run_train(*common, "--test-only", "--resume", str(tmp_path / "split" / "best.pt"))
    assert evaluated["kind"] == "ten_crop" and evaluated["val_images"] == 8

    with pytest.raises(SystemExit, match="no optimizer state"):
        run_train(
            *common,
            "--output-dir",
            str(tmp_path / "bad"),
            "--epochs",
            "3",
            "--resume",
            str(tmp_path / "split" / "best.pt"),
        )


def test_resume_with_lr_trains_at_it_from_the_resumed_epoch(tiny4, tmp_path, capsys):
    # How a diverged run is continued: from its last good checkpoint at a lower rate.
    common = ["--data-path", str(tiny4), "--batch-size", "8", "--ten-crop", "never", "--output-dir", str(tmp_path)]
    common += ["--lr-scheduler", "step", "--lr-step-size", "1", "--lr-gamma", "0.5"]
    run_train(*common, "--epochs", "1")  # trains epoch 0 at 0.01; the schedule then halves it to 0.005
    resumed = run_train(*common, "--epochs", "3", "--resume", str(tmp_path / "checkpoint.pt"), "--lr", "0.001")

    assert "lr 0.001 (--lr; the checkpoint's was 0.005)" in capsys.readouterr().out
    log = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["epoch"], r["lr"]) for r in log] == [(0, 0.01), (1, 0.001), (2, 0.0005)]  # the schedule goes on
    assert resumed["lr"] == 0.0005
    _, state = load_training_checkpoint(tmp_path / "checkpoint.pt")
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.00025)
    assert state["args"]["lr"] == 0.001


def test_torchrun_two_cpu_processes(tiny4, tmp_path):
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "model.train",
        *SMALL,
        "--data-path",
        str(tiny4),
        "--output-dir",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--ten-crop",
        "every",
        "--augment-on",
        "workers",  # the per-image lighting/normalization path, too
        "--deterministic",  # its set-up runs end to end (in a child process: the setting is global)
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("epoch 0: train loss") == 1  # only rank 0 prints
    records = read_metrics(out / "metrics.jsonl")
    assert [r["kind"] for r in records] == ["epoch", "ten_crop"]  # only rank 0 writes
    # 32 images over 2 ranks at 8 per rank and step: 2 steps, 32 images seen; val counts summed over ranks.
    assert records[0]["step"] == 2
    assert records[0]["val_images"] == records[1]["val_images"] == 8
    loaded, state = load_training_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 2 and loaded.provenance["source"] == "trained"


def test_alexnet2012_trains_under_deterministic_without_avg_pool3d(tiny4, tmp_path, monkeypatch):
    """LRN's avg_pool3d has no deterministic CUDA backward; on the CPU, a stand-in that raises shows
    that --deterministic swaps every LRN out before the first step (model/determinism.py)."""

    def refused(*args, **kwargs):
        raise RuntimeError("avg_pool3d_backward_cuda does not have a deterministic implementation")

    monkeypatch.setattr(torch.nn.functional, "avg_pool3d", refused)
    was = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    argv = ["--data-path", str(tiny4), "--output-dir", str(tmp_path), "--arch", "alexnet2012", "--crop-size", "67"]
    try:  # in this process, not a child as under torchrun: one short epoch, and the global setting put back
        record = run_train(*argv, "--epochs", "1", "--batch-size", "32", "--ten-crop", "never", "--deterministic")
    finally:
        torch.use_deterministic_algorithms(was[0])
        torch.backends.cudnn.benchmark = was[1]
    assert record["step"] == 1 and record["val_images"] == 8  # one step, forward and backward through both LRNs


def test_crop_below_the_arch_minimum_is_refused(tiny4):
    with pytest.raises(SystemExit, match="smallest input"):
        train.main(
            train.get_args_parser().parse_args(
                ["--data-path", str(tiny4), "--arch", "alexnet2012", "--crop-size", "64", "--resize-size", "72"]
            )
        )


@pytest.mark.parametrize("module", ["model.train", "model.synthetic", "model.bench_train"])
def test_cli_help_shows_defaults(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "(default:" in proc.stdout
