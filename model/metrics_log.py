"""The training run's record: one JSON object per line per epoch (``metrics.jsonl``) and a PNG plot
of loss and top-1/top-5 error over epochs, redrawn after every epoch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends epoch records to ``path``. On resume from epoch E, records after E (written by the
    interrupted run after its last checkpoint) are dropped so the log matches the weights."""

    def __init__(self, path: str | Path, resume_epoch: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_epoch is None:
            self.path.write_text("")
        else:
            kept = [r for r in read_metrics(self.path) if r.get("epoch", -1) <= resume_epoch]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(records: list[dict[str, Any]], out: str | Path) -> Path:
    """Two panels over epochs: train/val loss, and val top-1/top-5 error in percent."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training hosts
    import matplotlib.pyplot as plt

    epochs = [r for r in records if r.get("kind", "epoch") == "epoch"]
    x = [r["epoch"] + 1 for r in epochs]
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(x, [r["train_loss"] for r in epochs], marker=".", label="train")
    ax_loss.plot(x, [r["val_loss"] for r in epochs], marker=".", label="val (center crop)")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    for key, label in (("val_top1_err", "top-1"), ("val_top5_err", "top-5")):
        ax_err.plot(x, [100 * r[key] for r in epochs], marker=".", label=f"val {label} (center crop)")
    for r in records:
        if r.get("kind") == "ten_crop":
            ax_err.scatter(
                [r["epoch"] + 1] * 2,
                [100 * r["val_top1_err"], 100 * r["val_top5_err"]],
                marker="*",
                s=80,
                color="k",
                zorder=3,
                label="10-crop",
            )
    ax_err.set(xlabel="epoch", ylabel="error (%)", title="validation error")
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
