"""``pip install .`` without an extra has no ONNX Runtime: every place that needs it says which extra
to install (export stops before its minute of work; the service skips the backend with that reason)."""

from __future__ import annotations

import sys

import pytest

from export.ort import import_onnxruntime
from service.backends import select_backend
from service.errors import BackendUnavailable
from service.settings import Settings


@pytest.fixture
def no_onnxruntime(monkeypatch):
    """As after a plain ``pip install .``: ``import onnxruntime`` fails."""
    for name in [m for m in sys.modules if m == "onnxruntime" or m.startswith("onnxruntime.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)


def test_the_import_error_names_the_extras(no_onnxruntime):
    with pytest.raises(ModuleNotFoundError, match=r"onnxruntime is not installed: .*\.\[cpu\].*\.\[gpu\]"):
        import_onnxruntime()


def test_export_says_so_before_exporting(no_onnxruntime, tmp_path, capsys):
    from export.to_onnx import export_and_verify

    with pytest.raises(ModuleNotFoundError, match=r"\[cpu\]"):
        export_and_verify(None, tmp_path / "alexnet.onnx")
    assert "exporting" not in capsys.readouterr().out  # it stopped before the export itself
    assert not (tmp_path / "alexnet.onnx").exists()


def test_the_service_names_the_extra_and_serves_with_torch(onnx_model, no_onnxruntime):
    with pytest.raises(BackendUnavailable, match=r"\[cpu\]"):
        select_backend(Settings(onnx=onnx_model, backend="onnxruntime"))
    selection = select_backend(Settings(onnx=onnx_model, max_batch_size=2, warmup=False))
    assert selection.backend.name == "torch"
    assert "pip install '.[cpu]'" in selection.skipped["onnxruntime"]
    selection.backend.close()


def _one_error_line(capsys, tag: str) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"[{tag}] error: "), lines
    return lines[0]


def test_to_onnx_says_so_in_one_line_and_exits_1(no_onnxruntime, tmp_path, capsys):
    from export.to_onnx import main

    assert main(["--out", str(tmp_path / "alexnet.onnx")]) == 1
    assert "onnxruntime is not installed: " in _one_error_line(capsys, "to_onnx")


def test_quantize_says_so_in_one_line_and_exits_1(no_onnxruntime, monkeypatch, tmp_path, capsys):
    monkeypatch.delitem(sys.modules, "export.quantize", raising=False)  # imported again without onnxruntime
    from export.quantize import main

    assert main(["--onnx", str(tmp_path / "a.onnx"), "--calibration-dir", str(tmp_path)]) == 1
    assert "pip install '.[cpu]'" in _one_error_line(capsys, "quantize")


@pytest.mark.parametrize(
    "flags, saturates",
    [
        ("fpu sse2 avx avx2 fma", True),  # AVX2 only: many AMD EPYC (Zen 1-3), Xeons before Cascade Lake
        ("fpu sse2 avx avx2 avx512f avx512_vnni", False),
        ("fpu sse2 avx avx2 avx_vnni", False),
        ("fpu sse2 avx avx2 amx_int8 amx_tile", False),
    ],
)
def test_int8_kernels_saturate_on_x86_without_vnni(monkeypatch, flags, saturates):
    import platform

    from export.ort import int8_kernels_saturate

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    why = int8_kernels_saturate(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert (why is not None) == saturates
    assert why is None or "VNNI" in why
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert int8_kernels_saturate(f"flags\t\t: {flags}\n") is None
