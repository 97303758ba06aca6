from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from segmote_monai.data import (
    SLICE_AXES,
    check_pair,
    load_image,
    orient_for_slicing,
    restore_grid,
    slices_to_volume,
    stored_slice_axis,
    volume_to_slices,
)
from segmote_monai.errors import InputFileError
from tests.conftest import shared_data

# Axes permuted and flipped, oblique-free: a volume stored the way a scanner export may store it.
NON_RAS = np.array([[0.0, 0.0, -2.5, 40.0], [-0.8, 0.0, 0.0, 12.0], [0.0, 1.2, 0.0, -30.0], [0, 0, 0, 1]])


def _identity_round_trip(path, slice_axis="axial"):
    """Slices the file as SegMoTE sees it, passes every slice through unchanged, and reassembles."""
    read = load_image(path)
    oriented = orient_for_slicing(read, slice_axis)
    slices = volume_to_slices(oriented)
    restored = restore_grid(slices_to_volume(slices.clone(), is_2d=read.ndim == 3), oriented)
    return read, oriented, restored


@pytest.mark.parametrize("slice_axis", list(SLICE_AXES))
def test_non_ras_nifti_round_trip_is_voxel_exact(tmp_path, slice_axis):
    label = np.random.default_rng(0).integers(0, 4, (9, 10, 11)).astype(np.uint8)
    nib.save(nib.Nifti1Image(label, NON_RAS), tmp_path / "label.nii.gz")
    read, oriented, restored = _identity_round_trip(tmp_path / "label.nii.gz", slice_axis)
    assert torch.equal(restored.as_tensor(), read.as_tensor())
    np.testing.assert_array_equal(restored.affine.numpy(), read.affine.numpy())
    np.testing.assert_allclose(restored.affine.numpy(), NON_RAS, atol=1e-6)
    assert nib.aff2axcodes(oriented.affine.numpy()) == tuple(SLICE_AXES[slice_axis])


def test_saved_prediction_keeps_the_input_grid(tmp_path):
    label = np.random.default_rng(1).integers(0, 3, (9, 10, 11)).astype(np.uint8)
    nib.save(nib.Nifti1Image(label, NON_RAS), tmp_path / "label.nii.gz")
    _, _, restored = _identity_round_trip(tmp_path / "label.nii.gz")
    nib.save(nib.Nifti1Image(restored[0].numpy(), restored.affine.numpy()), tmp_path / "pred.nii.gz")
    saved = nib.load(tmp_path / "pred.nii.gz")
    original = nib.load(tmp_path / "label.nii.gz")
    assert saved.shape == original.shape and np.allclose(saved.affine, original.affine)
    np.testing.assert_array_equal(np.asarray(saved.dataobj), label)


def test_dicom_series_round_trip_and_world_overlap_with_its_label():
    folder = shared_data("ct_mr_totalsegmentator")
    image, oriented_image, restored = _identity_round_trip(folder / "ct_dicom")
    assert torch.equal(restored.as_tensor(), image.as_tensor())
    assert np.allclose(restored.affine.numpy(), image.affine.numpy())

    label = load_image(folder / "ct_dicom_seg.nii.gz")
    assert not np.allclose(label.affine.numpy(), image.affine.numpy())  # stored in another axis order
    oriented_label = orient_for_slicing(label)
    check_pair(oriented_image, oriented_label)  # same world grid once both are in slicing order
    # Same world positions: inside the body label the CT is soft tissue, outside it mostly air.
    inside = oriented_image[oriented_label > 0].float().mean().item()
    outside = oriented_image[oriented_label == 0].float().mean().item()
    assert inside > -100 and outside < -500


def test_2d_images_are_one_slice():
    image = torch.arange(24.0).reshape(1, 4, 6)
    slices = volume_to_slices(image)
    assert slices.shape == (1, 1, 4, 6)
    assert torch.equal(slices_to_volume(slices, is_2d=True), image)


def _meta_image(shape, affine, path):
    from monai.data import MetaTensor

    return MetaTensor(torch.zeros(shape), affine=torch.as_tensor(affine), meta={"filename_or_obj": path})


def test_check_pair_errors_name_the_label():
    image = _meta_image((1, 4, 5, 6), np.eye(4), "ct.nii.gz")
    with pytest.raises(InputFileError, match=r"^seg.nii.gz: shape \[4, 5, 7\] differs from its image \[4, 5, 6\]"):
        check_pair(image, _meta_image((1, 4, 5, 7), np.eye(4), "seg.nii.gz"))
    shifted = np.eye(4)
    shifted[0, 3] = 1.5
    with pytest.raises(InputFileError, match=r"^seg.nii.gz: affine differs from its image's \(ct.nii.gz\) by up to 1.5 mm"):
        check_pair(image, _meta_image((1, 4, 5, 6), shifted, "seg.nii.gz"))
    with pytest.raises(InputFileError, match="has 2 channels; a label map has 1"):
        check_pair(image, _meta_image((2, 4, 5, 6), np.eye(4), "seg.nii.gz"))


def test_unknown_slice_axis():
    with pytest.raises(ValueError, match=r"slice_axis must be one of \['axial', 'coronal', 'sagittal'\], got 'oblique'"):
        orient_for_slicing(_meta_image((1, 2, 2, 2), np.eye(4), "x"), "oblique")


@pytest.mark.parametrize("affine, axis, stored", [
    (np.diag([-1.0, -1.0, 2.0, 1.0]), 2, [0, 5]),  # stored as LPS: slices run along k as they are
    (np.diag([-1.0, -1.0, -2.0, 1.0]), 2, [5, 0]),  # k runs downwards: oriented slice 0 is the last stored one
    (np.array([[0, -1.0, 0, 0], [0, 0, -1.0, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]]), 0, [0, 5]),  # S along i
])
def test_stored_slice_axis_names_the_files_own_slices(affine, axis, stored):
    shape = (6, 4, 5) if axis == 0 else (4, 5, 6)
    voxels = torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(1, *shape)
    image = MetaTensor(voxels, affine=torch.as_tensor(affine))
    oriented = orient_for_slicing(image)
    found_axis, found = stored_slice_axis(oriented, [0, 5])
    assert (found_axis, found) == (axis, stored)
    for z, k in zip([0, 5], found):  # the oriented slice holds exactly the stored slice's voxels
        stored_slice = np.take(image[0].numpy(), k, axis=axis)
        assert sorted(oriented[0, ..., z].flatten().tolist()) == sorted(stored_slice.flatten().tolist())
