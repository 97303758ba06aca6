"""Dice per class on whole label maps (3D volumes or 2D images), the SPEC's evaluation unit."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["dice_per_class"]


def dice_per_class(prediction: torch.Tensor, label: torch.Tensor, classes: Sequence[int]) -> dict[int, float]:
    """Dice of each class present in ``label`` (absent classes are left out, not scored 0 or 1)."""
    prediction, label = torch.as_tensor(prediction), torch.as_tensor(label)
    if prediction.shape != label.shape:
        raise ValueError(f"prediction {list(prediction.shape)} and label {list(label.shape)} must match")
    scores = {}
    for c in classes:
        truth = label == c
        if truth.any():
            pred = prediction == c
            scores[int(c)] = float(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))
    return scores
