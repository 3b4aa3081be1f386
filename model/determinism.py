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
- ``nn.LocalResponseNorm`` (the 2012 network's, after conv1 and conv2) sums its channel window with
  ``avg_pool3d``, whose CUDA backward PyTorch also refuses. Under ``--deterministic`` each one becomes a
  ``DeterministicLocalResponseNorm``: the same formula, with the window summed as ``size`` shifted slices
  of the zero-padded squares: constant pad, slice, add, pow and divide, none of them on the list of ops
  that ``torch.use_deterministic_algorithms`` refuses, their backward passes elementwise or slice
  copies. (``cumsum`` would not do: that list refuses it on CUDA for floating point.)
  It has no parameters, so checkpoints are the same; they hold state_dicts, so export and serving
  build the arch's own ``nn.LocalResponseNorm`` and never see it.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F

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


class DeterministicLocalResponseNorm(nn.Module):
    """``nn.LocalResponseNorm(size, alpha, beta, k)``, computed with ops that have deterministic CUDA backward
    passes: ``x / (k + alpha / size * sum(x_c^2 over the channel window))^beta``, the window running from
    ``c - size // 2`` to ``c + (size - 1) // 2`` with zeros beyond the edges, as ``F.local_response_norm``."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    @classmethod
    def like(cls, lrn: nn.LocalResponseNorm) -> DeterministicLocalResponseNorm:
        return cls(lrn.size, alpha=lrn.alpha, beta=lrn.beta, k=lrn.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:
            raise ValueError(f"expected an input of 3 or more dimensions (B, C, ...), got {x.dim()}")
        if x.numel() == 0:
            return x
        channels = x.shape[1]
        # In float32 whatever the input (fp16 under autocast): a sum of squares of activations past ~115
        # is past fp16's range, where torch's avg_pool3d accumulates in float32 and never overflows.
        x32 = x.float()
        # Zeros before and after the channels (dim 1); F.pad's pairs run from the last dim backwards.
        squares = F.pad(
            x32 * x32, (0, 0) * (x.dim() - 2) + (self.size // 2, (self.size - 1) // 2)
        )  # (B, C+size-1, ...)
        window = squares.narrow(1, 0, channels)
        for offset in range(1, self.size):
            window = window + squares.narrow(1, offset, channels)  # (B, C, ...)
        return (x32 / (window / self.size * self.alpha + self.k).pow(self.beta)).to(x.dtype)


def replace_local_response_norms(model: nn.Module) -> list[str]:
    """Swap each ``nn.LocalResponseNorm`` in ``model`` for a ``DeterministicLocalResponseNorm`` with the
    same settings; returns their names. The state_dict is unchanged (neither has parameters or buffers)."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.LocalResponseNorm)]
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, DeterministicLocalResponseNorm.like(getattr(owner, child)))
    return names
