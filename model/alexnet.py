"""AlexNet, in the two layouts people mean by the name.

- ``torchvision``: the "one weird trick" variant (Krizhevsky 2014, arXiv:1404.5997) that torchvision
  publishes. 64-192-384-256-256 filters, ``AdaptiveAvgPool2d(6)``, 224x224 input. Its state_dict keys
  (``features.0 ... classifier.6``) are torchvision's, so the published ImageNet checkpoint
  (``alexnet-owt-7be5be79.pth``) loads unchanged.
- ``alexnet2012``: the network of the paper (Krizhevsky, Sutskever, Hinton, NeurIPS 2012).
  96-256-384-384-256 filters, conv2/4/5 grouped in two as when the model was split over two GPUs,
  local response normalization after conv1 and conv2, overlapping 3x3/2 max pooling, 227x227 input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# Paper, section 3.3: b = a / (k + alpha * sum(a^2))^beta with k=2, n=5, alpha=1e-4, beta=0.75.
# torch.nn.LocalResponseNorm divides alpha by n, so it is given alpha * n to compute the paper's formula.
LRN_SIZE = 5
LRN_ALPHA = 1e-4
LRN_BETA = 0.75
LRN_K = 2.0


def classifier_head(num_classes: int, dropout: float) -> nn.Sequential:
    """The fully connected layers both layouts share (keys ``classifier.0 ... classifier.6``)."""
    return nn.Sequential(
        nn.Dropout(p=dropout),
        nn.Linear(256 * 6 * 6, 4096),  # (B, 9216) -> (B, 4096)
        nn.ReLU(inplace=True),
        nn.Dropout(p=dropout),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes),  # (B, num_classes) logits
    )


class AlexNet(nn.Module):
    """torchvision's AlexNet (one weird trick); key layout identical to ``torchvision.models.AlexNet``."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),  # (B, 64, 55, 55)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 64, 27, 27)
            nn.Conv2d(64, 192, kernel_size=5, padding=2),  # (B, 192, 27, 27)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 192, 13, 13)
            nn.Conv2d(192, 384, kernel_size=3, padding=1),  # (B, 384, 13, 13)
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # (B, 256, 13, 13)
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),  # (B, 256, 13, 13)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 256, 6, 6)
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))  # identity at 224; lets other sizes through
        self.classifier = classifier_head(num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)  # (B, 9216)
        return self.classifier(x)


def _paper_lrn() -> nn.LocalResponseNorm:
    return nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA * LRN_SIZE, beta=LRN_BETA, k=LRN_K)


class AlexNet2012(nn.Module):
    """The 2012 paper's AlexNet as one module; ``groups=2`` reproduces the two-GPU connectivity."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, kernel_size=11, stride=4),  # (B, 96, 55, 55)
            nn.ReLU(inplace=True),
            _paper_lrn(),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 96, 27, 27)
            nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=2),  # (B, 256, 27, 27)
            nn.ReLU(inplace=True),
            _paper_lrn(),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 256, 13, 13)
            nn.Conv2d(256, 384, kernel_size=3, padding=1),  # (B, 384, 13, 13), crosses the GPUs
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=2),  # (B, 384, 13, 13)
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=2),  # (B, 256, 13, 13)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 256, 6, 6)
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))  # identity at 227; lets reduced sizes train
        self.classifier = classifier_head(num_classes, dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Paper, section 5: weights ~ N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden
        fully connected layers (to give ReLUs positive inputs early), 0 elsewhere."""
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        linears = [m for m in self.classifier if isinstance(m, nn.Linear)]
        ones = {convs[1], convs[3], convs[4], linears[0], linears[1]}
        for layer in convs + linears:
            nn.init.normal_(layer.weight, mean=0.0, std=0.01)
            assert layer.bias is not None
            nn.init.constant_(layer.bias, 1.0 if layer in ones else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)  # (B, 9216)
        return self.classifier(x)


@dataclass(frozen=True)
class ArchSpec:
    """What a caller needs to know about an architecture without building it."""

    name: str
    module: Callable[..., nn.Module]
    input_size: int  # square crop fed to the network, pixels
    resize_size: int  # shorter side is resized to this before the center crop, pixels
    # Smallest square input for which the last max pool still has a 3x3 window, pixels
    # (torchvision: conv1 pads 2, so (63 + 4 - 11) // 4 + 1 = 15 -> 7 -> 3; alexnet2012: no pad, 67).
    min_input_size: int
    num_params: int  # with 1000 classes
    source: str
    top1_accuracy: float | None = None  # published ImageNet-1k validation figures, percent
    top5_accuracy: float | None = None
    accuracy_source: str | None = None


ARCHS: dict[str, ArchSpec] = {
    "torchvision": ArchSpec(
        name="torchvision",
        module=AlexNet,
        input_size=224,
        resize_size=256,
        min_input_size=63,
        num_params=61_100_840,  # torchvision AlexNet_Weights.IMAGENET1K_V1.meta["num_params"]
        source="Krizhevsky 2014, One weird trick for parallelizing CNNs, arXiv:1404.5997",
        top1_accuracy=56.522,
        top5_accuracy=79.066,
        accuracy_source="torchvision AlexNet_Weights.IMAGENET1K_V1 (single center crop)",
    ),
    "alexnet2012": ArchSpec(
        name="alexnet2012",
        module=AlexNet2012,
        input_size=227,
        resize_size=256,
        min_input_size=67,
        # 34,944 + 307,456 + 885,120 + 663,936 + 442,624 (conv) + 37,752,832 + 16,781,312 + 4,097,000 (fc)
        num_params=60_965_224,
        source="Krizhevsky, Sutskever, Hinton 2012, ImageNet Classification with Deep CNNs, NeurIPS",
        top1_accuracy=100 - 40.7,
        top5_accuracy=100 - 18.2,
        accuracy_source="paper, Table 2, one CNN, ILSVRC-2012 validation (10-crop)",
    ),
}


def arch_spec(arch: str) -> ArchSpec:
    """The spec of ``arch``; a ValueError lists the known names."""
    try:
        return ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}") from None


def build(arch: str = "torchvision", num_classes: int = 1000, dropout: float = 0.5) -> nn.Module:
    """A freshly initialized AlexNet of the given architecture."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return arch_spec(arch).module(num_classes=num_classes, dropout=dropout)


def kaiming_init_(model: nn.Module) -> nn.Module:
    """He et al. 2015 (arXiv:1502.01852) initialization: weights ~ N(0, 2 / fan_in), biases 0, and the
    output layer N(0, 0.01) so the first logits are near uniform.

    Neither published AlexNet uses it; it is offered because it keeps the signal's scale through the
    eight ReLU layers, where PyTorch's default (kaiming_uniform with a=sqrt(5)) shrinks it about
    sixfold per layer, which leaves small or short runs stuck at chance for their first epochs.
    """
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for layer in layers:
        nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
        assert layer.bias is not None
        nn.init.zeros_(layer.bias)
    nn.init.normal_(layers[-1].weight, mean=0.0, std=0.01)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
