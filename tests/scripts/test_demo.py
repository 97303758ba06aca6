"""The main job end to end, on the embedded sample, with the tiny random backbone (minutes -> seconds)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "demo.py"


def test_trains_segments_and_writes_on_the_input_grid(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--backbone", "tiny", "--epochs", "1", "--samples-per-volume", "2",
                                      "--output-dir", str(tmp_path)])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    out = capsys.readouterr().out
    assert "| case21 | tight | zero-shot |" in out and "| case21 | ±10% | SegMoTE |" in out
    pred = nib.load(tmp_path / "case21_pred.nii.gz")
    image = nib.load(REPO / "bundle/data/chaos_t2/images/chaos_t2_case21.nii.gz")
    assert pred.shape == image.shape and np.allclose(pred.affine, image.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2, 3, 4}
    assert (tmp_path / "segmote_trainable.pt").is_file()
    assert (tmp_path / "cache").is_dir() and not list(tmp_path.glob(".*"))
