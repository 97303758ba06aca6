from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segmote_monai.data.datalist import load_datalist, pair_files, patient_of, patient_split
from segmote_monai.errors import InputFileError
from tests.conftest import shared_data

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build_datalist.py"


def run_script(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *map(str, args)])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    return info.value.code


def test_embedded_datalist_loads():
    datalist = load_datalist(REPO / "bundle/data/chaos_t2/datalist.json")
    assert datalist.task == "multi-class" and datalist.classes == [1, 2, 3, 4]
    assert len(datalist.items("training")) == 3 and len(datalist.items("validation")) == 1
    assert datalist.items("test")[0]["modality"] == "MR"
    assert Path(datalist.items("training")[0]["image"]).is_file()
    assert datalist.label_encoding() == {"label_values": [1, 2, 3, 4]}


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "not valid JSON"),
        ({"labels": {"0": "background"}, "training": [{"image": "a", "label": "b"}]}, "declares no foreground"),
        ({"labels": {"1": "a", "2": "b"}, "task": "binary", "training": [{"image": "a", "label": "b"}]},
         "task 'binary' needs exactly one foreground class"),
        ({"labels": {"1": "a"}, "task": "segment"}, r"'task' must be one of \['binary', 'multi-class'\]"),
        ({"labels": {"1": "a"}}, "no items"),
        ({"labels": {"1": "a"}, "modality": "MR", "training": [{"image": "a"}]}, "'training' item 0 has no 'label'"),
        ({"labels": {"1": "a"}, "modality": "PET", "training": [{"image": "a", "label": "b"}]},
         "'training' item 0: modality 'PET' not one of"),
    ],
)
def test_bad_datalists_name_the_file(tmp_path, content, message):
    path = tmp_path / "datalist.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(InputFileError, match=message) as info:
        load_datalist(path, check_files=False)
    assert str(info.value).startswith(f"{path}: ")


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"labels": {"1": "a"}, "modality": "CT", "training": [{"image": "x.nii.gz", "label": "y.nii.gz"}]}))
    with pytest.raises(InputFileError, match=rf"^{tmp_path / 'x.nii.gz'}: listed in {path} \('training' item 0\) but does not exist"):
        load_datalist(path)


@pytest.mark.parametrize("n,fractions", [(14, (0.9, 0.1, 0.0)), (17, (0.7, 0.15, 0.15)), (2, (0.9, 0.1, 0.0)), (1, (0.9, 0.1, 0.0))])
def test_patient_split(n, fractions):
    patients = [f"p{i:02d}" for i in range(n)] * 3  # several files per patient
    split = patient_split(patients, fractions=fractions, seed=0)
    sections = [set(v) for v in split.values()]
    assert set().union(*sections) == set(patients)
    assert sum(len(s) for s in sections) == n  # each patient exactly once
    if n >= 2 and fractions[1] > 0:
        assert split["validation"]
    assert split == patient_split(list(reversed(patients)), fractions=fractions, seed=0)
    assert split["training"]


def test_patient_split_bad_fractions():
    with pytest.raises(ValueError, match="fractions must be 3 non-negative numbers summing to 1"):
        patient_split(["a"], fractions=(0.5, 0.2, 0.0))


def test_patient_of():
    assert patient_of(Path("patient012_frame01_slice_3.png"), r"patient\d+") == "patient012"
    assert patient_of(Path("chaos_t2_case05.nii.gz"), r"case(\d+)") == "05"
    assert patient_of(Path("IMD016.png"), None) == "IMD016"
    with pytest.raises(InputFileError, match=re.escape("IMD016.png: file name does not match the patient pattern 'case\\\\d+'")):
        patient_of(Path("IMD016.png"), r"case\d+")


def test_pairing_errors(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"")
    with pytest.raises(InputFileError, match=r"a.png: no label named a_lesion.\* in"):
        pair_files(tmp_path / "images", tmp_path / "labels", mask_suffix="_lesion")
    (tmp_path / "labels" / "a_lesion.png").write_bytes(b"")
    (tmp_path / "labels" / "b_lesion.png").write_bytes(b"")
    with pytest.raises(InputFileError, match="b_lesion.png: label matches no image"):
        pair_files(tmp_path / "images", tmp_path / "labels", mask_suffix="_lesion")


@pytest.mark.parametrize(
    "folder,labels_dir,regex,labels",
    [
        ("mri_cardiac_acdc", "masks", r"patient\d+", {"1": "right ventricle", "2": "myocardium", "3": "left ventricle"}),
        ("mri_abdomen_chaos_t2", "labels", r"case\d+", {"1": "liver", "2": "right kidney", "3": "left kidney", "4": "spleen"}),
    ],
)
def test_script_never_splits_a_patient(tmp_path, monkeypatch, folder, labels_dir, regex, labels):
    data = shared_data(folder)
    out = tmp_path / "datalist.json"
    code = run_script(monkeypatch, "--images", data / "images", "--labels", data / labels_dir, "--out", out,
                      "--labels-json", json.dumps(labels), "--modality", "MR", "--patient-regex", regex,
                      "--fractions", 0.7, 0.15, 0.15, "--seed", 3)
    assert code == 0
    datalist = load_datalist(out)
    owners = {}
    for section in ("training", "validation", "test"):
        for item in datalist.items(section):
            owners.setdefault(item["patient"], set()).add(section)
            assert patient_of(Path(item["image"]), regex) == item["patient"]
    assert all(len(sections) == 1 for sections in owners.values())
    assert all(datalist.items(s) for s in ("training", "validation", "test"))


def test_script_reports_every_bad_pair_and_writes_nothing(tmp_path, monkeypatch, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name, label_shape, value in (("good", (8, 8, 4), 1), ("values", (8, 8, 4), 7), ("shape", (8, 8, 5), 1)):
        nib.save(nib.Nifti1Image(np.arange(256, dtype=np.int16).reshape(8, 8, 4), np.eye(4)),
                 tmp_path / "images" / f"{name}.nii.gz")
        label = np.zeros(label_shape, np.uint8)
        label[2:4, 2:4, 1] = value
        nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / "labels" / f"{name}.nii.gz")
    out = tmp_path / "datalist.json"
    code = run_script(monkeypatch, "--images", tmp_path / "images", "--labels", tmp_path / "labels", "--out", out,
                      "--labels-json", '{"1": "organ"}', "--modality", "CT")
    assert code == 1 and not out.exists() and list(tmp_path.glob(".*")) == []
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2
    assert any(e.startswith(f"error: {tmp_path / 'labels' / 'values.nii.gz'}: label values [7]") for e in errors)
    assert any(e.startswith(f"error: {tmp_path / 'labels' / 'shape.nii.gz'}: shape [8, 8, 5] differs") for e in errors)
