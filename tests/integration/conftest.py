"""Small synthetic ImageFolder sets, built once per session in a temporary directory."""

from __future__ import annotations

import pytest

from model.synthetic import generate


@pytest.fixture(scope="session")
def synthetic4(tmp_path_factory):
    """4 classes, 48 train and 10 val images each, 72 px: enough for AlexNet to learn in ~70 CPU steps."""
    return generate(
        tmp_path_factory.mktemp("synthetic4"), classes=4, train_per_class=48, val_per_class=10, size=72, seed=0
    )


@pytest.fixture(scope="session")
def tiny4(tmp_path_factory):
    """4 classes, 8 train and 2 val images each: for runs that test mechanics, not learning."""
    return generate(tmp_path_factory.mktemp("tiny4"), classes=4, train_per_class=8, val_per_class=2, size=72, seed=1)
