"""The routing heatmap (the paper's expert-preference figure) as a PNG, drawn with Pillow alone."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from segmote_monai.atomic import atomic_path

__all__ = ["routing_heatmap"]

CELL_W, CELL_H, LEFT, TOP = 46, 22, 220, 34


def _colour(value: float) -> tuple[int, int, int]:
    """Dark blue (0) to yellow (1), a viridis-like ramp."""
    stops = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=float)
    x = min(max(value, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(x), len(stops) - 2)
    return tuple(int(c) for c in stops[i] + (stops[i + 1] - stops[i]) * (x - i))


def routing_heatmap(shares: Mapping[str, np.ndarray], path: str | os.PathLike, *, title: str = "") -> Path:
    """Writes rows = datasets, columns = (block, expert), colour = that block's share of gate mass.

    Args:
        shares: dataset -> [blocks, E] expert use (each block's row sums to 1).
        path: the PNG to write (atomically).
    """
    names = list(shares)
    if not names:
        raise ValueError("no routing to draw")
    matrix = np.stack([np.asarray(shares[n], dtype=float).reshape(-1) for n in names])
    experts = np.asarray(shares[names[0]]).shape[-1]
    top = np.nanmax(matrix) or 1.0
    image = Image.new("RGB", (LEFT + CELL_W * matrix.shape[1] + 10, TOP + CELL_H * len(names) + 10), "white")
    draw = ImageDraw.Draw(image)
    draw.text((6, 6), title or "expert use per dataset (share of gate mass per block)", fill="black")
    for j in range(matrix.shape[1]):
        draw.text((LEFT + j * CELL_W + 8, TOP - 14), f"b{j // experts + 1}e{j % experts + 1}", fill="black")
    for i, name in enumerate(names):
        y = TOP + i * CELL_H
        draw.text((6, y + 5), name[:34], fill="black")
        for j, value in enumerate(matrix[i]):
            x = LEFT + j * CELL_W
            colour = _colour(value / top)
            draw.rectangle([x, y, x + CELL_W - 2, y + CELL_H - 2], fill=colour)
            draw.text((x + 8, y + 5), f"{value:.2f}", fill="black" if sum(colour) > 380 else "white")
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
