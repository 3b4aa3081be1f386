"""model/determinism.py: what ``--deterministic`` changes so that training can run under PyTorch's
deterministic algorithms on CUDA (shown on the CPU: the swap, its numbers, and the refusal)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from model.alexnet import build
from model.determinism import CUBLAS_WORKSPACE, drop_identity_pools, use_deterministic_algorithms

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
