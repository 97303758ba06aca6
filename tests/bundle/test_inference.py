from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from segmote_monai.data import load_image
from tests.bundle.conftest import CONFIGS, bundle_cli
from tests.conftest import shared_data


def infer(checkpoint, *args):
    return bundle_cli("run", "inference", "--config_file", CONFIGS / "inference.json", "--ckpt_path", checkpoint,
                      "--backbone", "tiny", *args)


@pytest.fixture(scope="module")
def checkpoint(trained_bundle):
    return trained_bundle[0] / "models" / "segmote_latest.pt"


def test_non_ras_nifti_with_a_roi_file(checkpoint, tiny_dataset, tmp_path):
    image = tiny_dataset / "images" / "case3.nii.gz"
    run = infer(checkpoint, "--input", image, "--roi", tiny_dataset / "labels" / "case3.nii.gz", "--output_dir", tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    pred, source = nib.load(tmp_path / "case3_seg.nii.gz"), nib.load(image)
    assert pred.shape == source.shape and np.allclose(pred.affine, source.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
    sidecar = json.loads((tmp_path / "case3_seg.json").read_text())
    assert sidecar["labels"] == {"1": "organ", "2": "lesion"} and sidecar["backbone"] == "tiny"
    voxel_ml = abs(np.linalg.det(source.affine[:3, :3])) / 1000
    organ = int((np.asarray(pred.dataobj) == 1).sum())
    assert sidecar["volume_ml"]["organ"] == pytest.approx(organ * voxel_ml)
    assert len(sidecar["checkpoint_sha256"]) == 64 and "monai" in sidecar["versions"]
    assert "segmenting" in run.stderr  # the progress bar
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case3_seg.json", "case3_seg.nii.gz"]


def test_dicom_series_with_a_3d_box(checkpoint, tmp_path):
    series = shared_data("ct_mr_totalsegmentator/ct_dicom")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"boxes": [{"label": 1, "box": [200, 220, 5, 330, 320, 12], "space": "voxel"}]}))
    run = infer(checkpoint, "--input", series, "--boxes", boxes, "--output_dir", tmp_path / "out")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    pred = nib.load(tmp_path / "out" / "ct_dicom_seg.nii.gz")
    source = load_image(series)
    assert pred.shape == tuple(source.shape[1:]) and np.allclose(pred.affine, source.affine.numpy(), atol=1e-4)
    data = np.asarray(pred.dataobj)
    assert data[..., :5].sum() == 0 and data[..., 13:].sum() == 0  # only the slices the 3D box spans


def test_2d_image_gives_a_2d_label_image(checkpoint, tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"boxes": [{"label": 2, "box": [10, 5, 40, 30]}]}))
    run = infer(checkpoint, "--input", tmp_path / "photo.png", "--boxes", boxes, "--output_dir", tmp_path / "out",
                "--modality", "RGB")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    pred = np.asarray(Image.open(tmp_path / "out" / "photo_seg.png"))
    assert pred.shape == (50, 70) and set(np.unique(pred)) <= {0, 2}


@pytest.mark.parametrize(
    "args,message",
    [
        (["--prompt_mode", "auto"], "prompt_mode 'auto' (PPT, no prompt) needs a binary model; this one segments 2 classes"),
        (["--prompt_mode", "box"], "needs exactly one of --boxes"),
        (["--boxes", "{boxes}"], "box 0 lies outside the image"),
        (["--roi", "{roi}", "--label_overlap", "largest"], "overlap must be one of ['smaller', 'logit'], got 'largest'"),
    ],
)
def test_refusals(checkpoint, tiny_dataset, tmp_path, args, message):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"boxes": [{"label": 1, "box": [500, 500, 1, 600, 600, 2]}]}))
    roi = tiny_dataset / "labels" / "case3.nii.gz"
    args = [a.replace("{boxes}", str(boxes)).replace("{roi}", str(roi)) for a in args]
    run = infer(checkpoint, "--input", tiny_dataset / "images" / "case3.nii.gz", "--output_dir", tmp_path / "out", *args)
    assert run.returncode != 0 and message in run.stdout + run.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
