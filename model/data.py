"""ImageFolder data sets and their loaders, for one process or one rank of many.

Layout (ImageNet's, and what ``python -m model.synthetic`` writes):

    DATA/train/<class>/*.JPEG
    DATA/val/<class>/*.JPEG

Class indices are the sorted folder names, as in torchvision's ImageFolder, which for ImageNet's
wnids is the index order of the published AlexNet and of ``model/imagenet_classes.txt``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from model.labels import imagenet_labels

# The formats the service decodes (service/preprocess.py PARSERS) and PPM; transforms convert to RGB.
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".ppm", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_WNID = re.compile(r"^n\d{8}$")


class ImageFolder(Dataset):
    """(image, class index) pairs from ``root/<class>/<file>``; images are decoded with PIL on access.

    Hidden entries (``.ipynb_checkpoints``, ``.DS_Store``) are ignored: a hidden folder taken as a class
    would shift every class index after it. A class folder without images is refused, as torchvision's
    ImageFolder does; other files are skipped and counted by extension in ``skipped``."""

    def __init__(self, root: str | Path, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such data directory (expected <root>/<class>/<image>)")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise FileNotFoundError(f"{self.root}: no class folders")
        self.skipped: Counter[str] = Counter()
        self.samples: list[tuple[str, int]] = []
        for index, name in enumerate(self.classes):
            found = 0
            for path in sorted((self.root / name).iterdir()):
                if path.name.startswith("."):
                    continue
                if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                    self.samples.append((str(path), index))
                    found += 1
                else:
                    self.skipped[path.suffix.lower() or ("(folder)" if path.is_dir() else "(none)")] += 1
            if not found:
                raise FileNotFoundError(
                    f"{self.root / name}: class folder with no images (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                    "add images or remove the folder"
                )
        self.transform = transform

    def skipped_note(self) -> str | None:
        """One line on the files not read, or None."""
        if not self.skipped:
            return None
        kinds = ", ".join(f"{ext} ({n})" for ext, n in self.skipped.most_common())
        return f"{self.root}: skipped {sum(self.skipped.values())} files it does not read: {kinds}"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        with Image.open(path) as img:
            return self.transform(img), target


def class_labels(classes: list[str]) -> list[str]:
    """Human-readable labels: ImageNet's names for the 1000 ImageNet wnids, else the folder names."""
    if len(classes) == 1000 and all(_WNID.match(c) for c in classes):
        return list(imagenet_labels())
    return list(classes)


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``, without the padding DistributedSampler adds, so
    that summed evaluation counts over ranks are exact."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def train_sampler(dataset: Dataset, rank: int, world_size: int, seed: int) -> DistributedSampler:
    """A shuffling sampler whose order is a function of (seed, epoch) only, for one process or many;
    call ``set_epoch`` each epoch, so a resumed run sees the same order as an uninterrupted one."""
    return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    sampler: Sampler,
    workers: int,
    pin_memory: bool,
    drop_last: bool,
    seed: int,
) -> DataLoader:
    # The generator seeds the workers' RNGs (crop positions, flips); train.py reseeds it every epoch.
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        prefetch_factor=4 if workers > 0 else None,
    )
