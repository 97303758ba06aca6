from __future__ import annotations

import runpy
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

DEMO = runpy.run_path(str(Path(__file__).resolve().parents[2] / "scripts" / "demo.py"))


def test_tight_box_is_the_masks_extent():
    mask = np.zeros((20, 30), bool)
    mask[4:9, 10:25] = True
    assert DEMO["box_of"](mask, 0.0, np.random.default_rng(0)) == [10, 4, 24, 8]


@pytest.mark.parametrize("seed", range(5))
def test_jittered_box_moves_each_side_by_at_most_the_fraction(seed):
    mask = np.zeros((100, 100), bool)
    mask[20:60, 30:50] = True  # 40 rows x 20 columns
    box = DEMO["box_of"](mask, 0.1, np.random.default_rng(seed))
    assert box != [30, 20, 49, 59]
    for side, tight, size in zip(box, [30, 20, 49, 59], [20, 40, 20, 40]):
        assert abs(side - tight) <= 0.1 * size + 1e-9


def test_prompts_one_per_slice_and_present_class():
    labels = np.zeros((3, 8, 8), np.int64)
    labels[0, 1:3, 1:3] = 1
    labels[0, 5:7, 5:7] = 2
    labels[2, 2:4, 2:6] = 2
    boxes, index, cls, masks = DEMO["prompts_for"](labels, [1, 2], 0.0, np.random.default_rng(0))
    assert index.tolist() == [0, 0, 2] and cls.tolist() == [1, 2, 2]
    assert boxes[2].tolist() == [2, 2, 5, 3]
    assert masks.shape == (3, 1, 8, 8) and masks[2].sum() == 8


def test_dice_per_class_skips_absent_classes():
    label = np.array([[1, 1, 0, 2]])
    pred = np.array([[1, 0, 0, 2]])
    assert DEMO["dice_per_class"](pred, label, [1, 2, 3]) == {1: pytest.approx(2 / 3), 2: 1.0}


def test_segment_picks_the_highest_logit_above_zero():
    class TwoBoxes(torch.nn.Module):
        """Mask logit 1 inside each prompt's box (2 for the second class), -1 outside."""

        def predict(self, *, image_embeddings, boxes, image_index):
            masks = -torch.ones(len(boxes), 1, 8, 8)
            for row, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
                masks[row, 0, y0:y1 + 1, x0:x1 + 1] = 1.0 + row
            return type("Out", (), {"masks": masks})

    labels = np.zeros((1, 8, 8), np.int64)
    labels[0, 0:4, 0:4] = 1
    labels[0, 2:6, 2:6] = 2
    pred = DEMO["segment"](TwoBoxes(), torch.zeros(1, 1), labels, [1, 2], 0.0, seed=0)
    assert (pred[0, 2:6, 2:6] == 2).all() and pred[0, 0, 0] == 1 and pred[0, 7, 7] == 0


def test_saved_prediction_keeps_the_input_grid(tmp_path):
    affine = np.array([[-1.25, 0, 0, 10], [0, 1.25, 0, -5], [0, 0, 7.7, 3], [0, 0, 0, 1]])
    like = nib.Nifti1Image(np.zeros((4, 5, 3), np.int16), affine)
    DEMO["save_nifti_atomic"](np.ones((4, 5, 3)), like, tmp_path / "pred.nii.gz")
    saved = nib.load(tmp_path / "pred.nii.gz")
    assert saved.shape == (4, 5, 3) and np.allclose(saved.affine, affine)
    assert [p.name for p in tmp_path.iterdir()] == ["pred.nii.gz"]
