from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from segmote_monai.apps.inference import boxes_to_slice_prompts, list_cases
from segmote_monai.data import load_image, orient_for_slicing, volume_to_slices
from segmote_monai.errors import InputFileError
from segmote_monai.transforms import box_of_mask

NON_RAS = np.array([[0.0, -1.5, 0.0, 30.0], [-1.2, 0.0, 0.0, 20.0], [0.0, 0.0, 4.0, -10.0], [0, 0, 0, 1]])
BOX = [5, 8, 2, 20, 30, 4]  # i0, j0, k0, i1, j1, k1 in the stored array


@pytest.fixture
def volume(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((30, 40, 7), np.float32), NON_RAS), tmp_path / "v.nii.gz")
    mask = np.zeros((30, 40, 7), np.uint8)
    mask[BOX[0]:BOX[3] + 1, BOX[1]:BOX[4] + 1, BOX[2]:BOX[5] + 1] = 1
    nib.save(nib.Nifti1Image(mask, NON_RAS), tmp_path / "m.nii.gz")
    return orient_for_slicing(load_image(tmp_path / "v.nii.gz")), orient_for_slicing(load_image(tmp_path / "m.nii.gz"))


def _expected(mask):
    return [(i, box_of_mask(s[0] > 0)) for i, s in enumerate(volume_to_slices(mask)) if s.any()]


@pytest.mark.parametrize("space", ["voxel", "world"])
def test_3d_box_lands_on_the_slices_and_pixels_it_covers(volume, space):
    image, mask = volume
    box = BOX
    if space == "world":
        corners = nib.affines.apply_affine(NON_RAS, [BOX[:3], BOX[3:]])
        box = [*corners.min(0), *corners.max(0)]
    prompts = boxes_to_slice_prompts({"boxes": [{"label": 3, "box": box, "space": space}]}, image, "b.json")
    expected = _expected(mask)
    assert [i for i, (b, _) in enumerate(prompts) if len(b)] == [i for i, _ in expected]
    for i, tight in expected:
        boxes, classes = prompts[i]
        assert classes.tolist() == [3]
        torch.testing.assert_close(boxes[0], tight, atol=1e-4, rtol=0)


def test_2d_box_on_a_2d_image():
    image = torch.zeros(3, 20, 30)
    (boxes, classes), = boxes_to_slice_prompts({"boxes": [{"label": 1, "box": [3, 2, 25, 15]}]}, image, "b.json")
    assert boxes.tolist() == [[3, 2, 25, 15]] and classes.tolist() == [1]


@pytest.mark.parametrize(
    "spec,message",
    [
        ({}, "with at least one box"),
        ({"boxes": [{"box": [1, 2, 3, 4, 5, 6]}]}, "box 0: needs 'label'"),
        ({"boxes": [{"label": 1, "box": [1, 2, 3, 4]}]}, r"a volume takes \[i0, j0, k0, i1, j1, k1\], got 4 values"),
        ({"boxes": [{"label": 1, "box": [1, 2, 3, 4, 5, 6], "space": "mm"}]}, "'space' must be 'voxel' or 'world'"),
        ({"boxes": [{"label": 1, "box": [100, 100, 1, 200, 200, 2]}]}, "box 0 lies outside the image"),
        ({"boxes": [{"label": 1, "box": [5, 2, 1, 3, 4, 2]}]}, "box 0: .* has an end before its start"),
    ],
)
def test_bad_boxes_name_the_file(volume, spec, message):
    with pytest.raises(InputFileError, match=message) as info:
        boxes_to_slice_prompts(spec, volume[0], "boxes.json")
    assert str(info.value).startswith("boxes.json: ")


def test_list_cases(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    assert [p.name for p in list_cases(tmp_path)] == ["a.nii.gz", "b.png"]
    dicom = tmp_path / "series"
    dicom.mkdir()
    (dicom / "IM0001").write_bytes(b"")
    assert list_cases(dicom) == [dicom]
    with pytest.raises(InputFileError, match="empty folder"):
        (tmp_path / "empty").mkdir()
        list_cases(tmp_path / "empty")
