"""A map-style dataset whose items are single training slices, so that a batch is B slices (the paper's
batch of 10), shuffled across volumes, rather than B volumes times the slices drawn from each."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any

from monai.transforms import apply_transform
from torch.utils.data import Dataset

__all__ = ["SliceSampleDataset"]


class SliceSampleDataset(Dataset):
    """Each item draws one slice of a volume with ``sampler`` (e.g. ``RandSliceSamplerd(num_samples=1)``),
    then applies the per-slice ``transform``. Volume ``v`` owns ``samples_per_volume[v]`` consecutive items
    (a single int: the same for every volume), so an epoch draws exactly that many slices from it.

    Args:
        volumes: a dataset of volume dicts (e.g. a ``CacheDataset`` of loaded, scaled volumes).
        sampler: returns a list holding one slice dict.
        samples_per_volume: slices drawn from each volume per epoch, one int or one per volume (e.g.
            :meth:`~segmote_monai.data.joint.JointDatalist.samples_per_case`); 0 leaves a volume out.
        transform: per-slice transform (pre-processing, prompt sampling).
    """

    def __init__(self, volumes: Sequence, sampler: Callable, samples_per_volume: int | Sequence[int] = 8,
                 transform: Callable | None = None) -> None:
        if isinstance(samples_per_volume, int):
            if samples_per_volume < 1:
                raise ValueError(f"samples_per_volume must be >= 1, got {samples_per_volume}")
            counts = [samples_per_volume] * len(volumes)
        else:
            counts = [int(c) for c in samples_per_volume]
            if len(counts) != len(volumes) or any(c < 0 for c in counts) or not sum(counts):
                raise ValueError(f"samples_per_volume must give {len(volumes)} counts >= 0, not all 0, got "
                                 f"{counts[:8]}{'...' if len(counts) > 8 else ''} ({len(counts)} counts)")
        self.volumes = volumes
        self.sampler = sampler
        self.samples_per_volume = counts
        self._ends = list(accumulate(counts))
        self.transform = transform

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def volume_of(self, index: int) -> int:
        """The volume item ``index`` draws from."""
        return bisect.bisect_right(self._ends, index)

    def __getitem__(self, index: int) -> Any:
        drawn = self.sampler(self.volumes[self.volume_of(index)])
        item = drawn[0] if isinstance(drawn, list) else drawn
        return apply_transform(self.transform, item) if self.transform is not None else item
