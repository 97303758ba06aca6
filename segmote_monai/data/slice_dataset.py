"""A map-style dataset whose items are single training slices, so that a batch is B slices (the paper's
batch of 10), shuffled across volumes, rather than B volumes times the slices drawn from each."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from monai.transforms import apply_transform
from torch.utils.data import Dataset

__all__ = ["SliceSampleDataset"]


class SliceSampleDataset(Dataset):
    """Item ``i`` draws one slice of volume ``i // samples_per_volume`` with ``sampler`` (e.g.
    ``RandSliceSamplerd(num_samples=1)``), then applies the per-slice ``transform``.

    Args:
        volumes: a dataset of volume dicts (e.g. a ``CacheDataset`` of loaded, scaled volumes).
        sampler: returns a list holding one slice dict.
        samples_per_volume: slices drawn from each volume per epoch.
        transform: per-slice transform (pre-processing, prompt sampling).
    """

    def __init__(self, volumes: Sequence, sampler: Callable, samples_per_volume: int = 8,
                 transform: Callable | None = None) -> None:
        if samples_per_volume < 1:
            raise ValueError(f"samples_per_volume must be >= 1, got {samples_per_volume}")
        self.volumes = volumes
        self.sampler = sampler
        self.samples_per_volume = int(samples_per_volume)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.volumes) * self.samples_per_volume

    def __getitem__(self, index: int) -> Any:
        drawn = self.sampler(self.volumes[index // self.samples_per_volume])
        item = drawn[0] if isinstance(drawn, list) else drawn
        return apply_transform(self.transform, item) if self.transform is not None else item
