"""4-connected components of a slice's mask: the one place the automatic seeds, the propagation's rebox and the
prompt-free refine label them (:mod:`scipy.ndimage`, one C pass: 1.4 ms for the largest component of a random
256 x 256 mask on this team's CPU, against 57 ms for the iterated torch max filter it replaces)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

__all__ = ["component_boxes", "label_components", "largest_component", "touching_components"]


def label_components(mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """[H, W] bool -> ([H, W] int64 labels, 0 off the mask and 1..n on its 4-connected components in the raster
    order of their first pixels; n)."""
    if mask.ndim != 2:
        raise ValueError(f"label_components needs an [H, W] mask, got shape {tuple(mask.shape)}")
    labels, count = ndimage.label(mask.cpu().numpy().astype(bool))  # the default structure: 4-connected in 2D
    return torch.from_numpy(labels.astype(np.int64)), int(count)


def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """[H, W] bool -> its largest 4-connected component (of two as large, the one whose last pixel comes first in
    raster order: a fixed rule, so that the seeds do not depend on the labelling's implementation)."""
    labels, count = label_components(mask)
    if count == 0:
        return torch.zeros_like(mask, dtype=torch.bool)
    flat = labels.flatten().numpy()
    sizes = np.bincount(flat, minlength=count + 1)[1:]
    last = np.zeros(count + 1, dtype=np.int64)
    np.maximum.at(last, flat, np.arange(flat.size))
    tied = np.flatnonzero(sizes == sizes.max()) + 1
    return labels == int(tied[np.argmin(last[tied])])


def touching_components(mask: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """The 4-connected components of ``mask`` that overlap ``other`` (both [H, W] bool)."""
    labels, _ = label_components(mask)
    kept = torch.unique(labels[mask.bool().cpu() & other.bool().cpu()])  # labels are on the CPU, as scipy made them
    return torch.isin(labels, kept[kept > 0])


def component_boxes(mask: torch.Tensor, min_fraction: float) -> torch.Tensor:
    """Tight boxes [K, 4] (``x0, y0, x1, y1``, inclusive pixel indices, float32) of the 4-connected components of
    ``mask`` ([H, W] bool) whose area is at least ``min_fraction`` of the largest one's, in the raster order of
    their first pixels; [0, 4] for an empty mask."""
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    labels, count = label_components(mask)
    if count == 0:
        return torch.zeros(0, 4)
    array = labels.numpy()
    sizes = np.bincount(array.ravel(), minlength=count + 1)[1:]
    boxes = [(cols.start, rows.start, cols.stop - 1, rows.stop - 1)
             for (rows, cols), size in zip(ndimage.find_objects(array), sizes) if size >= min_fraction * sizes.max()]
    return torch.tensor(boxes, dtype=torch.float32)
