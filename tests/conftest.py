from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from segmote_monai.networks import build_segmote

SHARED_DATA = Path(os.environ.get("SEGMOTE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

TINY_WIDTHS = {"expert_hidden_dim": 64, "ppt_heads": 2, "ppt_mlp_dim": 64}


def tiny_segmote(**options):
    """SegMoTE on the tiny random backbone (D = 32, 64x64 input, 16x16 embedding)."""
    return build_segmote("tiny", **{**TINY_WIDTHS, **options})


def shared_data(relative: str) -> Path:
    """A path under ../shared/data, or a skip naming what is missing."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (set SEGMOTE_SHARED_DATA)")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
