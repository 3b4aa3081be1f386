"""model/determinism.py: what ``--deterministic`` changes so that training can run under PyTorch's
deterministic algorithms on CUDA (shown on the CPU: the swaps, their numbers, and the refusal)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from model.alexnet import LRN_ALPHA, LRN_BETA, LRN_K, LRN_SIZE, build
from model.determinism import (
    CUBLAS_WORKSPACE,
    DeterministicLocalResponseNorm,
    drop_identity_pools,
    replace_local_response_norms,
    use_deterministic_algorithms,
)

CUDA = torch.device("cuda")  # only its .type is read: nothing here runs on a GPU


@pytest.mark.parametrize(("arch", "size"), [("torchvision", 224), ("alexnet2012", 227)])
def test_the_pool_that_changes_nothing_at_the_archs_crop_size_becomes_an_identity(arch, size):
    torch.manual_seed(0)
    model = build(arch, num_classes=10)
    x = torch.randn(2, 3, size, size)
    before = model.eval()(x)
    keys = set(model.state_dict())
    assert drop_identity_pools(model, size, CUDA) == ["avgpool"]
    assert isinstance(model.avgpool, nn.Identity) and not model.training  # left in the mode it was found in
    assert set(model.state_dict()) == keys  # checkpoints load either way
    assert torch.equal(model.eval()(x), before)


def test_a_pool_that_pools_is_refused_on_cuda_and_kept_elsewhere():
    model = build("torchvision", num_classes=10)
    with pytest.raises(ValueError, match=r"avgpool pools 1x1 to 6x6 at crop size 64.*no deterministic CUDA backward"):
        drop_identity_pools(model, 64, CUDA)
    assert drop_identity_pools(model, 64, torch.device("cpu")) == []
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d) and model.training  # as built: training mode


def test_cublas_gets_its_fixed_workspace_on_cuda_only(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    was = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    try:
        use_deterministic_algorithms(torch.device("cpu"))
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        use_deterministic_algorithms(CUDA)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    finally:
        torch.use_deterministic_algorithms(was[0])
        torch.backends.cudnn.benchmark = was[1]


@pytest.mark.parametrize(
    ("size", "alpha", "beta", "k", "shape"),
    [
        (LRN_SIZE, LRN_ALPHA * LRN_SIZE, LRN_BETA, LRN_K, (2, 96, 9, 9)),  # alexnet2012's, as _paper_lrn builds it
        (4, 1e-2, 0.5, 1.0, (2, 16, 5, 5)),  # even: one more channel after than before
        (3, 1e-3, 0.75, 1.0, (2, 8, 11)),  # 3-D input
        (7, 1e-2, 0.75, 1.0, (1, 4, 3, 3, 3)),  # window wider than the channels; 5-D input
    ],
)
def test_deterministic_lrn_matches_torchs_forward_and_input_gradient(size, alpha, beta, k, shape):
    torch.manual_seed(0)
    x = (torch.randn(shape) * 20).requires_grad_()  # large enough that alpha * sum(x^2) is not lost beside k
    grad_out = torch.randn(shape)
    outs, grads = [], []
    for lrn in (
        nn.LocalResponseNorm(size, alpha=alpha, beta=beta, k=k),
        DeterministicLocalResponseNorm(size, alpha, beta, k),
    ):
        out = lrn(x)
        (grad,) = torch.autograd.grad(out, x, grad_out)
        outs.append(out)
        grads.append(grad)
    torch.testing.assert_close(outs[1], outs[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def test_deterministic_lrn_sums_fp16_activations_without_overflow():
    """Under fp16 autocast the window's sum of squares passes fp16's 65504 at activations of ~115."""
    lrn = DeterministicLocalResponseNorm(LRN_SIZE, LRN_ALPHA * LRN_SIZE, LRN_BETA, LRN_K)
    x = torch.full((1, 8, 2, 2), 120.0)
    want = nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA * LRN_SIZE, beta=LRN_BETA, k=LRN_K)(x)
    got = lrn(x.half())
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), want, atol=0.05, rtol=2e-3)


def _backward_ops(out: torch.Tensor) -> set[str]:
    seen, todo = set(), [out.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            todo.extend(next_fn for next_fn, _ in fn.next_functions)
    return {type(fn).__name__ for fn in seen}


def test_every_lrn_of_alexnet2012_is_replaced_and_its_output_is_unchanged():
    torch.manual_seed(0)
    model = build("alexnet2012", num_classes=10).eval()
    x = torch.randn(1, 3, 227, 227, requires_grad=True)
    before = model(x)
    assert "AvgPool3DBackward0" in _backward_ops(before)  # the op PyTorch refuses on CUDA: LRN's window sum
    keys = set(model.state_dict())
    assert replace_local_response_norms(model) == ["features.2", "features.6"]
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in model.modules())
    assert isinstance(model.features[2], DeterministicLocalResponseNorm) and model.features[2].k == LRN_K
    assert set(model.state_dict()) == keys  # checkpoints load either way
    after = model(x)
    assert "AvgPool3DBackward0" not in _backward_ops(after)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-5)


def test_the_torchvision_arch_has_no_lrn_to_replace():
    model = build("torchvision", num_classes=10)
    modules = list(model.modules())
    assert replace_local_response_norms(model) == []
    assert list(model.modules()) == modules
