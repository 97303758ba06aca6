"""Every bad input the README's table lists, through the bundle's own commands: refused inputs end the run with
``error: <file>: <problem>`` and a non-zero exit, and leave no output; converted inputs run, with a warning
where something is dropped."""

from __future__ import annotations

import gzip
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from tests.bundle.conftest import CONFIGS, NON_RAS, TINY_OVERRIDES, bundle_cli
from tests.bundle.test_inference import infer
from tests.conftest import shared_data


@pytest.fixture(scope="module")
def checkpoint(trained_bundle):
    return trained_bundle[0] / "models" / "segmote_latest.pt"


def _volume(path, shape=(40, 36, 6), fill=None, dtype=np.float32, affine=NON_RAS):
    data = np.random.default_rng(0).normal(100, 10, shape).astype(dtype) if fill is None else np.full(shape, fill, dtype)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _boxes(tmp_path, box=(5, 5, 1, 20, 20, 3)):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"boxes": [{"label": 1, "box": list(box)}]}))
    return path


def _no_output(folder):
    return not folder.exists() or not any(p.is_file() for p in folder.rglob("*"))


def _refused(run, path, problem):
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]
    assert f"error: {path}: " in run.stderr and problem in run.stderr, output[-3000:]
    assert "Traceback" not in run.stderr  # one line, not a stack


def _truncated(tmp_path):
    whole = _volume(tmp_path / "whole.nii.gz").read_bytes()
    (tmp_path / "scan.nii.gz").write_bytes(whole[: len(whole) // 2])
    return tmp_path / "scan.nii.gz"


def _not_an_image(tmp_path):
    (tmp_path / "scan.nii.gz").write_bytes(gzip.compress(b"patient notes, not an image\n" * 50))
    return tmp_path / "scan.nii.gz"


def _empty_dicom_folder(tmp_path):
    (tmp_path / "series").mkdir()
    return tmp_path / "series"


def _mixed_series(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    source = shared_data("ct_mr_totalsegmentator/ct_dicom")
    folder = tmp_path / "series"
    shutil.copytree(source, folder)
    second = pydicom.uid.generate_uid()
    for path in sorted(p for p in folder.iterdir() if p.is_file())[::2]:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = second
        ds.save_as(path)
    return folder


def _four_d(tmp_path):
    return _volume(tmp_path / "scan.nii.gz", shape=(40, 36, 6, 3))


def _nan(tmp_path):
    path = _volume(tmp_path / "scan.nii.gz")
    data = nib.load(path).get_fdata().astype(np.float32)
    data[3, 4, 2], data[5, 5, 5] = np.nan, np.inf
    nib.save(nib.Nifti1Image(data, NON_RAS), path)
    return path


def _constant(tmp_path):
    return _volume(tmp_path / "scan.nii.gz", fill=-1000, dtype=np.int16)


@pytest.mark.parametrize("make,problem", [
    (_truncated, "cannot be read as an image"),
    (_not_an_image, "cannot be read as an image"),
    (_empty_dicom_folder, "empty folder: no image files and no DICOM series"),
    (_mixed_series, "holds 2 DICOM series"),
    (_four_d, "expected one 3D volume"),
    (_nan, "2 of 8640 values are NaN or infinite"),
    (_constant, "every voxel has the value -1000: nothing to segment"),
])
def test_refused_images(checkpoint, tmp_path, make, problem):
    path = make(tmp_path)
    run = infer(checkpoint, "--input", path, "--boxes", _boxes(tmp_path), "--output_dir", tmp_path / "out")
    _refused(run, path, problem)
    assert _no_output(tmp_path / "out")


@pytest.mark.parametrize("box,problem", [
    ((500, 500, 1, 600, 600, 2), "box 0 lies outside the image"),
    ((20, 5, 1, 5, 20, 3), "has an end before its start"),
    ((5, 5, 4, 20, 20, 1), "has an end before its start"),
])
def test_refused_boxes(checkpoint, tmp_path, box, problem):
    boxes = _boxes(tmp_path, box)
    run = infer(checkpoint, "--input", _volume(tmp_path / "scan.nii.gz"), "--boxes", boxes,
                "--output_dir", tmp_path / "out")
    _refused(run, boxes, problem)
    assert _no_output(tmp_path / "out")


def test_an_output_may_not_overwrite_an_input(checkpoint, tiny_dataset, tmp_path):
    roi = tmp_path / "case3_seg.nii.gz"  # what the prediction for case3 would be called
    shutil.copy(tiny_dataset / "labels" / "case3.nii.gz", roi)
    before = roi.read_bytes()
    shutil.copy(tiny_dataset / "images" / "case3.nii.gz", tmp_path / "case3.nii.gz")
    run = infer(checkpoint, "--input", tmp_path / "case3.nii.gz", "--roi", roi, "--output_dir", tmp_path)
    _refused(run, roi, "an output would overwrite an input file")
    assert roi.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "case3.nii.gz", "case3_seg.nii.gz"]


def test_checkpoint_for_another_backbone(checkpoint, tmp_path):
    run = bundle_cli("run", "inference", "--config_file", CONFIGS / "inference.json", "--ckpt_path", checkpoint,
                     "--backbone", "lite_medsam", "--input", _volume(tmp_path / "scan.nii.gz"),
                     "--boxes", _boxes(tmp_path), "--output_dir", tmp_path / "out")
    _refused(run, checkpoint, "backbone")
    assert _no_output(tmp_path / "out")


def test_missing_sam_checkpoint(checkpoint, tmp_path):
    missing = tmp_path / "sam_vit_b_01ec64.pth"
    run = infer(checkpoint, "--backbone", "sam_vit_b", "--sam_checkpoint", missing,
                "--input", _volume(tmp_path / "scan.nii.gz"), "--boxes", _boxes(tmp_path),
                "--output_dir", tmp_path / "out")
    _refused(run, missing, "no such file: the sam_vit_b checkpoint")


@pytest.mark.parametrize("make,suffix,warning", [
    (lambda: np.random.default_rng(0).integers(0, 255, (50, 70, 4), dtype=np.uint8), ".png",
     "alpha channel is dropped"),
    (lambda: np.random.default_rng(0).integers(0, 4000, (50, 70), dtype=np.uint16), ".png", None),
])
def test_converted_2d_images(checkpoint, tmp_path, make, suffix, warning):
    Image.fromarray(make()).save(tmp_path / f"photo{suffix}")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"boxes": [{"label": 1, "box": [10, 5, 40, 30]}]}))
    run = infer(checkpoint, "--input", tmp_path / f"photo{suffix}", "--boxes", boxes, "--output_dir", tmp_path / "out",
                "--modality", "XR")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert np.asarray(Image.open(tmp_path / "out" / "photo_seg.png")).shape == (50, 70)
    if warning:
        output = run.stdout + run.stderr
        assert warning in output and "photo" not in output.split(warning)[0].splitlines()[-1]


def test_one_slice_thick_volume_is_one_slice(checkpoint, tmp_path):
    path = _volume(tmp_path / "scan.nii.gz", shape=(40, 36, 1))
    run = infer(checkpoint, "--input", path, "--boxes", _boxes(tmp_path, (5, 5, 0, 20, 20, 0)),
                "--output_dir", tmp_path / "out")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert nib.load(tmp_path / "out" / "scan_seg.nii.gz").shape == (40, 36, 1)


def _datalist(tiny_dataset, tmp_path, change):
    """A copy of the tiny dataset's datalist whose first training item is made bad by ``change``."""
    raw = json.loads((tiny_dataset / "datalist.json").read_text())
    for section in ("training", "validation", "test"):
        for item in raw[section]:
            for key in ("image", "label"):
                item[key] = str(tiny_dataset / item[key])
    bad = change(raw, tmp_path)
    (tmp_path / "datalist.json").write_text(json.dumps(raw))
    return tmp_path / "datalist.json", bad


def _label(raw, tmp_path, data, affine=NON_RAS, section="training"):
    path = tmp_path / "bad_label.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    raw[section][0]["label"] = str(path)
    return path


def _shape_mismatch(raw, tmp_path):
    return _label(raw, tmp_path, np.zeros((40, 36, 5), np.uint8))


def _affine_mismatch(raw, tmp_path):
    shifted = NON_RAS.copy()
    shifted[0, 3] += 5.0
    data = np.asarray(nib.load(raw["training"][0]["label"]).dataobj)
    return _label(raw, tmp_path, data, shifted)


def _undeclared_values(raw, tmp_path):
    data = np.asarray(nib.load(raw["training"][0]["label"]).dataobj).copy()
    data[0, 0, 0] = 7
    return _label(raw, tmp_path, data)


def _empty_training_label(raw, tmp_path):
    return _label(raw, tmp_path, np.zeros((40, 36, 6), np.uint8))


def _missing_file(raw, tmp_path):
    raw["training"][0]["image"] = str(tmp_path / "gone.nii.gz")
    return tmp_path / "gone.nii.gz"


@pytest.mark.parametrize("change,problem", [
    (_shape_mismatch, "shape [40, 36, 5] differs from its image"),
    (_affine_mismatch, "affine differs from its image"),
    (_undeclared_values, "label values [7] are not among the declared [0, 1, 2]"),
    (_empty_training_label, "the label is empty (no foreground voxel)"),
    (_missing_file, "does not exist"),
])
def test_refused_training_data(tiny_dataset, tmp_path, change, problem):
    datalist, bad = _datalist(tiny_dataset, tmp_path, change)
    run = bundle_cli("run", "training", "--config_file", CONFIGS / "train.json", "--dataset_dir", tiny_dataset,
                     "--datalist", datalist, "--output_dir", tmp_path / "out", *TINY_OVERRIDES)
    _refused(run, bad, problem)
    assert _no_output(tmp_path / "out")


def test_an_empty_test_label_is_left_out_of_evaluation(checkpoint, tiny_dataset, tmp_path):
    def empty_test_label(raw, tmp_path):
        raw["test"] = [raw["training"][0], raw["test"][0]]
        return _label(raw, tmp_path, np.zeros((40, 36, 6), np.uint8), section="test")

    datalist, _ = _datalist(tiny_dataset, tmp_path, empty_test_label)
    run = bundle_cli("run", "evaluating", "--config_file", f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']",
                     "--dataset_dir", tiny_dataset, "--datalist", datalist, "--output_dir", tmp_path / "out",
                     "--trainable_checkpoint", checkpoint, *TINY_OVERRIDES)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "'test' item 0 has an empty label: nothing to prompt or score, left out" in run.stdout + run.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["cases"] == 1


def test_output_folder_that_is_a_file(checkpoint, tmp_path):
    taken = tmp_path / "out"
    taken.write_text("a report, not a folder")
    run = infer(checkpoint, "--input", _volume(tmp_path / "scan.nii.gz"), "--boxes", _boxes(tmp_path),
                "--output_dir", taken)
    _refused(run, taken, "output_dir is an existing file, not a folder")
    assert taken.read_text() == "a report, not a folder"
