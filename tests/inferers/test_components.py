from __future__ import annotations

import pytest
import torch

from segmote_monai.inferers.components import (
    component_boxes,
    label_components,
    largest_component,
    touching_components,
)


def _mask(pixels, shape=(6, 6)) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    for y, x in pixels:
        mask[y, x] = True
    return mask


def _pixels(mask: torch.Tensor) -> list[tuple[int, int]]:
    return sorted(map(tuple, torch.nonzero(mask).tolist()))


@pytest.mark.parametrize("pixels,expected", [
    ([], []),
    ([(0, 0)], [(0, 0)]),
    ([(0, 0), (0, 1), (5, 5)], [(0, 0), (0, 1)]),
    ([(0, 0), (1, 1), (1, 2)], [(1, 1), (1, 2)]),  # diagonal neighbours are apart (4-connected)
    ([(2, 0), (2, 1), (2, 2), (3, 2), (4, 2), (4, 1), (4, 0), (0, 4)], [(2, 0), (2, 1), (2, 2), (3, 2), (4, 2),
                                                                        (4, 1), (4, 0)]),  # a U shape
    # ties: the component whose last pixel comes first in raster order, not the one whose first pixel does
    ([(0, 0), (1, 0), (0, 2), (0, 3)], [(0, 2), (0, 3)]),
    ([(0, 4), (2, 0)], [(0, 4)]),
])
def test_largest_component(pixels, expected):
    assert _pixels(largest_component(_mask(pixels))) == sorted(expected)


@pytest.mark.parametrize("pixels,other,expected", [
    ([], [(0, 0)], []),
    ([(0, 0), (0, 1), (3, 3)], [], []),
    ([(0, 0), (0, 1), (3, 3), (3, 4)], [(0, 1)], [(0, 0), (0, 1)]),
    ([(0, 0), (0, 1), (3, 3), (3, 4)], [(0, 1), (3, 4)], [(0, 0), (0, 1), (3, 3), (3, 4)]),
    ([(0, 0), (1, 1)], [(0, 1), (1, 0)], []),  # touching the other mask only diagonally, or beside it, is apart
])
def test_touching_components(pixels, other, expected):
    assert _pixels(touching_components(_mask(pixels), _mask(other))) == sorted(expected)


def test_labels_follow_the_raster_order_of_first_pixels():
    labels, count = label_components(_mask([(0, 3), (2, 0), (2, 1), (5, 5)]))
    assert count == 3
    assert (labels[0, 3], labels[2, 0], labels[2, 1], labels[5, 5]) == (1, 2, 2, 3)
    assert labels.dtype == torch.int64


def test_label_components_refuses_a_volume():
    with pytest.raises(ValueError, match=r"\[H, W\] mask, got shape \(2, 6, 6\)"):
        label_components(torch.zeros(2, 6, 6, dtype=torch.bool))


# an L of four pixels (box x 0-1, y 0-2), a pair (x 4-5, y 0) and a speck (x 5, y 5), in raster order of first pixels
_PARTS = [(0, 0), (1, 0), (2, 0), (2, 1), (0, 4), (0, 5), (5, 5)]


@pytest.mark.parametrize("pixels,fraction,expected", [
    ([], 0.5, []),
    (_PARTS, 0.0, [[0, 0, 1, 2], [4, 0, 5, 0], [5, 5, 5, 5]]),
    (_PARTS, 0.5, [[0, 0, 1, 2], [4, 0, 5, 0]]),  # the pair is half the L: kept; the speck a quarter
    (_PARTS, 0.6, [[0, 0, 1, 2]]),
    (_PARTS, 1.0, [[0, 0, 1, 2]]),
    ([(0, 0), (1, 1)], 1.0, [[0, 0, 0, 0], [1, 1, 1, 1]]),  # diagonal pixels: two parts, as large as each other
])
def test_component_boxes(pixels, fraction, expected):
    boxes = component_boxes(_mask(pixels), fraction)
    assert boxes.shape == (len(expected), 4) and boxes.dtype == torch.float32
    assert boxes.tolist() == expected


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_component_boxes_refuses_a_fraction_outside_0_1(fraction):
    with pytest.raises(ValueError, match=rf"min_fraction must be in \[0, 1\], got {fraction}"):
        component_boxes(_mask(_PARTS), fraction)
