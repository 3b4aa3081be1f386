"""model/alexnet.py and model/labels.py: shapes, sizes, parameter counts, the paper's init, labels."""

from __future__ import annotations

import pytest
import torch

from model.alexnet import ARCHS, arch_spec, build, count_parameters
from model.labels import IMAGENET_CLASSES_FILE, imagenet_labels, read_labels


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_logits_shape_at_input_size(arch):
    spec = arch_spec(arch)
    model = build(arch).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 3, spec.input_size, spec.input_size))
    assert out.shape == (2, 1000)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("arch", "expected"), [("torchvision", 61_100_840), ("alexnet2012", 60_965_224)])
def test_parameter_counts(arch, expected):
    assert count_parameters(build(arch)) == expected == arch_spec(arch).num_params


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_min_input_size_is_the_smallest_that_works(arch):
    spec = arch_spec(arch)
    model = build(arch, num_classes=3).eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 3, spec.min_input_size, spec.min_input_size)).shape == (1, 3)
        with pytest.raises(RuntimeError):
            model(torch.randn(1, 3, spec.min_input_size - 1, spec.min_input_size - 1))


def test_torchvision_state_dict_key_layout():
    keys = set(build("torchvision").state_dict())
    expected = {f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")}
    expected |= {f"classifier.{i}.{p}" for i in (1, 4, 6) for p in ("weight", "bias")}
    assert keys == expected


def test_alexnet2012_paper_initialization():
    torch.manual_seed(0)
    model = build("alexnet2012")
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.classifier if isinstance(m, torch.nn.Linear)]
    # Paper, section 5: biases 1 in conv2, conv4, conv5 and the hidden FC layers, 0 elsewhere.
    bias_ones = [bool((layer.bias == 1).all()) for layer in convs + linears]
    bias_zeros = [bool((layer.bias == 0).all()) for layer in convs + linears]
    assert bias_ones == [False, True, False, True, True, True, True, False]
    assert bias_zeros == [not b for b in bias_ones]
    big = linears[0].weight  # 37.7M samples of N(0, 0.01)
    assert abs(big.mean().item()) < 1e-4
    assert big.std().item() == pytest.approx(0.01, rel=0.01)


def test_build_refuses_unknown_arch_and_bad_classes():
    with pytest.raises(ValueError, match="alexnet2012"):
        build("vgg")
    with pytest.raises(ValueError, match="num_classes"):
        build("torchvision", num_classes=0)


def test_imagenet_labels_are_1000_unique():
    labels = imagenet_labels()
    assert len(labels) == 1000 == len(set(labels))
    assert labels[0] == "tench" and labels[-1] == "toilet tissue"
    assert list(labels) == read_labels(IMAGENET_CLASSES_FILE)


def test_read_labels_refuses_duplicates_and_blanks(tmp_path):
    (tmp_path / "dup.txt").write_text("a\nb\na\n")
    (tmp_path / "blank.txt").write_text("a\n\nb\n")
    with pytest.raises(ValueError, match="duplicate"):
        read_labels(tmp_path / "dup.txt")
    with pytest.raises(ValueError, match="blank"):
        read_labels(tmp_path / "blank.txt")


def test_kaiming_init_scales_by_fan_in():
    from model.alexnet import kaiming_init_

    torch.manual_seed(0)
    model = kaiming_init_(build("torchvision", num_classes=10))
    fc1, out = model.classifier[1], model.classifier[6]
    assert fc1.weight.std().item() == pytest.approx((2 / 9216) ** 0.5, rel=0.01)
    assert out.weight.std().item() == pytest.approx(0.01, rel=0.05)
    conv1 = model.features[0]
    assert conv1.weight.std().item() == pytest.approx((2 / (3 * 11 * 11)) ** 0.5, rel=0.05)
    assert all(bool((m.bias == 0).all()) for m in (conv1, fc1, out))
