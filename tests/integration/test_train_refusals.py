"""python -m model.train refuses what would lose a run or cannot work, before it touches anything:
one line naming what to do, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from model.metrics_log import read_metrics
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
