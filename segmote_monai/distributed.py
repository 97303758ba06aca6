"""Where this process stands in a torch.distributed run (rank 0 of 1 without one)."""

from __future__ import annotations

import torch.distributed as dist

__all__ = ["rank_and_world"]


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
