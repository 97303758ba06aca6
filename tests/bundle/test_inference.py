from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from segmote_monai.data import load_image
from segmote_monai.data.dicom_seg import label_map_frames, read_series_headers
from segmote_monai.networks import read_trainable
from tests.bundle.conftest import CONFIGS, REPO, TINY_OVERRIDES, bundle_cli
from tests.conftest import shared_data
from tests.data.dicom_series import seg_frames_by_instance, stacked_by_instance, write_series


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


@pytest.fixture(scope="module")
def class_prompt_checkpoint(tiny_dataset, tmp_path_factory):
    """The real train.json with class_prompts on the tiny two-class dataset (with empty slices, cross-entropy and
    the presence head)."""
    out = tmp_path_factory.mktemp("class_prompts")
    run = bundle_cli("run", "training", "--config_file", CONFIGS / "train.json", "--dataset_dir", tiny_dataset,
                     "--datalist", tiny_dataset / "datalist.json", "--output_dir", out, "--model_path",
                     out / "model.pt", *TINY_OVERRIDES, "--class_prompts", "True", "--empty_share", "0.3",
                     "--lambda_ce", "1.0", "--presence_head", "True")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out / "models" / "segmote_latest.pt"


def test_automatic_multi_class_and_class_aware_boxes(class_prompt_checkpoint, tiny_dataset, tmp_path):
    assert read_trainable(class_prompt_checkpoint)["config"]["presence_head"]
    image = tiny_dataset / "images" / "case3.nii.gz"
    auto = infer(class_prompt_checkpoint, "--input", image, "--prompt_mode", "auto", "--output_dir", tmp_path / "auto")
    assert auto.returncode == 0, auto.stdout[-3000:] + auto.stderr[-3000:]
    sidecar = json.loads((tmp_path / "auto" / "case3_seg.json").read_text())
    assert sidecar["prompt_mode"] == "auto" and sidecar["labels"] == {"1": "organ", "2": "lesion"}
    pred = nib.load(tmp_path / "auto" / "case3_seg.nii.gz")
    assert pred.shape == nib.load(image).shape and set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
    roi = tiny_dataset / "labels" / "case3.nii.gz"
    boxed = {flag: infer(class_prompt_checkpoint, "--input", image, "--roi", roi, "--class_boxes", flag,
                         "--output_dir", tmp_path / flag) for flag in ("True", "False")}
    for run in boxed.values():
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "Traceback" not in run.stderr
    for flag in ("True", "False"):
        assert set(np.unique(np.asarray(nib.load(tmp_path / flag / "case3_seg.nii.gz").dataobj))) <= {0, 1, 2}


@pytest.mark.parametrize(
    "args,message",
    [
        (["--prompt_mode", "auto"], "prompt_mode 'auto' (PPT, no prompt) needs a binary model or one trained with class_prompts; this one segments 2 classes"),
        (["--prompt_mode", "box"], "needs exactly one of --boxes"),
        (["--boxes", "{boxes}"], "box 0 lies outside the image"),
        (["--roi", "{roi}", "--label_overlap", "largest"], "overlap must be one of ['smaller', 'logit'], got 'largest'"),
        (["--roi", "{roi}", "--prompt_free_refine", "2"], "prompt_free_refine must be in [0, 1] (or null), got 2"),
    ],
)
def test_refusals(checkpoint, tiny_dataset, tmp_path, args, message):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"boxes": [{"label": 1, "box": [500, 500, 1, 600, 600, 2]}]}))
    roi = tiny_dataset / "labels" / "case3.nii.gz"
    args = [a.replace("{boxes}", str(boxes)).replace("{roi}", str(roi)) for a in args]
    run = infer(checkpoint, "--input", tiny_dataset / "images" / "case3.nii.gz", "--output_dir", tmp_path / "out", *args)
    assert run.returncode != 0 and message in run.stdout + run.stderr and "Traceback" not in run.stderr
    if args[:2] == ["--prompt_mode", "auto"]:  # a refusal about the model names its checkpoint file
        assert f"{checkpoint}: {message}" in run.stdout + run.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.fixture
def identified_series(tiny_dataset, tmp_path):
    """The tiny case as a DICOM series carrying a patient's identifiers, and its label as a ROI on that grid."""
    image = np.asarray(nib.load(tiny_dataset / "images" / "case3.nii.gz").dataobj)
    label = np.asarray(nib.load(tiny_dataset / "labels" / "case3.nii.gz").dataobj)
    # frames [slice, row, column]; the label goes through the same writer and reader, so it lands on the same grid
    write_series(tmp_path / "series", np.rint(image).astype(np.int16).transpose(2, 1, 0))
    write_series(tmp_path / "label_series", label.astype(np.int16).transpose(2, 1, 0))
    roi = load_image(tmp_path / "label_series")
    nib.save(nib.Nifti1Image(roi[0].numpy().astype(np.uint8), roi.affine.numpy()), tmp_path / "roi.nii.gz")
    return tmp_path / "series", tmp_path / "roi.nii.gz"


def test_dicom_seg_round_trips_to_the_nifti_output(checkpoint, identified_series, tmp_path):
    pytest.importorskip("highdicom")
    series, roi = identified_series
    runs = {fmt: infer(checkpoint, "--input", series, "--roi", roi, "--output_dir", tmp_path / fmt, "--modality", "CT",
                       "--output_format", fmt) for fmt in ("nifti", "dicom_seg")}
    for run in runs.values():
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "dicom_seg").iterdir()) == ["series_seg.dcm", "series_seg.json"]
    nifti = nib.load(tmp_path / "nifti" / "series_seg.nii.gz")
    expected = label_map_frames(np.asarray(nifti.dataobj), nifti.affine, read_series_headers(series), source=series)
    assert expected.any()
    seg = pydicom.dcmread(tmp_path / "dicom_seg" / "series_seg.dcm")
    names = {int(s.SegmentNumber): s.SegmentLabel for s in seg.SegmentSequence}
    assert names == {1: "organ", 2: "lesion"}
    uids = [str(ds.SOPInstanceUID) for ds in read_series_headers(series)]
    rebuilt = stacked_by_instance(seg_frames_by_instance(seg, {"organ": 1, "lesion": 2}), uids, expected.shape)
    np.testing.assert_array_equal(rebuilt, expected)
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    sidecar = json.loads((tmp_path / "dicom_seg" / "series_seg.json").read_text())
    assert sidecar["pixels"] == json.loads((tmp_path / "nifti" / "series_seg.json").read_text())["pixels"]
    assert sidecar["dicom_seg"]["segments"]["2"]["type"] == "SCT 52988006 Lesion"
    assert sidecar["dicom_seg"]["source_instances"] == 6
    shared = (tmp_path / "dicom_seg" / "series_seg.json").read_text() + "".join(r.stdout + r.stderr for r in runs.values())
    assert not any(v in shared for v in ("DOE^JANE", "PID-4711", "19700101"))
    assert str(seg.PatientName) == "DOE^JANE"  # where DICOM requires it


@pytest.mark.parametrize(
    "args,message",
    [
        (["--output_format", "dicom_seg"], "case3.nii.gz: output_format 'dicom_seg' needs a DICOM series folder"),
        (["--output_format", "rtstruct"], "output_format must be one of ['nifti', 'dicom_seg'], got 'rtstruct'"),
    ],
)
def test_output_format_refusals(checkpoint, tiny_dataset, tmp_path, args, message):
    run = infer(checkpoint, "--input", tiny_dataset / "images" / "case3.nii.gz", "--roi",
                tiny_dataset / "labels" / "case3.nii.gz", "--output_dir", tmp_path / "out", *args)
    assert run.returncode != 0 and message in run.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def _reference_on_series_grid(series):
    """TotalSegmentator's reference for the series (stored in another axis order), on the series' grid by world
    coordinates; liver and spleen as the shipped model's label values 1 and 4."""
    image = load_image(series)
    reference = nib.load(shared_data("ct_mr_totalsegmentator/ct_dicom_seg.nii.gz"))
    to_reference = np.linalg.inv(reference.affine) @ image.affine.numpy()
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in image.shape[1:]], indexing="ij")).reshape(3, -1)
    index = np.rint(to_reference[:3, :3] @ grid + to_reference[:3, 3:]).astype(int)
    values = np.asarray(reference.dataobj)[index[0], index[1], index[2]].reshape(image.shape[1:])
    labels = np.zeros(values.shape, np.uint8)
    labels[values == 5], labels[values == 1] = 1, 4
    return labels, image.affine.numpy()


@pytest.mark.slow
def test_shipped_model_on_the_real_dicom_series_writes_the_same_dicom_seg_as_nifti(tmp_path):
    pytest.importorskip("highdicom")
    series = shared_data("ct_mr_totalsegmentator/ct_dicom")
    labels, affine = _reference_on_series_grid(series)
    roi = np.zeros_like(labels)
    roi[..., 9:12] = labels[..., 9:12]  # three slices keep the test to seconds
    nib.save(nib.Nifti1Image(roi, affine), tmp_path / "roi.nii.gz")
    for fmt in ("nifti", "dicom_seg"):
        run = bundle_cli("run", "inference", "--config_file", CONFIGS / "inference.json", "--input", series, "--roi",
                         tmp_path / "roi.nii.gz", "--modality", "CT", "--output_dir", tmp_path / fmt,
                         "--output_format", fmt)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    nifti = np.asarray(nib.load(tmp_path / "nifti" / "ct_dicom_seg.nii.gz").dataobj)
    headers = read_series_headers(series)
    expected = label_map_frames(nifti, affine, headers, source=series)
    seg = pydicom.dcmread(tmp_path / "dicom_seg" / "ct_dicom_seg.dcm")
    uids = [ds.file_meta.MediaStorageSOPInstanceUID for ds in headers]  # blank in the datasets
    organs = {"liver": 1, "right kidney": 2, "left kidney": 3, "spleen": 4}
    rebuilt = stacked_by_instance(seg_frames_by_instance(seg, organs), uids, expected.shape)
    np.testing.assert_array_equal(rebuilt, expected)
    liver = nifti[..., 9:12] == 1
    dice = 2 * (liver & (roi[..., 9:12] == 1)).sum() / (liver.sum() + (roi[..., 9:12] == 1).sum())
    assert dice > 0.8, dice  # a CT the MR-trained model never saw, with boxes from the reference
    sidecar = json.loads((tmp_path / "dicom_seg" / "ct_dicom_seg.json").read_text())
    assert sidecar["dicom_seg"]["derived_uids"] == ["StudyInstanceUID", "SeriesInstanceUID"]


def test_a_propagated_key_slice_box_and_its_sidecar(checkpoint, tiny_dataset, tmp_path):
    image = tiny_dataset / "images" / "case3.nii.gz"
    label = np.asarray(nib.load(tiny_dataset / "labels" / "case3.nii.gz").dataobj)
    i, j = np.nonzero(label[..., 3] == 1)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"boxes": [{"label": "organ", "box": [int(i.min()), int(j.min()), 3, int(i.max()),
                                                                     int(j.max()), 3], "propagate": True}]}))
    run = infer(checkpoint, "--input", image, "--boxes", boxes, "--output_dir", tmp_path / "out")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    pred = np.asarray(nib.load(tmp_path / "out" / "case3_seg.nii.gz").dataobj)
    reached = json.loads((tmp_path / "out" / "case3_seg.json").read_text())["propagation"]["organ"]
    assert reached["axis"] == 2 and 3 in reached["slices"]  # the stored file's slice axis and index
    assert pred[..., 3].any() and set(np.nonzero((pred == 1).any(axis=(0, 1)))[0]) <= set(reached["slices"])
    assert not (pred == 2).any()  # only the propagated structure was asked for


@pytest.mark.slow
def test_the_documented_propagation_example(tmp_path):
    """README and model card: one key-slice box per organ of patient 21, propagated; mean 3D Dice 0.901 (0.887
    before key-slice boxes were reboxed, bundle 0.6.7)."""
    case = REPO / "bundle" / "data" / "chaos_t2"
    run = bundle_cli("run", "inference", "--config_file", CONFIGS / "inference.json", "--input",
                     case / "images" / "chaos_t2_case21.nii.gz", "--boxes",
                     REPO / "bundle" / "docs" / "case21_key_slice_boxes.json", "--output_dir", tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    pred = np.asarray(nib.load(tmp_path / "chaos_t2_case21_seg.nii.gz").dataobj)
    label = np.asarray(nib.load(case / "labels" / "chaos_t2_case21.nii.gz").dataobj)
    dice = [2 * ((pred == c) & (label == c)).sum() / ((pred == c).sum() + (label == c).sum()) for c in (1, 2, 3, 4)]
    assert np.mean(dice) == pytest.approx(0.901, abs=0.005)
    reached = json.loads((tmp_path / "chaos_t2_case21_seg.json").read_text())["propagation"]
    assert reached["spleen"] == {"axis": 2, "slices": list(range(19, 27))}  # labelled on 18-26


def _evaluate(checkpoint, tiny_dataset, out, *extra):
    return bundle_cli("run", "evaluating", "--config_file",
                      f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']", "--dataset_dir", tiny_dataset,
                      "--datalist", tiny_dataset / "datalist.json", "--output_dir", out,
                      "--trainable_checkpoint", checkpoint, "--backbone", "tiny", "--eval_box_jitters", "[0.0]", *extra)


def test_evaluation_with_class_aware_boxes_and_no_prompt(class_prompt_checkpoint, trained_bundle, tiny_dataset,
                                                         tmp_path):
    run = _evaluate(class_prompt_checkpoint, tiny_dataset, tmp_path / "class", "--eval_class_boxes", "True")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = json.loads((tmp_path / "class" / "metrics.json").read_text())["per_case"]
    # the class-conditioned model is also scored with no prompt (every class asked for); the baseline on boxes only
    assert {(r["setting"], r["model"]) for r in rows} == {("box_tight", "segmote"), ("box_tight", "zero_shot"),
                                                          ("prompt_free", "segmote")}
    refused = _evaluate(trained_bundle[0] / "models" / "segmote_latest.pt", tiny_dataset, tmp_path / "plain",
                        "--eval_class_boxes", "True")
    assert refused.returncode != 0
    assert (f"{trained_bundle[0] / 'models' / 'segmote_latest.pt'}: class_boxes needs a model trained with "
            "class-conditioned PPT") in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "plain" / "metrics.json").exists()
