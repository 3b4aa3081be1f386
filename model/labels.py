"""The 1000 ILSVRC-2012 class names, in the index order of torchvision's published AlexNet."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

IMAGENET_CLASSES_FILE = Path(__file__).with_name("imagenet_classes.txt")


def read_labels(path: str | Path) -> list[str]:
    """One label per line, in index order; blank lines and duplicates are refused."""
    labels = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    if not labels or any(not label for label in labels):
        raise ValueError(f"{path}: empty label file or blank line among the labels")
    if len(set(labels)) != len(labels):
        raise ValueError(f"{path}: duplicate labels")
    return labels


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The ImageNet-1k class names (index 0 is 'tench', 999 is 'toilet tissue')."""
    return tuple(read_labels(IMAGENET_CLASSES_FILE))
