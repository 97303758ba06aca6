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
    box_of_mask,
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


def test_slice_sampler_carries_the_neighbouring_labels(volume):
    label = volume["label"]
    samples = RandSliceSamplerd(num_samples=20, neighbours_key="around").set_random_state(0)(volume)
    for sample in samples:
        i, around = sample["slice_index"], sample["around"]
        assert tuple(around.shape) == (2, 256, 256)
        for row, j in ((0, i - 1), (1, i + 1)):
            expected = label[0, ..., j] if 0 <= j < label.shape[-1] else torch.zeros_like(label[0, ..., 0])
            assert torch.equal(torch.as_tensor(around[row]), torch.as_tensor(expected))
    two = {"image": torch.rand(1, 6, 6, 2), "label": torch.stack([torch.ones(1, 6, 6), 2 * torch.ones(1, 6, 6)], -1)}
    for sample in RandSliceSamplerd(num_samples=6, neighbours_key="around").set_random_state(0)(two):
        other = 2 - sample["slice_index"]  # the other slice's value; past the ends: zeros
        expected = [0, other] if sample["slice_index"] == 0 else [other, 0]
        assert [int(v) for v in sample["around"].amax(dim=(1, 2))] == expected
    assert "around" not in RandSliceSamplerd(num_samples=2).set_random_state(0)(volume)[0]
    (flat,) = RandSliceSamplerd(neighbours_key="around")({"image": torch.rand(3, 20, 30),
                                                          "label": torch.ones(1, 20, 30)})
    assert tuple(flat["around"].shape) == (2, 20, 30) and not flat["around"].any()  # a 2D image: none


def test_rand_promptd_takes_neighbour_boxes_from_the_sampler(volume):
    sample = RandSliceSamplerd(num_samples=1, neighbours_key="around").set_random_state(1)(volume)[0]
    i = sample["slice_index"]
    out = RandPromptd(classes=[1, 2, 3, 4], neighbours_key="around", neighbour_share=1.0).set_random_state(0)(sample)
    c = int(out["class_id"])
    near = [volume["label"][0, ..., j] == c for j in (i - 1, i + 1) if 0 <= j < volume["label"].shape[-1]]
    assert any(bool(m.any()) and out["box"].tolist() == box_of_mask(torch.as_tensor(m)).tolist() for m in near)


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
