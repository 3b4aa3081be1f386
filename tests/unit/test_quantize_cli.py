"""export/quantize.py's and export/bench_quantized.py's command lines: what they refuse before any work
and how they word what they measured. The quantization itself: tests/integration/test_export.py."""

from __future__ import annotations

import pytest
import torch

from export.bench_quantized import main as bench_main
from export.quantize import fused_kernels_warning, main, throughput_summary
from tests.tiny_onnx import tiny_onnx


@pytest.mark.parametrize("value", ["0", "-5"])
def test_max_calibration_images_below_one_is_a_usage_error(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--calibration-dir", str(tmp_path), "--max-calibration-images", value])
    assert exit_info.value.code == 2
    assert "--max-calibration-images: must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["2", "-0.1", "nan", "90%"])
def test_a_top1_floor_outside_0_to_1_is_a_usage_error(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--calibration-dir", str(tmp_path), "--min-top1-agreement", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--min-top1-agreement: " in err and ("must be from 0 to 1" in err or "invalid float value" in err), err


def test_an_out_folder_is_refused_before_calibration(tmp_path, capsys, monkeypatch):
    import export.quantize as quantize

    monkeypatch.setattr(quantize, "read_metadata", lambda *a: pytest.fail("read the model before checking --out"))
    onnx_path = tmp_path / "alexnet.onnx"
    onnx_path.write_bytes(b"")
    assert main(["--onnx", str(onnx_path), "--calibration-dir", str(tmp_path), "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"[quantize] error: --out {tmp_path} is a folder; pass a file name, e.g. {tmp_path / 'alexnet.int8.onnx'}"
    )


def test_a_file_that_is_not_onnx_is_one_error_line(tmp_path, capsys):
    checkpoint = tmp_path / "alexnet.pt"
    torch.save({"weights": torch.zeros(3)}, checkpoint)
    assert main(["--onnx", str(checkpoint), "--calibration-dir", str(tmp_path), "--out", str(tmp_path / "q.onnx")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"[quantize] error: {checkpoint}: not an ONNX file; pass a .onnx model written by export/to_onnx.py"
    ]


def test_an_onnx_folder_gets_the_file_to_pass(tmp_path, capsys):
    assert main(["--onnx", str(tmp_path), "--calibration-dir", str(tmp_path), "--out", str(tmp_path / "q.onnx")]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"[quantize] error: {tmp_path} is a folder; pass the fp32 ONNX file, e.g. {tmp_path / 'alexnet.onnx'}"
    ]


def test_a_missing_onnx_file_says_how_to_make_it(tmp_path, capsys):
    missing = tmp_path / "alexnet.onnx"
    assert main(["--onnx", str(missing), "--calibration-dir", str(tmp_path), "--out", str(tmp_path / "q.onnx")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"[quantize] error: {missing} not found; export it first: python export/to_onnx.py --out {missing}"
    ]


def test_the_summary_names_each_throughput():
    line = throughput_summary({"fp32": 169.4, "int8": 93.2, "speedup": 0.55, "int8_fused": 0.0}, 32)
    assert line == "int8 (unfused) 93 img/s vs fp32 169 img/s (int8 speed-up 0.55x) at batch 32"


def test_the_fused_kernels_warning_follows_the_measured_agreement():
    lost = fused_kernels_warning("no VNNI", qdq_top1=1.0, fused_top1=0.31)
    assert "drops to 31.0% (Q/DQ math 100.0%)" in lost
    same = fused_kernels_warning("no VNNI", qdq_top1=1.0, fused_top1=1.0)
    assert "is 100.0% on these images, as the Q/DQ math's, but other images can saturate" in same
    assert "wrong answers" not in same and "drops" not in same


@pytest.mark.parametrize(
    "fp32, int8, message",
    [
        ("int8", "fp32", "--fp32 {a} is the int8 model and --int8 {b} the fp32 one; swap them"),
        ("fp16", "int8", "--fp32 {a} is fp16, by its metadata"),
    ],
)
def test_bench_refuses_files_of_other_precisions(fp32, int8, message, tmp_path, capsys):
    a, b = tiny_onnx(tmp_path / "a.onnx", fp32), tiny_onnx(tmp_path / "b.onnx", int8)
    assert bench_main(["--fp32", str(a), "--int8", str(b)]) == 1
    assert capsys.readouterr().err.strip() == "[bench] error: " + message.format(a=a, b=b)
