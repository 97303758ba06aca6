"""A tiny dataset and a tiny-backbone bundle run shared by the bundle tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundle" / "configs"
# Stored in another axis order than RAS, like many scanner exports.
NON_RAS = np.array([[0.0, -1.5, 0.0, 30.0], [-1.2, 0.0, 0.0, 20.0], [0.0, 0.0, 4.0, -10.0], [0, 0, 0, 1]])


def bundle_args(*args) -> list[str]:
    """``monai.bundle`` arguments as the tests run them from the repository root: ``--bundle_root`` is the
    repository's bundle (the configs' own default is ``.``, the zoo's layout), and a run given an
    ``--output_dir`` writes its ``model.pt`` there, never over the shipped ``bundle/models/model.pt``."""
    args = [str(a) for a in args]
    if "--config_file" in args and "--bundle_root" not in args:
        args += ["--bundle_root", str(REPO / "bundle")]
    if "--output_dir" in args and "--model_path" not in args:
        args += ["--model_path", str(Path(args[args.index("--output_dir") + 1]) / "models" / "model.pt")]
    return args


def bundle_cli(*args, cwd=REPO, timeout=600, env=None):
    """Runs ``python -m monai.bundle ...`` (see :func:`bundle_args`); returns the completed process."""
    return subprocess.run([sys.executable, "-m", "monai.bundle", *bundle_args(*args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def _volume(rng, shape=(40, 36, 6)):
    image = rng.normal(100, 10, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    x, y = rng.integers(5, 15, 2)
    label[x:x + 14, y:y + 12, 1:5] = 1
    label[x + 16:x + 22, y + 2:y + 10, 2:5] = 2
    image[label == 1] += 80
    image[label == 2] -= 60
    return image, label


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_dataset")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    items = []
    for i in range(4):
        image, label = _volume(rng)
        nib.save(nib.Nifti1Image(image, NON_RAS), root / "images" / f"case{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, NON_RAS), root / "labels" / f"case{i}.nii.gz")
        items.append({"image": f"images/case{i}.nii.gz", "label": f"labels/case{i}.nii.gz", "patient": f"case{i}"})
    datalist = {"name": "tiny", "modality": "CT", "task": "multi-class", "labels": {"0": "background", "1": "organ",
                "2": "lesion"}, "training": items[:2], "validation": items[2:3], "test": items[3:]}
    (root / "datalist.json").write_text(json.dumps(datalist))
    return root


TINY_OVERRIDES = ["--backbone", "tiny", "--expert_hidden_dim", "64", "--max_epochs", "2", "--samples_per_volume", "3",
                  "--batch_size", "4"]


@pytest.fixture(scope="session")
def trained_bundle(tiny_dataset, tmp_path_factory):
    """Two epochs of the real train.json on the tiny dataset; returns (output dir, completed process)."""
    out = tmp_path_factory.mktemp("bundle_train")
    run = bundle_cli("run", "training", "--meta_file", CONFIGS / "metadata.json", "--config_file",
                     CONFIGS / "train.json", "--logging_file", CONFIGS / "logging.conf",
                     "--dataset_dir", tiny_dataset, "--datalist", tiny_dataset / "datalist.json", "--output_dir", out,
                     *TINY_OVERRIDES)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out, run
