#!/usr/bin/env bash
# A short real training run on CUDA that must learn: a synthetic 10-class set, 4 epochs, then
# --resume to 8 (the optimizer's momentum and the fp16 scaler come back onto the GPU), then checks.
#   bash scripts/gpu_train_check.sh DIR
set -euo pipefail
DIR=${1:?usage: gpu_train_check.sh DIR}
PY=${PYTHON:-python3}
"$PY" -m model.synthetic --out "$DIR/data" --classes 10 --train-per-class 100 --val-per-class 20 --size 256
common=(--data-path "$DIR/data" --output-dir "$DIR/run" --device cuda --batch-size 32 --workers 8
        --init kaiming --lr 0.005 --dropout 0 --precision fp16 --channels-last --ten-crop never --print-every-s 5)
"$PY" -m model.train "${common[@]}" --epochs 4
"$PY" -m model.train "${common[@]}" --epochs 8 --resume "$DIR/run/checkpoint.pt"
"$PY" - "$DIR/run/metrics.jsonl" <<'PY'
import json, sys
from model.metrics_log import read_metrics
epochs = [r for r in read_metrics(sys.argv[1]) if r["kind"] == "epoch"]
summary = {"epochs": [r["epoch"] for r in epochs], "train_loss": [round(r["train_loss"], 4) for r in epochs],
           "val_top1_err": [round(r["val_top1_err"], 4) for r in epochs],
           "train_img_per_s": [round(r.get("train_img_per_s", 0), 1) for r in epochs]}
print("TRAIN_SUMMARY " + json.dumps(summary))
assert summary["epochs"] == list(range(8)), f"epochs {summary['epochs']}: the resumed run must continue at 4"
assert epochs[-1]["train_loss"] < 0.6 * epochs[0]["train_loss"], "training loss did not fall"
# 256 steps on 1,000 images. On an H100 (2026-11-27, two runs of this recipe) held-out error fell from chance
# (0.9) to 0.25-0.29, but it is noisy from epoch to epoch and one run drifted back up
# to 0.64 by epoch 7, so the bar is "reached far below chance and stayed below it", not a figure.
best, last = min(r["val_top1_err"] for r in epochs), epochs[-1]["val_top1_err"]
assert best <= 0.4 and last <= 0.75, f"val top-1 error best {best:.2f} (bar 0.4), last {last:.2f} (bar 0.75); chance 0.9"
PY
