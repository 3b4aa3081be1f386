"""Logits -> probabilities -> the top-k labels of one image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, computed in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_k(logits: np.ndarray, labels: Sequence[str], k: int) -> list[dict]:
    """``[{"label", "index", "probability"}]`` for the ``k`` most probable classes, most probable first.

    Ties are broken by the lower class index, so the answer is the same on every backend.
    """
    probs = softmax(logits)
    k = min(k, probs.shape[-1])
    order = np.lexsort((np.arange(probs.shape[-1]), -probs))[:k]
    return [{"label": labels[i], "index": int(i), "probability": float(probs[i])} for i in order]
