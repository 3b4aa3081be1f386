"""Tiny ONNX files carrying our metadata, for tests that read metadata, hash files or run a toy graph.

``logits = input * 2``, computed in the file's precision: fp32, or fp16 laid out as
``export/to_onnx.py --precision fp16`` lays it out (float32 input and logits, a Cast to float16 after
the input, float16 weights, a Cast back before the logits). ONNX Runtime runs both on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.onnx_metadata import ModelMetadata, write_metadata

WEIGHTS_SHA256 = "c" * 64


def tiny_onnx(
    path: Path,
    precision: str = "fp32",
    weights_sha256: str = WEIGHTS_SHA256,
    untrained: bool = False,
    features: int = 4,
    input_size: int = 224,
) -> Path:
    """Write the graph (input (N, features) float32 -> logits) with our metadata to ``path``."""
    if precision == "fp16":
        nodes = [
            helper.make_node("Cast", ["input"], ["x16"], to=TensorProto.FLOAT16),
            helper.make_node("Mul", ["x16", "two"], ["y16"]),
            helper.make_node("Cast", ["y16"], ["logits"], to=TensorProto.FLOAT),
        ]
        two = numpy_helper.from_array(np.full((features,), 2, np.float16), "two")
    else:
        nodes = [helper.make_node("Mul", ["input", "two"], ["logits"])]
        two = numpy_helper.from_array(np.full((features,), 2, np.float32), "two")
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", features])],
        initializer=[two],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9  # what every ONNX Runtime since 1.16 reads
    write_metadata(
        model,
        ModelMetadata(
            arch="torchvision",
            labels=[f"class_{i}" for i in range(features)],
            input_size=input_size,
            resize_size=256,
            weights="untrained" if untrained else "test",
            weights_sha256=weights_sha256,
            precision=precision,
        ),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
