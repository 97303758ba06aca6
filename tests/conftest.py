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


SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "bundle" / "models" / "model.pt"


@pytest.fixture(scope="session", autouse=True)
def _shipped_model_untouched():
    """No test may train over the shipped weights (training's default ``model_path`` is the bundle's own)."""
    before = SHIPPED_MODEL.stat().st_mtime_ns, SHIPPED_MODEL.read_bytes()
    yield
    assert (SHIPPED_MODEL.stat().st_mtime_ns, SHIPPED_MODEL.read_bytes()) == before, f"a test changed {SHIPPED_MODEL}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
