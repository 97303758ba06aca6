from __future__ import annotations

import pytest
import torch

from segmote_monai.metrics import dice_per_class


def test_dice_per_class_skips_absent_classes():
    label = torch.tensor([[1, 1, 0, 2]])
    pred = torch.tensor([[1, 0, 0, 2]])
    assert dice_per_class(pred, label, [1, 2, 3]) == {1: pytest.approx(2 / 3), 2: 1.0}


def test_shapes_must_match():
    with pytest.raises(ValueError, match=r"prediction \[1, 3\] and label \[1, 4\] must match"):
        dice_per_class(torch.zeros(1, 3), torch.zeros(1, 4), [1])
