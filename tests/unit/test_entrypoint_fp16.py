"""The entrypoint on a CUDA host (faked): the fp16 ONNX export, and the TensorRT engine built from it.

TensorRT 11 builds fp16 only from an fp16 (strongly typed) ONNX; TensorRT 10 takes the same file the
same way, so the entrypoint has one path for both. ``to_trt.py`` is a stand-in script that records its
arguments; the exports write tiny ONNX files (tests/tiny_onnx.py).
"""

from __future__ import annotations

import pytest

from export.onnx_metadata import fp16_sibling
from service import entrypoint
from tests.tiny_onnx import tiny_onnx
from tests.unit.test_entrypoint import fake_to_trt


@pytest.fixture
def cuda_host(tmp_path, monkeypatch):
    """A model directory with an untrained fp32 export, a GPU visible to torch, stand-in tools."""
    import service.backends

    models = tmp_path / "models"
    fp32 = tiny_onnx(models / "alexnet.onnx", untrained=True)
    monkeypatch.setattr(service.backends, "cuda_available", lambda: True)
    monkeypatch.setenv("ALEXNET_MODEL_DIR", str(models))
    monkeypatch.setenv("ALEXNET_ONNX", str(fp32))
    monkeypatch.setenv("ALEXNET_ENGINE", str(models / "alexnet.plan"))
    monkeypatch.delenv("ALEXNET_CHECKPOINT", raising=False)
    exports: list[tuple[str, str]] = []

    def export_onnx(onnx, checkpoint, arch, precision="fp32"):
        exports.append((onnx.name, precision))
        tiny_onnx(onnx, precision, untrained=True)

    monkeypatch.setattr(entrypoint, "export_onnx", export_onnx)
    script = fake_to_trt(
        tmp_path,
        """
        out = Path(args[args.index("--out") + 1])
        out.write_text(" ".join(args))
    """,
    )
    monkeypatch.setattr(entrypoint, "to_trt_script", lambda: script)
    return fp32, exports


def built_from(engine_args: str) -> tuple[str, str]:
    args = engine_args.split()
    return args[args.index("--onnx") + 1], args[args.index("--precision") + 1]


def test_the_fp16_engine_comes_from_the_fp16_export(cuda_host, caplog):
    fp32, exports = cuda_host
    caplog.set_level("INFO", logger="entrypoint")
    entrypoint.prepare([])
    fp16 = fp16_sibling(fp32)
    assert exports == [("alexnet.fp16.onnx", "fp16")]
    assert built_from((fp32.parent / "alexnet.plan").read_text()) == (str(fp16), "fp16")
    caplog.clear()
    exports.clear()
    entrypoint.prepare([])  # the next start: the export is current, not made again
    assert exports == [] and f"{fp16} is present and current" in caplog.text


def test_precision_fp32_builds_from_the_fp32_onnx_and_makes_no_fp16_export(cuda_host):
    fp32, exports = cuda_host
    entrypoint.prepare(["--precision", "fp32"])
    assert exports == []
    assert built_from((fp32.parent / "alexnet.plan").read_text()) == (str(fp32), "fp32")


def test_onnxruntime_on_cuda_gets_the_fp16_export_and_no_engine(cuda_host):
    fp32, exports = cuda_host
    entrypoint.prepare(["--backend", "onnxruntime"])
    assert exports == [("alexnet.fp16.onnx", "fp16")] and not (fp32.parent / "alexnet.plan").exists()


def test_an_onnx_exported_by_hand_without_a_checkpoint_is_not_replaced_by_an_untrained_fp16(cuda_host, caplog):
    fp32, exports = cuda_host
    tiny_onnx(fp32, weights_sha256="d" * 64)  # trained weights, exported by hand; no checkpoint given
    entrypoint.prepare([])
    assert exports == [] and "pass --checkpoint" in caplog.text
    # TensorRT 10 builds it with its FP16 flag; TensorRT 11 refuses, saying to export the fp16 ONNX.
    assert built_from((fp32.parent / "alexnet.plan").read_text()) == (str(fp32), "fp16")
