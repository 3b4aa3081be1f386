"""python -m model.bench_train on CPU with tiny flags: every row is measured and the table names the device."""

from __future__ import annotations

import pytest

from model import bench_train

pytestmark = pytest.mark.slow


def test_bench_train_tiny_cpu(capsys):
    args = bench_train.get_args_parser().parse_args(
        [
            "--device",
            "cpu",
            "--batch-size",
            "4",
            "--image-size",
            "63",
            "--resize-size",
            "72",
            "--warmup",
            "1",
            "--steps",
            "1",
            "--precisions",
            "fp32",
            "bf16",
            "--memory-formats",
            "channels_last",
            "--synthetic-images",
            "16",
            "--workers",
            "0",
        ]
    )
    rows = bench_train.main(args)
    combos = {(r.source, r.precision, r.memory_format) for r in rows}
    assert combos == {(s, p, m) for s in ("tensors", "jpeg") for p in ("fp32", "bf16") for m in ("channels_last",)}
    assert all(r.images_per_s > 0 and r.batch_size == 4 for r in rows)
    out = capsys.readouterr().out
    assert "CPU" in out and "img/s" in out and "channels_last" in out
