"""A tiny random image encoder for unit tests: TinyViT's structure in miniature (conv stem + BatchNorm)."""

from __future__ import annotations

import torch
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

__all__ = ["TinyImageEncoder"]


class TinyImageEncoder(nn.Module):
    """Patchifying conv with BatchNorm, then a 1x1 projection and SAM's channel LayerNorm neck.

    The BatchNorm is deliberate: tests check that a frozen encoder's running statistics never move.
    """

    def __init__(self, *, img_size: int = 64, embed_dim: int = 32, patch_size: int = 4) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size must be a multiple of patch_size={patch_size}, got {img_size}")
        self.img_size = img_size
        self.stem = nn.Sequential(
            nn.Conv2d(3, embed_dim // 2, kernel_size=patch_size, stride=patch_size),
            nn.BatchNorm2d(embed_dim // 2),
            nn.GELU(),
        )
        self.neck = nn.Sequential(nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=1), LayerNorm2d(embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] images -> [B, embed_dim, S / patch_size, S / patch_size] embeddings."""
        return self.neck(self.stem(x))
