"""Checkpoint I/O: our own format, torchvision's published weights, and the untrained fallback.

Our checkpoint is a dict saved with ``torch.save`` and read back with ``weights_only=True``:

    {"format": "alexnet-serve-checkpoint", "version": 1, "arch": "torchvision", "num_classes": 1000,
     "labels": [...], "model": state_dict, "weights_sha256": "...", "provenance": {...},
     # optional, written by training so a run can resume (plain types only: it is read weights_only):
     "optimizer": ..., "lr_scheduler": ..., "scaler": ..., "epoch": int, "step": int,
     "best_top1_err": float, "args": dict}

``weights_sha256`` hashes every tensor's name, dtype, shape and bytes, so a file damaged after it was
written is refused instead of serving wrong answers.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import pickle
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.alexnet import ARCHS, arch_spec, build
from model.atomic_write import atomic_output
from model.hashing import file_sha256
from model.labels import imagenet_labels

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "alexnet-serve-checkpoint"
CHECKPOINT_VERSION = 1
UNTRAINED = "untrained"
DEFAULT_SEED = 0

# torchvision's published AlexNet (AlexNet_Weights.IMAGENET1K_V1). As in torch.hub, the eight hex
# digits in the file name are the start of the file's SHA-256.
TORCHVISION_WEIGHTS_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
TORCHVISION_WEIGHTS_SOURCE = "torchvision:AlexNet_Weights.IMAGENET1K_V1"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.(?:pth|pt)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


@dataclass
class LoadedModel:
    """A model in eval mode and what is known about its weights."""

    model: nn.Module
    arch: str
    labels: list[str]
    weights_sha256: str
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def untrained(self) -> bool:
        return self.provenance.get("source") == UNTRAINED

    @property
    def weights_description(self) -> str:
        """``"untrained"`` or where the weights came from."""
        return str(self.provenance.get("source", "unknown"))

    @property
    def provenance_to_publish(self) -> dict[str, Any]:
        """The provenance an export records and the service reports, less the local path it was read from."""
        return {key: value for key, value in self.provenance.items() if key != "file"}


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over each tensor's name, dtype, shape and bytes, in key order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # reshape(-1): view(uint8) refuses 0-dim tensors; for every other tensor the bytes are the same.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    arch: str,
    labels: list[str] | tuple[str, ...],
    provenance: Mapping[str, Any],
    **training_state: Any,
) -> Path:
    """Write our checkpoint format atomically (a crash never leaves half a file under ``path``)."""
    arch_spec(arch)
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    num_classes = state_dict["classifier.6.weight"].shape[0]
    if len(labels) != num_classes:
        raise CheckpointError(f"{len(labels)} labels for a model with {num_classes} classes")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": arch,
        "num_classes": num_classes,
        "labels": list(labels),
        "model": state_dict,
        "weights_sha256": state_dict_sha256(state_dict),
        "provenance": {"saved": _now(), **provenance},
        **training_state,
    }
    path = Path(path)
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path


# How a torch.save file starts: a zip archive (PyTorch >= 1.6), or a pickle (the legacy format, e.g.
# torchvision's alexnet-owt-7be5be79.pth).
_TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80")


def require_checkpoint_file(path: Path) -> None:
    """CheckpointError unless ``path`` is a file; for a folder (a run's --output-dir), naming the
    checkpoint in it to pass instead."""
    if path.is_file():
        return
    if path.is_dir():
        held = [name for name in ("checkpoint.pt", "best.pt") if (path / name).is_file()]
        example = path / (held[0] if held else "checkpoint.pt")
        raise CheckpointError(f"{path} is a folder; pass a checkpoint file, e.g. {example}")
    raise CheckpointError(f"{path}: no such checkpoint file")


def _torch_load(path: Path) -> Any:
    require_checkpoint_file(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(_TORCH_SAVE_MAGIC):
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (a file written by torch.save starts as a zip archive or a "
            f"pickle; this one starts with {head!r}); pass a checkpoint from python -m model.train or "
            "model.weights, or torchvision's alexnet-owt-*.pth"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc):
            raise CheckpointError(f"{path}: corrupted PyTorch checkpoint ({_first_line(exc)})") from exc
        # torch's own advice (load with weights_only=False) would run arbitrary code from the file.
        raise CheckpointError(
            f"{path}: holds Python objects other than tensors and plain types, which are not loaded "
            "(weights_only); save the model's state_dict() instead"
        ) from exc
    except Exception as exc:  # torch raises several types for damaged files
        raise CheckpointError(f"{path}: corrupted or not a PyTorch checkpoint ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message``: torch's messages run to many lines of advice."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _load_state_dict(path: Path, model: nn.Module, state_dict: Mapping[str, Any], arch: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit arch {arch!r}: missing keys {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path}: {name} is a {type(tensor).__name__}, not a tensor")
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(tensor.shape)}, arch {arch!r} expects {tuple(expected[name].shape)}"
            )
    model.load_state_dict(state_dict)


def load_checkpoint(path: str | Path) -> LoadedModel:
    """Read our checkpoint format, verifying format, arch, key layout, shapes and the weights hash."""
    return load_training_checkpoint(path)[0]


TRAINING_STATE_KEYS = ("optimizer", "lr_scheduler", "scaler", "epoch", "step", "best_top1_err", "args")


def load_training_checkpoint(path: str | Path) -> tuple[LoadedModel, dict[str, Any]]:
    """``load_checkpoint`` plus the training state saved beside the weights (the keys of
    ``TRAINING_STATE_KEYS`` that are present), for ``python -m model.train --resume``."""
    path = Path(path)
    payload = _torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not an alexnet-serve checkpoint (no format tag {CHECKPOINT_FORMAT!r}); "
            "for a torchvision state-dict file use import_torchvision_weights()"
        )
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')!r} is not supported")
    arch = str(payload.get("arch"))
    try:
        arch_spec(arch)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    labels = payload.get("labels")
    num_classes = payload.get("num_classes")
    if not isinstance(labels, list) or len(labels) != num_classes:
        raise CheckpointError(f"{path}: label list does not match num_classes={num_classes}")
    state_dict = payload.get("model")
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: no 'model' state dict")
    # Before hashing, which would fail with an AttributeError on a non-tensor value.
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: {name} is a {type(value).__name__}, not a tensor")
    actual_sha = state_dict_sha256(state_dict)
    if actual_sha != payload.get("weights_sha256"):
        raise CheckpointError(
            f"{path}: weights hash mismatch (stored {payload.get('weights_sha256')}, computed {actual_sha}); "
            "the file is corrupted"
        )
    model = build(arch, num_classes=num_classes)
    _load_state_dict(path, model, state_dict, arch)
    loaded = LoadedModel(model.eval(), arch, labels, actual_sha, dict(payload.get("provenance", {})))
    return loaded, {k: payload[k] for k in TRAINING_STATE_KEYS if k in payload}


def import_torchvision_weights(path: str | Path, arch: str = "torchvision") -> LoadedModel:
    """Load a plain state-dict file in torchvision's key layout (e.g. ``alexnet-owt-7be5be79.pth``).

    Where the file name carries a hash prefix, as torchvision's published files do, it is checked.
    """
    path = Path(path)
    _check_hash_in_name(path)
    state_dict = _torch_load(path)
    if isinstance(state_dict, dict) and state_dict.get("format") == CHECKPOINT_FORMAT:
        # Importing would keep only its tensors: its labels become class_N and its provenance
        # (the preprocessing sizes training recorded) is lost.
        raise CheckpointError(
            f"{path}: already an alexnet-serve checkpoint (arch {state_dict.get('arch')!r}, "
            f"{len(state_dict.get('labels') or [])} labels): copy it, e.g. cp {path} artifacts/alexnet.pt; "
            "importing would drop its labels and provenance"
        )
    if isinstance(state_dict, dict) and "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]  # torchvision references' training checkpoint
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state_dict).__name__}")
    num_classes = state_dict.get("classifier.6.weight", torch.empty(1000, 0)).shape[0]
    model = build(arch, num_classes=num_classes)
    try:
        _load_state_dict(path, model, state_dict, arch)
    except CheckpointError as exc:
        other = _arch_that_fits(state_dict, num_classes)
        if other is None or other == arch:
            raise
        raise CheckpointError(f"{exc}; they are {other!r} weights: pass --arch {other}") from None
    labels = list(imagenet_labels()) if num_classes == 1000 else [f"class_{i}" for i in range(num_classes)]
    sha = state_dict_sha256(model.state_dict())
    source = TORCHVISION_WEIGHTS_SOURCE if path.name == Path(TORCHVISION_WEIGHTS_URL).name else f"imported:{path.name}"
    return LoadedModel(model.eval(), arch, labels, sha, {"source": source, "file": str(path)})


def _arch_that_fits(state_dict: Mapping[str, Any], num_classes: int) -> str | None:
    """The arch whose key layout and shapes ``state_dict`` has exactly, or None."""
    for name in sorted(ARCHS):
        with torch.device("meta"):  # shapes only: no memory, no initialization cost
            expected = build(name, num_classes=num_classes).state_dict()
        if set(expected) == set(state_dict) and all(
            isinstance(state_dict[k], torch.Tensor) and state_dict[k].shape == v.shape for k, v in expected.items()
        ):
            return name
    return None


def _check_hash_in_name(path: Path) -> None:
    """Refuse a file whose name carries a SHA-256 prefix (``alexnet-owt-7be5be79.pth``) it does not have."""
    require_checkpoint_file(path)
    match = _HASH_IN_NAME.search(path.name)
    if match and not (actual := file_sha256(path)).startswith(match.group(1)):
        raise CheckpointError(_hash_mismatch(path, match.group(1), actual))


def _hash_mismatch(path: Path, expected_prefix: str, actual: str) -> str:
    """What is wrong with a file whose SHA-256 is not the one its name carries, and what to do."""
    what = f"{path}: SHA-256 mismatch: its name says {expected_prefix}..., the file hashes to {actual}"
    if path.name == Path(TORCHVISION_WEIGHTS_URL).name:
        return (
            f"{what}; it is truncated or damaged (an interrupted download?). Delete it and run "
            f"python -m model.weights --download again, or download {TORCHVISION_WEIGHTS_URL} on another "
            f"host and copy it to {path}"
        )
    return f"{what}; it is truncated, damaged or not the file of that name: delete it and bring the right file"


def untrained_model(arch: str = "torchvision", seed: int = DEFAULT_SEED) -> LoadedModel:
    """A seeded random initialization, for running the whole pipeline without trained weights."""
    log.warning(
        "NO TRAINED WEIGHTS: using a random %s AlexNet (seed %d); its answers are meaningless. "
        "Pass a checkpoint (python -m model.weights --help).",
        arch,
        seed,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(arch)
    return LoadedModel(
        model.eval(),
        arch,
        list(imagenet_labels()),
        state_dict_sha256(model.state_dict()),
        {"source": UNTRAINED, "seed": seed},
    )


def load_model(path: str | Path | None, arch: str = "torchvision", seed: int = DEFAULT_SEED) -> LoadedModel:
    """Our checkpoint or a torchvision state dict from ``path``; an untrained model when ``path`` is None."""
    if path is None:
        return untrained_model(arch, seed)
    payload_path = Path(path)
    require_checkpoint_file(payload_path)
    try:
        return load_checkpoint(payload_path)
    except CheckpointError as exc:
        if "not an alexnet-serve checkpoint" not in str(exc):
            # A truncated download of torchvision's file reads as a corrupted checkpoint; its hash
            # says which file it was meant to be and where the right one comes from.
            _check_hash_in_name(payload_path)
            raise
    return import_torchvision_weights(payload_path, arch)


def checkpoint_weights_sha256(path: str | Path, arch: str = "torchvision") -> str:
    """The ``weights_sha256`` that ``load_model(path, arch)`` reports, as cheaply as the file allows.

    Our checkpoint records it: the file is opened memory-mapped, so its tensors are not read (a
    damaged tensor is caught by ``load_checkpoint`` when the weights themselves are served). Any
    other file (torchvision's state dicts, legacy pickles) is loaded and hashed as ``load_model`` does.
    """
    path = Path(path)
    require_checkpoint_file(path)
    stat = path.stat()  # the same file unchanged: hashed once (a torchvision file is a full load)
    return _checkpoint_weights_sha256(path.resolve(), stat.st_mtime_ns, stat.st_size, arch)


def peek_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """A checkpoint file's dict, opened memory-mapped so its tensors are not read (its format, arch,
    provenance, epoch, args, recorded hash), or None when it is not a readable zip-format dict (mmap
    needs one): ``load_model`` or ``load_training_checkpoint`` then say what is wrong with it."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    return payload if isinstance(payload, dict) else None


@functools.lru_cache(maxsize=8)
def _checkpoint_weights_sha256(path: Path, _mtime_ns: int, _size: int, arch: str) -> str:
    payload = peek_checkpoint(path)
    if payload is not None and payload.get("format") == CHECKPOINT_FORMAT:
        recorded = payload.get("weights_sha256")
        if isinstance(recorded, str):
            return recorded
    return load_model(path, arch).weights_sha256


def download_torchvision_weights(dest_dir: str | Path, url: str = TORCHVISION_WEIGHTS_URL) -> Path:
    """Download torchvision's published AlexNet weights into ``dest_dir`` and verify their hash.

    A file already there is kept when its hash matches the one in its name and downloaded again
    when it does not (a truncated or damaged earlier download). Offline hosts get a
    CheckpointError that says how to bring the file in by hand.
    """
    dest = Path(dest_dir) / Path(url).name
    match = _HASH_IN_NAME.search(dest.name)
    expected = match.group(1) if match else None
    damaged = ""
    if dest.is_file():
        if expected is None:
            return dest
        actual = file_sha256(dest)
        if actual.startswith(expected):
            return dest
        damaged = f"{dest} is there but damaged (SHA-256 {actual}, its name says {expected}...)"
        print(f"{damaged}; downloading it again", file=sys.stderr)
    try:
        with atomic_output(dest) as tmp:
            with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0)
                done = 0
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    done += len(chunk)
                    if total:
                        print(
                            f"\rdownloading {dest.name}: {done / 2**20:.0f}/{total / 2**20:.0f} MiB",
                            end="",
                            file=sys.stderr,
                            flush=True,
                        )
                if total:
                    print(file=sys.stderr)
            if expected and not (actual := file_sha256(tmp)).startswith(expected):
                raise CheckpointError(
                    f"downloaded {url} but its SHA-256 is {actual}, not {expected}... as its name says (a "
                    f"damaged transfer, or a proxy that sent another file); {dest} was not written. Run the "
                    f"command again, or download the file on another host and copy it to {dest}"
                )
    except (urllib.error.URLError, OSError) as exc:
        remedy = (
            f"delete it, then copy the file from {url} there by hand"
            if damaged
            else f"On an offline host, copy the file from {url} to {dest} by hand"
        )
        raise CheckpointError(
            f"cannot download {url} ({exc}). {damaged + ': ' if damaged else ''}{remedy} and run "
            f"python -m model.weights --download again (a file already there is checked, not downloaded), "
            "or convert any copy with python -m model.weights --import-file PATH."
        ) from exc
    return dest


def main(argv: list[str] | None = None) -> int:
    """CLI: fetch torchvision's weights, or convert a state-dict file into our checkpoint format."""
    import argparse

    from model.help_format import DefaultsHelpFormatter

    parser = argparse.ArgumentParser(
        prog="python -m model.weights",
        description="Fetch or convert AlexNet weights into an alexnet-serve checkpoint.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--download", action="store_true", help="download torchvision's published weights")
    parser.add_argument("--import-file", type=Path, help="a torchvision-layout state-dict file to convert")
    parser.add_argument(
        "--arch", default="torchvision", choices=sorted(ARCHS), help="architecture of the imported weights"
    )
    parser.add_argument("--out", type=Path, default=Path("artifacts/alexnet.pt"), help="checkpoint to write")
    args = parser.parse_args(argv)
    if args.download == bool(args.import_file):
        parser.error("give exactly one of --download or --import-file")
    try:
        source = download_torchvision_weights(args.out.parent) if args.download else args.import_file
        loaded = import_torchvision_weights(source, args.arch)
        save_checkpoint(args.out, loaded.model, loaded.arch, loaded.labels, loaded.provenance)
    except (CheckpointError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out} ({loaded.arch}, weights {loaded.weights_description}, sha256 {loaded.weights_sha256[:12]})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
