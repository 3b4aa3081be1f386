"""This service's model as the Open Inference Protocol sees it: its inputs and output, their
metadata object, and the checks of a parsed request against them (``oip`` is the model-free codec)."""

from __future__ import annotations

from service.oip import InferRequest, ProtocolError, RequestedOutput, Tensor

TENSOR_INPUT = "input"  # FP32 [N, 3, S, S], preprocessed as /classify preprocesses
IMAGE_INPUT = "image"  # BYTES [N], each element an encoded image file
OUTPUT = "logits"  # FP32 [N, num_classes]


def model_metadata(name: str, version: str, platform: str, input_size: int, num_classes: int) -> dict:
    """The model metadata object; -1 marks the batch dimension."""
    return {
        "name": name,
        "versions": [version],
        "platform": platform,
        "inputs": [
            {"name": TENSOR_INPUT, "datatype": "FP32", "shape": [-1, 3, input_size, input_size]},
            {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, num_classes]}],
    }


def model_input(request: InferRequest, input_size: int) -> Tensor:
    """The request's one input, checked against the signature: ``input`` FP32 [N,3,S,S] or ``image`` BYTES [N]."""
    known = {TENSOR_INPUT: ("FP32", [3, input_size, input_size]), IMAGE_INPUT: ("BYTES", [])}
    for tensor in request.inputs:
        if tensor.name not in known:
            raise ProtocolError(
                f"unknown input '{tensor.name}'; this model takes '{TENSOR_INPUT}' (FP32 "
                f"[N,3,{input_size},{input_size}]) or '{IMAGE_INPUT}' (BYTES [N])"
            )
    if len(request.inputs) != 1:
        raise ProtocolError(f"send exactly one of the inputs '{TENSOR_INPUT}' and '{IMAGE_INPUT}', not both")
    tensor = request.inputs[0]
    datatype, inner = known[tensor.name]
    if tensor.datatype != datatype:
        raise ProtocolError(f"input '{tensor.name}' must be {datatype}, got {tensor.datatype}")
    if len(tensor.shape) != 1 + len(inner) or tensor.shape[1:] != inner:
        raise ProtocolError(
            f"input '{tensor.name}' must have shape [N{''.join(f',{d}' for d in inner)}], got {tensor.shape}"
        )
    if tensor.shape[0] == 0:
        raise ProtocolError(f"input '{tensor.name}' has a batch of 0; send at least one")
    return tensor


def requested_outputs(request: InferRequest, max_classes: int) -> list[RequestedOutput]:
    """The outputs to return (every output when none is named), names and classification counts checked."""
    outputs = request.outputs if request.outputs is not None else [RequestedOutput(OUTPUT)]
    for out in outputs:
        if out.name != OUTPUT:
            raise ProtocolError(f"unknown output '{out.name}'; this model's only output is '{OUTPUT}'")
        if out.classification > max_classes:
            raise ProtocolError(
                f"output '{out.name}': classification must be at most {max_classes}, got {out.classification}"
            )
    return outputs
