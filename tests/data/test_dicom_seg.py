from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from segmote_monai.data.dicom_seg import read_series_headers, write_dicom_seg
from segmote_monai.data.readers import load_image
from segmote_monai.data.terminology import coded_property
from segmote_monai.errors import InputFileError
from tests.data.dicom_series import PATIENT, seg_frames_by_instance, write_series

pytest.importorskip("highdicom")

NAMES = {1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen"}
ORIENTATIONS = {
    "axial": (1, 0, 0, 0, 1, 0),
    "axial, rows flipped": (1, 0, 0, 0, -1, 0),
    "coronal": (1, 0, 0, 0, 0, -1),
    "sagittal": (0, 1, 0, 0, 0, -1),
}


@pytest.mark.parametrize(
    "name,category,type_,modifier",
    [
        ("liver", "91723000", "10200004", None),
        ("right kidney", "91723000", "64033007", "24028007"),
        ("kidney_left", "91723000", "64033007", "7771000"),
        ("Left-Ventricle", "91723000", "87878005", None),  # a structure whose name starts with a side
        ("myocardium", "91723000", "49848007", None),
        ("polyp", "49755003", "52988006", None),
        ("skin lesion", "49755003", "95324001", None),
    ],
)
def test_coded_property(name, category, type_, modifier):
    coded = coded_property(name)
    assert (coded.category.value, coded.type.value) == (category, type_) and coded.coded
    assert (coded.modifier.value if coded.modifier else None) == modifier


@pytest.mark.parametrize("name", ["kidney_cyst_left", "left", "organ 7"])
def test_an_unknown_name_is_generic_and_reported(name):
    coded = coded_property(name)
    assert not coded.coded and coded.type.meaning == "Anatomical Structure" and coded.modifier is None


def _series(tmp_path, orientation, **kwargs):
    """A series whose stored pixel values are the label values (0..4): whatever the reader's axis order, the
    label map read back must equal the source instance's pixels, frame by frame."""
    frames = np.random.default_rng(0).integers(0, 5, (5, 18, 22)).astype(np.int16)
    folder = tmp_path / "series"
    uids = write_series(folder, frames, orientation=orientation, **kwargs)
    return folder, dict(zip(uids, frames))


def _frames_by_instance(seg: pydicom.Dataset) -> dict[str, np.ndarray]:
    return seg_frames_by_instance(seg, {name: value for value, name in NAMES.items()})


@pytest.mark.parametrize("orientation", list(ORIENTATIONS.values()), ids=list(ORIENTATIONS))
def test_each_frame_matches_its_source_instance(tmp_path, orientation):
    folder, pixels = _series(tmp_path, orientation)
    image = load_image(folder)
    labels = image[0].numpy().astype(np.uint8)  # the reader's grid and axis order
    summary = write_dicom_seg(labels, image.affine.numpy(), folder, NAMES, tmp_path / "seg.dcm",
                              algorithm_type="SEMIAUTOMATIC", algorithm_version="1.0")
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    rebuilt = _frames_by_instance(seg)
    assert set(rebuilt) == set(pixels)
    for uid, frame in pixels.items():
        np.testing.assert_array_equal(rebuilt[uid], frame)
    assert summary["frames"] == int(seg.NumberOfFrames) == 4 * len(pixels)  # every class on every instance
    assert summary["segments"]["2"] == {"label": 2, "name": "right kidney", "type": "SCT 64033007 Kidney (Right)"}
    assert summary["derived_uids"] == [] and summary["uncoded"] == []
    source = pydicom.dcmread(next(folder.iterdir()))
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    kidney = seg.SegmentSequence[1]
    assert kidney.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Right"
    assert kidney.SegmentAlgorithmType == "SEMIAUTOMATIC"


def test_patient_identifiers_only_in_the_patient_module(tmp_path):
    folder, _ = _series(tmp_path, ORIENTATIONS["axial"])
    image = load_image(folder)
    summary = write_dicom_seg(image[0].numpy().astype(np.uint8), image.affine.numpy(), folder, NAMES,
                              tmp_path / "seg.dcm", algorithm_type="AUTOMATIC", algorithm_version="1.0")
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert str(seg.PatientName) == PATIENT["PatientName"] and seg.PatientID == PATIENT["PatientID"]
    identifiers = [v for k, v in PATIENT.items() if k != "PatientSex"]  # "F" is in too many other values
    found = [elem.tag for elem in seg.iterall()
             if elem.VR != "SQ" and any(v in str(elem.value) for v in identifiers)]
    assert found and all(tag.group == 0x0010 for tag in found), found
    text = json.dumps(summary)
    assert not any(v in text for v in identifiers)
    assert pydicom.dcmread(next(folder.iterdir())).StudyInstanceUID not in text


def test_blank_uids_come_from_the_file_meta_or_are_derived_the_same_each_time(tmp_path):
    folder, pixels = _series(tmp_path, ORIENTATIONS["axial"], blank_uids=True)
    image = load_image(folder)
    labels, affine = image[0].numpy().astype(np.uint8), image.affine.numpy()
    first = write_dicom_seg(labels, affine, folder, NAMES, tmp_path / "a.dcm", algorithm_type="AUTOMATIC",
                            algorithm_version="1.0")
    write_dicom_seg(labels, affine, folder, NAMES, tmp_path / "b.dcm", algorithm_type="AUTOMATIC",
                    algorithm_version="1.0")
    assert first["derived_uids"] == ["StudyInstanceUID", "SeriesInstanceUID"]
    a, b = pydicom.dcmread(tmp_path / "a.dcm"), pydicom.dcmread(tmp_path / "b.dcm")
    assert a.StudyInstanceUID == b.StudyInstanceUID and a.StudyInstanceUID
    assert a.ReferencedSeriesSequence[0].SeriesInstanceUID == b.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert set(_frames_by_instance(a)) == set(pixels)  # the SOP Instance UIDs from the file meta


def test_refusals(tmp_path):
    folder, _ = _series(tmp_path, ORIENTATIONS["axial"])
    image = load_image(folder)
    labels, affine = image[0].numpy().astype(np.uint8), image.affine.numpy()
    shifted = affine.copy()
    shifted[:3, 3] += 0.5 * affine[:3, 0]  # half a voxel off
    args = {"algorithm_type": "AUTOMATIC", "algorithm_version": "1.0"}
    with pytest.raises(InputFileError, match="does not lie on the segmented grid"):
        write_dicom_seg(labels, shifted, folder, NAMES, tmp_path / "x.dcm", **args)
    with pytest.raises(InputFileError, match="does not lie on the segmented grid"):
        write_dicom_seg(labels[:, :, :3], affine, folder, NAMES, tmp_path / "x.dcm", **args)
    with pytest.raises(ValueError, match=r"label values \[3, 4\] are not among the classes \[1, 2\]"):
        write_dicom_seg(labels, affine, folder, {1: "liver", 2: "spleen"}, tmp_path / "x.dcm", **args)
    with pytest.raises(ValueError, match="algorithm_type must be one of"):
        write_dicom_seg(labels, affine, folder, NAMES, tmp_path / "x.dcm", algorithm_type="MANUAL",
                        algorithm_version="1.0")
    assert not (tmp_path / "x.dcm").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not DICOM")
    with pytest.raises(InputFileError, match="no DICOM image instances"):
        read_series_headers(empty)
