"""python -m model.train refuses what would lose a run or cannot work, before it touches anything:
one line naming what to do, exit 2."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import train
from model.metrics_log import read_metrics
from model.weights import load_training_checkpoint
from tests.integration.test_train import SMALL, run_train

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MECHANICS = ["--batch-size", "8", "--ten-crop", "never"]


def test_a_second_run_into_an_output_dir_holding_one_is_refused(tiny4, tmp_path):
    out = tmp_path / "run"
    run_train("--data-path", str(tiny4), "--output-dir", str(out), "--epochs", "1", *MECHANICS)
    before = {name: (out / name).read_bytes() for name in ("checkpoint.pt", "best.pt", "metrics.jsonl")}

    with pytest.raises(
        SystemExit, match=r"already holds a run \(checkpoint.pt, epoch 0\); add --resume .*checkpoint.pt"
    ):
        run_train("--data-path", str(tiny4), "--output-dir", str(out), "--epochs", "2", *MECHANICS)
    assert {name: (out / name).read_bytes() for name in before} == before  # nothing touched
    assert len(read_metrics(out / "metrics.jsonl")) == 1

    # The command line says it once, with exit 2 and no traceback.
    proc = subprocess.run(
        [sys.executable, "-m", "model.train", *SMALL, "--data-path", str(tiny4), "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"error: {out} already holds a run (checkpoint.pt, epoch 0); add --resume {out / 'checkpoint.pt'} "
        "to continue it, or choose another --output-dir"
    )

    # --resume continues it; --test-only writes nothing, so it needs no check.
    resumed = run_train(
        "--data-path", str(tiny4), "--output-dir", str(out), "--epochs", "2", *MECHANICS,
        "--resume", str(out / "checkpoint.pt"),
    )  # fmt: skip
    assert resumed["epoch"] == 1
    evaluated = run_train(
        "--data-path", str(tiny4), "--output-dir", str(out), *MECHANICS, "--test-only", "--resume", str(out / "best.pt")
    )  # fmt: skip
    assert evaluated["kind"] == "ten_crop"


@pytest.fixture(scope="module")
def trained(tiny4, tmp_path_factory) -> Path:
    """One epoch on tiny4 at 64/72 px with --dropout 0.1: its checkpoint.pt records all three."""
    out = tmp_path_factory.mktemp("trained")
    run_train("--data-path", str(tiny4), "--output-dir", str(out), "--epochs", "1", "--dropout", "0.1", *MECHANICS)
    return out


def _checked(*argv: str):
    args = train.get_args_parser().parse_args(list(argv))
    train.check_args(args)
    return args


def test_resume_takes_what_the_checkpoint_recorded(trained, tiny4):
    common = ["--data-path", str(tiny4), "--output-dir", str(trained), "--epochs", "2"]
    args = _checked(*common, "--resume", str(trained / "checkpoint.pt"))
    assert (args.arch, args.resize_size, args.crop_size, args.dropout) == ("torchvision", 72, 64, 0.1)
    # best.pt records the sizes (not dropout): --test-only evaluates at them, or at sizes given on purpose.
    args = _checked(*common, "--test-only", "--resume", str(trained / "best.pt"))
    assert (args.resize_size, args.crop_size, args.dropout) == (72, 64, 0.5)
    args = _checked(*common, "--test-only", "--resume", str(trained / "best.pt"), "--crop-size", "66")
    assert (args.resize_size, args.crop_size) == (72, 66)
    # Without --resume, the defaults as before.
    args = _checked("--data-path", str(tiny4), "--output-dir", str(trained / "other"))
    assert (args.arch, args.resize_size, args.crop_size, args.dropout) == ("torchvision", 256, 224, 0.5)


@pytest.mark.parametrize(
    ("flag", "value", "recorded"),
    [
        ("--crop-size", "66", "64"),
        ("--resize-size", "80", "72"),
        ("--dropout", "0.5", "0.1"),
        ("--arch", "alexnet2012", "torchvision"),
    ],
)
def test_resume_refuses_a_flag_that_contradicts_the_checkpoint(trained, tiny4, flag, value, recorded):
    checkpoint = trained / "checkpoint.pt"
    with pytest.raises(
        SystemExit, match=rf"^error: {flag} {value} differs from {recorded}, which .*checkpoint.pt was trained with"
    ):
        _checked("--data-path", str(tiny4), "--resume", str(checkpoint), flag, value)


def test_resume_refuses_other_class_names(trained, tiny4, tmp_path):
    other = tmp_path / "renamed"
    shutil.copytree(tiny4, other)
    for split in ("train", "val"):
        first = sorted((other / split).iterdir())[0]
        first.rename(first.with_name("a-renamed-class"))
    for extra in ([], ["--test-only"]):
        with pytest.raises(SystemExit, match=r"was trained on 4 classes .*has 4 classes .*\(class 0: 'c000-"):
            run_train(
                "--data-path", str(other), "--output-dir", str(trained), "--epochs", "2", *MECHANICS, *extra,
                "--resume", str(trained / "checkpoint.pt"),
            )  # fmt: skip


def test_an_interrupted_save_loses_neither_the_record_nor_best(tiny4, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_save = train.save_checkpoint

    def ctrl_c_at_epoch_1s_checkpoint(path, *args, **kwargs):
        if Path(path).name == "checkpoint.pt" and kwargs["epoch"] == 1:
            raise KeyboardInterrupt
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(train, "save_checkpoint", ctrl_c_at_epoch_1s_checkpoint)
    common = ["--data-path", str(tiny4), "--output-dir", str(out), "--epochs", "2", *MECHANICS]
    with pytest.raises(SystemExit) as exited:
        run_train(*common, "--lr", "0")  # lr 0: epoch 1 is no better, so best.pt is epoch 0's
    assert exited.value.code == 130
    checkpoint = out / "checkpoint.pt"
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"interrupted in epoch 1; resume with --resume {checkpoint} (continues at epoch 1)"
    )
    assert load_training_checkpoint(checkpoint)[1]["epoch"] == 0
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [0, 1]  # written before checkpoint.pt
    monkeypatch.undo()

    run_train(*common, "--lr", "0", "--resume", str(checkpoint))  # redoes epoch 1; its first record dropped
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [0, 1]
    assert load_training_checkpoint(checkpoint)[1]["epoch"] == 1


def test_ctrl_c_before_any_epoch_is_saved(tiny4, tmp_path, monkeypatch, capsys):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_one_epoch", ctrl_c)
    with pytest.raises(SystemExit) as exited:
        run_train("--data-path", str(tiny4), "--output-dir", str(tmp_path / "run"), *MECHANICS)
    assert exited.value.code == 130
    assert capsys.readouterr().err.splitlines()[-1] == "interrupted before the first epoch was saved: nothing to resume"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-b", "0"], "error: --batch-size must be at least 1, got 0"),
        (["--workers", "-1"], "error: --workers must be at least 0, got -1"),
        (["--lr", "-0.1"], "error: --lr must be at least 0, got -0.1"),
        (["--device", "gpu"], "error: --device gpu: not a device; use cuda, cuda:N or cpu"),
        (
            ["--output-dir", "{tmp}/notes/run"],
            "error: --output-dir {tmp}/notes/run: {tmp}/notes is a file, not a folder",
        ),
        (["--resume", "{tmp}"], "error: --resume {tmp} is a folder; pass a checkpoint file, e.g. {tmp}/checkpoint.pt"),
        (["--resume", "{tmp}/typo.pt"], "error: --resume {tmp}/typo.pt: no such checkpoint file"),
    ],
)
def test_bad_flags_are_one_line_exit_2(tiny4, tmp_path, argv, message, capsys):
    (tmp_path / "notes").write_text("a file where a folder would go")
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    assert train.cli([*SMALL, "--data-path", str(tiny4), "--output-dir", str(tmp_path), *argv]) == 2
    assert capsys.readouterr().err == message.replace("{tmp}", str(tmp_path)) + "\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host without CUDA")
def test_cuda_without_cuda_is_refused(tiny4, tmp_path, capsys):
    assert train.cli(["--data-path", str(tiny4), "--output-dir", str(tmp_path), "--device", "cuda"]) == 2
    assert capsys.readouterr().err == "error: --device cuda, but CUDA is not available here; use --device cpu\n"


def test_data_path_must_hold_train_and_val(tiny4, tmp_path, capsys):
    common = [*SMALL, "--output-dir", str(tmp_path / "run")]
    assert train.cli([*common, "--data-path", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == f"error: --data-path {tmp_path / 'nowhere'}: no such directory\n"
    assert train.cli([*common, "--data-path", str(tiny4 / "train")]) == 2
    assert capsys.readouterr().err == (
        f"error: --data-path {tiny4 / 'train'} must contain train/ and val/ (each <class>/<image>); "
        f"it has no train/ or val/; did you mean --data-path {tiny4}?\n"
    )


def test_a_diverging_loss_says_to_lower_the_lr(tiny4, tmp_path, capsys):
    # 4 steps, fewer than --check-loss-every (100): found when the epoch ends. Sooner: test_train_diverged.
    argv = [*SMALL, *MECHANICS, "--data-path", str(tiny4), "--output-dir", str(tmp_path / "run"), "--epochs", "1"]
    assert train.cli([*argv, "--lr", "1e6"]) == 1
    assert re.fullmatch(
        r"error: training loss is (nan|inf) \(fp32\) in epoch 0, step ([1-4]) of 4 \(global step \2\); lower --lr; "
        "no epoch was saved",
        capsys.readouterr().err.splitlines()[-1],
    )


def test_nothing_left_to_train_is_refused(trained, tiny4, tmp_path, capsys):
    argv = [*SMALL, *MECHANICS, "--data-path", str(tiny4)]
    checkpoint = trained / "checkpoint.pt"
    assert train.cli([*argv, "--output-dir", str(trained), "--epochs", "1", "--resume", str(checkpoint)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {checkpoint} holds epoch 0, so --epochs 1 leaves nothing to train; raise --epochs above 1"
    )
    assert train.cli([*argv, "--output-dir", str(tmp_path / "run"), "--epochs", "0"]) == 2
    assert (
        capsys.readouterr().err.splitlines()[-1] == "error: --epochs 0 leaves nothing to train; raise --epochs above 0"
    )
