"""A synthetic lesion implanted in a real organ: a nested structure with a known outline.

Real scans with a labelled structure inside another (a tumour in its kidney) are scarce in open data; implanting
a disc of another intensity inside a real organ on a real slice gives one whose outline is known exactly, to test
how a label map is merged where an outer structure's box contains an inner one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["implant_lesion"]


def _deepest_point(mask: torch.Tensor) -> tuple[int, int, int]:
    """(row, column, depth) of a pixel farthest inside ``mask`` [H, W], by repeated 3 x 3 erosion."""
    current, depth = mask.float()[None, None], 0
    while True:
        eroded = -F.max_pool2d(-current, 3, stride=1, padding=1)
        if not eroded.any():
            break
        current, depth = eroded, depth + 1
    rows, cols = torch.nonzero(current[0, 0] > 0, as_tuple=True)
    middle = len(rows) // 2
    return int(rows[middle]), int(cols[middle]), depth


def implant_lesion(image: torch.Tensor, organ: torch.Tensor, *, intensity: float, radius_fraction: float = 0.6,
                   noise: float = 0.03, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A disc of ``intensity`` (plus Gaussian ``noise``, clipped to [0, 1]) inside ``organ``, centred on its
    deepest pixel, of radius ``radius_fraction`` times that pixel's depth (so that it lies inside the organ).

    Args:
        image: [C, H, W] slice, intensities in [0, 1].
        organ: [H, W] bool mask of the organ on it.

    Returns:
        The slice with the lesion [C, H, W] and the lesion's mask [H, W] (inside ``organ``).
    """
    if image.ndim != 3 or organ.shape != image.shape[1:]:
        raise ValueError(
            f"expected image [C, H, W] and organ [H, W], got {tuple(image.shape)} and {tuple(organ.shape)}")
    if not 0 < radius_fraction <= 1:
        raise ValueError(f"radius_fraction must be in (0, 1], got {radius_fraction}")
    if not organ.any():
        raise ValueError("the organ mask is empty")
    row, col, depth = _deepest_point(organ.bool())
    rows, cols = torch.meshgrid(torch.arange(organ.shape[0]), torch.arange(organ.shape[1]), indexing="ij")
    radius = max(radius_fraction * (depth + 1), 1.0)
    lesion = ((rows - row) ** 2 + (cols - col) ** 2 <= radius**2) & organ.bool()
    generator = torch.Generator().manual_seed(seed)
    texture = (intensity + noise * torch.randn(organ.shape, generator=generator)).clamp(0, 1).to(image.dtype)
    return torch.where(lesion, texture, image), lesion
