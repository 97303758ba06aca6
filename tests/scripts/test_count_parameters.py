from __future__ import annotations

import runpy
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "count_parameters.py"


def test_prints_a_table_per_backbone(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--backbone", "tiny", "--expert-hidden-dim", "64",
                                      "--ppt-mlp-dim", "64"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    out = capsys.readouterr().out
    assert "## tiny:" in out
    assert "| decoder.mote_blocks.1.experts" in out
    experts = 4 * (32 * 64 * 2 + 64 + 32)
    assert f"| decoder.mote_blocks.0.experts      | {experts:>12,} |" in out
