"""Our torchvision-layout AlexNet against torchvision's own, with the same weights, on the GPU.

Needs the full torchvision (its compiled ops load only beside a matching CUDA torch), so it runs on a
GPU host such as the lent H100; skipped elsewhere. On a GPU host under ``CI=true`` a torchvision that
does not import fails the test instead of skipping it.
"""

import pytest

from tests.conftest import import_or_skip

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this host"),
]


def test_same_weights_same_logits_as_torchvision_alexnet():
    tv_models = import_or_skip("torchvision.models", "torchvision is not importable here")
    from model.alexnet import build

    torch.manual_seed(0)
    theirs = tv_models.alexnet(weights=None).eval().cuda()
    ours = build("torchvision").eval().cuda()
    ours.load_state_dict(theirs.state_dict())  # same key layout, strict
    x = torch.randn(8, 3, 224, 224, device="cuda")
    with torch.inference_mode():
        expected, got = theirs(x), ours(x)
    assert expected.abs().max() > 0  # a real output, not zeros
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
