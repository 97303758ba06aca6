"""Property tests of the loading and reassembly path over random shapes, dtypes and affines: a valid file
round-trips voxel for voxel onto its own grid, through the bundle's loader and the slice reassembly; a
damaged one raises the project's own :class:`InputFileError` and nothing else."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from segmote_monai.data import SLICE_AXES, restore_grid, slices_to_volume, volume_to_slices
from segmote_monai.errors import InputFileError
from segmote_monai.transforms import LoadPaird

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

DTYPES = [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64]
PERMUTATIONS = list(itertools.permutations(range(3)))


@st.composite
def affines(draw):
    """Axis-aligned affines as scanners store them: any axis order, any flips, any spacing and origin."""
    order = draw(st.sampled_from(PERMUTATIONS))
    signs = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=3, max_size=3))
    spacing = draw(st.lists(st.floats(0.3, 8.0), min_size=3, max_size=3))
    origin = draw(st.lists(st.floats(-300.0, 300.0), min_size=3, max_size=3))
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for column, row in enumerate(order):
        affine[row, column] = signs[column] * spacing[column]
    affine[:3, 3] = origin
    return affine


@st.composite
def volumes(draw):
    shape = (draw(st.integers(2, 9)), draw(st.integers(1, 9)), draw(st.integers(1, 9)))  # >= 2 voxels
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    image = (rng.integers(info.min, info.max, shape, endpoint=True) if info else rng.normal(0, 100, shape)).astype(dtype)
    if image.min() == image.max():  # an all-constant image is refused; these cases are valid ones
        image.flat[0], image.flat[-1] = 0, 1
    label = rng.integers(0, 4, shape).astype(np.uint8)
    return image, label, draw(affines())


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(case=volumes(), slice_axis=st.sampled_from(list(SLICE_AXES)))
def test_valid_volumes_round_trip_exactly(case, slice_axis):
    image, label, affine = case
    with tempfile.TemporaryDirectory() as tmp:
        nib.save(nib.Nifti1Image(image, affine), Path(tmp) / "image.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), Path(tmp) / "label.nii.gz")
        loaded = LoadPaird(label_values=[1, 2, 3], slice_axis=slice_axis)(
            {"image": str(Path(tmp) / "image.nii.gz"), "label": str(Path(tmp) / "label.nii.gz")})
    for key, original in (("image", image), ("label", label)):
        oriented = loaded[key]
        slices = volume_to_slices(oriented)
        restored = restore_grid(slices_to_volume(slices.clone(), is_2d=False), oriented)
        # the reader's dtype (float32 for images): exact in it, so compare in it
        np.testing.assert_array_equal(restored[0].numpy(), original.astype(restored.numpy().dtype))
        np.testing.assert_allclose(restored.affine.numpy(), affine, atol=1e-4)
    assert torch.equal(loaded["label"].unique(), torch.as_tensor(np.unique(label)).to(loaded["label"].dtype))


DAMAGE = ["truncated", "garbage", "four_d", "nan", "label_shape", "label_values"]


@SETTINGS
@given(case=volumes(), damage=st.sampled_from(DAMAGE), cut=st.floats(0.05, 0.95))
def test_damaged_inputs_raise_our_error(case, damage, cut):
    image, label, affine = case
    with tempfile.TemporaryDirectory() as tmp:
        image_path, label_path = Path(tmp) / "image.nii.gz", Path(tmp) / "label.nii.gz"
        if damage == "four_d":
            image = np.stack([image, image], axis=-1)
        if damage == "nan":
            image = image.astype(np.float32)
            image.flat[int(cut * (image.size - 1))] = np.nan
        if damage == "label_shape":
            label = np.concatenate([label, label], axis=0)
        if damage == "label_values":
            label.flat[int(cut * (label.size - 1))] = 9
        nib.save(nib.Nifti1Image(image, affine), image_path)
        nib.save(nib.Nifti1Image(label, affine), label_path)
        if damage == "truncated":
            data = image_path.read_bytes()
            image_path.write_bytes(data[: max(1, int(cut * len(data)))])
        if damage == "garbage":
            image_path.write_bytes(np.random.default_rng(0).bytes(int(cut * 4000) + 1))
        with pytest.raises(InputFileError):
            LoadPaird(label_values=[1, 2, 3])({"image": str(image_path), "label": str(label_path)})
