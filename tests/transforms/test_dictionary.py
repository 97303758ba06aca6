from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, Invertd
from PIL import Image

from segmote_monai.errors import InputFileError
from segmote_monai.transforms import (
    BackboneNormalized,
    LabelToPromptsd,
    LoadPaird,
    RandPromptd,
    RandSliceSamplerd,
    ResizeLongestSidePadd,
    ScaleIntensityByModalityd,
    SliceVolumed,
    ToRGBd,
)

CHAOS = Path(__file__).resolve().parents[2] / "bundle" / "data" / "chaos_t2"
ITEM = {"image": str(CHAOS / "images/chaos_t2_case21.nii.gz"), "label": str(CHAOS / "labels/chaos_t2_case21.nii.gz"),
        "modality": "MR"}


@pytest.fixture(scope="module")
def volume():
    return Compose([LoadPaird(label_values=[1, 2, 3, 4]), ScaleIntensityByModalityd()])(ITEM)


def test_load_pair_orients_and_scales(volume):
    assert tuple(volume["image"].shape) == tuple(volume["label"].shape) == (1, 256, 256, 33)
    assert nib.aff2axcodes(volume["image"].affine.numpy()) == ("P", "L", "S")
    assert volume["image"].min() == 0 and volume["image"].max() == 1
    assert set(torch.unique(volume["label"]).tolist()) == {0, 1, 2, 3, 4}


def test_label_values_outside_the_declared_classes(tmp_path):
    with pytest.raises(InputFileError, match=r"chaos_t2_case21.nii.gz: label values \[3, 4\] are not among the declared \[0, 1, 2\]"):
        LoadPaird(label_values=[1, 2])(ITEM)


def test_mismatched_geometry_names_the_label(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((256, 256, 30), np.uint8), np.eye(4)), tmp_path / "seg.nii.gz")
    with pytest.raises(InputFileError, match=rf"^{tmp_path / 'seg.nii.gz'}: shape \[256, 256, 30\] differs"):
        LoadPaird(label_values=[1])({**ITEM, "label": str(tmp_path / "seg.nii.gz")})


def test_mask_threshold_for_rgb_jpeg_like_masks(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    mask = np.zeros((10, 12, 3), np.uint8)
    mask[2:5, 3:8] = 250
    mask[6, 6] = 100  # JPEG noise below the threshold
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = LoadPaird(mask_threshold=127)({"image": str(tmp_path / "img.png"), "label": str(tmp_path / "mask.png")})
    assert tuple(out["label"].shape) == (1, 10, 12)
    assert out["label"].sum() == 15 and set(torch.unique(out["label"]).tolist()) == {0, 1}


def test_load_pair_arguments():
    with pytest.raises(ValueError, match="give exactly one of label_values"):
        LoadPaird(label_values=[1], mask_threshold=127)


@pytest.mark.parametrize("empty_share,expect_empty", [(0.0, False), (1.0, True)])
def test_slice_sampler_share_of_empty_slices(volume, empty_share, expect_empty):
    samples = RandSliceSamplerd(num_samples=20, empty_share=empty_share).set_random_state(0)(volume)
    assert len(samples) == 20
    for sample in samples:
        assert tuple(sample["image"].shape) == (1, 256, 256)
        assert bool(sample["label"].sum() == 0) == expect_empty
        assert torch.equal(sample["label"], volume["label"][..., sample["slice_index"]])


def test_slice_sampler_is_seeded(volume):
    first = [s["slice_index"] for s in RandSliceSamplerd(num_samples=5).set_random_state(3)(volume)]
    again = [s["slice_index"] for s in RandSliceSamplerd(num_samples=5).set_random_state(3)(volume)]
    assert first == again


def test_every_slice_in_order(volume):
    slices = SliceVolumed()(volume)
    assert [s["slice_index"] for s in slices] == list(range(33))


def test_2d_items_pass_the_samplers():
    item = {"image": torch.rand(3, 20, 30), "label": torch.zeros(1, 20, 30)}
    (out,) = RandSliceSamplerd(num_samples=4)(item)
    assert out["image"] is item["image"] and out["slice_index"] == 0  # keyed like a volume's slices
    assert len(SliceVolumed()(item)) == 1


def test_slice_pipeline_and_its_inverse(volume):
    sample = SliceVolumed()(volume)[20]
    per_slice = Compose([
        ToRGBd(), ResizeLongestSidePadd(("image", "label"), 128, ("bilinear", "nearest-exact")),
        BackboneNormalized(backbone="sam_vit_b"), LabelToPromptsd(classes=[1, 2, 3, 4]),
        RandPromptd(classes=[1, 2, 3, 4], jitter=0.1),
    ]).set_random_state(0)
    out = per_slice(sample)
    assert tuple(out["image"].shape) == (3, 128, 128) and tuple(out["label"].shape) == (1, 128, 128)
    assert out["boxes"].shape[1] == 4 and len(out["class_ids"]) == out["boxes"].shape[0]
    assert out["mask"].shape == (1, 128, 128) and int(out["class_id"]) in out["class_ids"].tolist()
    inverted = Invertd(keys="label", transform=per_slice, orig_keys="label", nearest_interp=True)(out)
    assert tuple(inverted["label"].shape) == (1, 256, 256)
    assert (inverted["label"] != sample["label"]).float().mean() < 0.01  # 256 -> 128 -> 256 with nearest
