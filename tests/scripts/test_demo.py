"""The main job end to end, on the embedded sample, with the tiny random backbone (minutes -> seconds)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "demo.py"


def test_trains_evaluates_and_writes_on_the_input_grid(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--backbone", "tiny", "--max-epochs", "1",
                                      "--samples-per-volume", "1", "--output-dir", str(tmp_path)])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    out = capsys.readouterr().out
    assert "$ python -m monai.bundle run training" in out and "run evaluating" in out and "run inference" in out
    assert "| box_tight |" in out and "| box_jitter_0.1 |" in out
    assert f"MLflow store: {tmp_path / 'mlruns.db'}" in out and (tmp_path / "mlruns.db").is_file()
    pred = nib.load(tmp_path / "predictions" / "chaos_t2_case21_seg.nii.gz")
    image = nib.load(REPO / "bundle/data/chaos_t2/images/chaos_t2_case21.nii.gz")
    assert pred.shape == image.shape and np.allclose(pred.affine, image.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2, 3, 4}
    sidecar = json.loads((tmp_path / "predictions" / "chaos_t2_case21_seg.json").read_text())
    assert set(sidecar["volume_ml"]) == {"liver", "right kidney", "left kidney", "spleen"}
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["cases"] == 1 and {r["model"] for r in metrics["results"]} == {"segmote", "zero_shot"}
