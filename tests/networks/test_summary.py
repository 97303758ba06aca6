from __future__ import annotations

import pytest

from segmote_monai.networks import build_segmote
from segmote_monai.networks.summary import parameter_summary
from tests.conftest import tiny_segmote

TOTALS = ("MoTE", "PPT", "trainable", "frozen")


def test_sam_vit_b_default_widths_fit_the_papers_budget():
    rows = parameter_summary(build_segmote("sam_vit_b", random_weights=True))
    assert rows["MoTE"] == pytest.approx(8.4e6, rel=0.01)
    assert rows["decoder.mote_blocks.0.experts"] == 4 * (256 * 2048 * 2 + 2048 + 256)
    assert rows["trainable"] <= 17_000_000
    assert rows["frozen"] > 90_000_000


def test_rows_add_up_to_the_trainable_total():
    rows = parameter_summary(tiny_segmote())
    assert sum(v for k, v in rows.items() if k not in TOTALS) == rows["trainable"]
    assert rows["trainable"] == sum(p.numel() for p in tiny_segmote().parameters() if p.requires_grad)


def test_zero_shot_baseline_trains_nothing():
    rows = parameter_summary(tiny_segmote(num_expert_tokens=0, num_ppt_queries=0))
    assert rows["trainable"] == 0 and rows["MoTE"] == 0 and rows["frozen"] > 0
