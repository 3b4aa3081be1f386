"""export/checkpoint_match.py: whether an export serves a checkpoint as it was trained, the one check
behind the entrypoint's re-export (tests/unit/test_entrypoint.py) and the service's WrongWeights
(tests/unit/test_settings_and_backends.py)."""

from __future__ import annotations

import pytest
import torch

import model.weights
from export.checkpoint_match import checkpoint_preprocessing, export_mismatch
from export.onnx_metadata import read_metadata
from model.weights import save_checkpoint, untrained_model
from tests.fakes import fake_checkpoint
from tests.tiny_onnx import tiny_onnx

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_our_checkpoint_is_matched_by_its_records_without_loading_its_weights(tmp_path, monkeypatch):
    onnx = tiny_onnx(tmp_path / "alexnet.onnx", weights_sha256="d" * 64)  # torchvision's 224/256
    same = fake_checkpoint(tmp_path / "same.pt", "d" * 64)  # no tensors: loading it would fail
    monkeypatch.setattr(model.weights, "load_model", lambda *a, **k: pytest.fail("loaded the weights"))
    assert export_mismatch(onnx, read_metadata(onnx), same) is None
    other = fake_checkpoint(tmp_path / "other.pt", "e" * 64)
    reason = export_mismatch(onnx, read_metadata(onnx), other)
    assert reason == f"{onnx} holds weights 'test' (sha256 {'d' * 12}), not those of {other} (sha256 {'e' * 12})"
    trained = fake_checkpoint(tmp_path / "trained.pt", "d" * 64, resize_size=72, crop_size=64)
    assert checkpoint_preprocessing(trained) == (64, 72, *IMAGENET)
    reason = export_mismatch(onnx, read_metadata(onnx), trained)
    assert reason == (
        f"{onnx} preprocesses as (crop, resize, mean, std) {(224, 256, *IMAGENET)}, "
        f"{trained} was trained with {(64, 72, *IMAGENET)}"
    )


def test_a_torchvision_state_dict_is_hashed_and_has_its_archs_preprocessing(tmp_path):
    loaded = untrained_model(seed=3)
    published = tmp_path / "weights.pth"
    torch.save(loaded.model.state_dict(), published)
    assert checkpoint_preprocessing(published, "torchvision") == (224, 256, *IMAGENET)
    assert checkpoint_preprocessing(published, "alexnet2012") == (227, 256, *IMAGENET)
    onnx = tiny_onnx(tmp_path / "alexnet.onnx", weights_sha256=loaded.weights_sha256)
    assert export_mismatch(onnx, read_metadata(onnx), published) is None
    ours = save_checkpoint(tmp_path / "alexnet.pt", loaded.model, "torchvision", loaded.labels, {"crop_size": 200})
    reason = export_mismatch(onnx, read_metadata(onnx), ours)
    assert reason and "was trained with (200, 256" in reason
