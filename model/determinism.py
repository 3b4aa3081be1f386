"""``--deterministic`` training: PyTorch's deterministic algorithms, and what AlexNet needs to run under
them on CUDA at all.

- cuBLAS (the Linear layers) is deterministic only with a fixed workspace: without
  ``CUBLAS_WORKSPACE_CONFIG`` (``:4096:8``) set before cuBLAS starts, PyTorch raises at the first
  matmul on CUDA.
- ``nn.AdaptiveAvgPool2d`` has no deterministic CUDA backward, and PyTorch refuses it even where it
  changes nothing: AlexNet's 6x6 pool on the 6x6 map that its own crop size gives (224; 227 for the
  2012 network). There it is swapped for ``nn.Identity``: the same numbers, and the same state_dict (the
  pool has no parameters). At other crop sizes it really pools, so on CUDA the run is refused up front
  instead of at the first backward pass.
"""

from __future__ import annotations

import os

import torch
from torch import nn

CUBLAS_WORKSPACE = ":4096:8"


def use_deterministic_algorithms(device: torch.device) -> None:
    """Before any CUDA work: deterministic kernels only (slower), cuDNN's autotuner off."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def drop_identity_pools(model: nn.Module, input_size: int, device: torch.device) -> list[str]:
    """Swap each ``nn.AdaptiveAvgPool2d`` whose output is its input, for a ``input_size`` square image,
    for ``nn.Identity``; returns their names. On CUDA, a pool that does pool is a ValueError naming it.
    Call it before the model moves to the device: it runs one image through on the CPU to see the shapes."""
    pools = {name: m for name, m in model.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)}
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = [
        m.register_forward_hook(lambda m, args, out, name=name: shapes.__setitem__(name, (args[0].shape, out.shape)))
        for name, m in pools.items()
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, input_size, input_size))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    replaced, pooling = [], []
    for name, (before, after) in shapes.items():
        if tuple(before) == tuple(after):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
            replaced.append(name)
        else:
            pooling.append(f"{name} pools {before[-2]}x{before[-1]} to {after[-2]}x{after[-1]}")
    if pooling and device.type == "cuda":
        raise ValueError(
            f"--deterministic on CUDA: {'; '.join(pooling)} at crop size {input_size}, and PyTorch has no "
            "deterministic CUDA backward for AdaptiveAvgPool2d; use the arch's own crop size (the default), "
            "where the pool changes nothing, or train without --deterministic"
        )
    return replaced
