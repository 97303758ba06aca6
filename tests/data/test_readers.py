from __future__ import annotations

import gzip

import itk
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from segmote_monai.data import load_image
from segmote_monai.errors import InputFileError
from tests.conftest import shared_data

RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    "name,array,mode,channels,dtype",
    [
        ("grey8.png", RNG.integers(0, 256, (20, 30), dtype=np.uint8), "L", 1, "uint8"),
        ("grey16.png", RNG.integers(0, 65536, (20, 30), dtype=np.uint16), None, 1, "uint16"),
        ("rgb.png", RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8), "RGB", 3, "uint8"),
        ("rgba.png", RNG.integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA", 3, "uint8"),
        ("photo.jpg", RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8), "RGB", 3, "uint8"),
        ("grey.tif", RNG.integers(0, 256, (20, 30), dtype=np.uint8), "L", 1, "uint8"),
        ("grey16.tiff", RNG.integers(0, 65536, (20, 30), dtype=np.uint16), None, 1, "uint16"),
        ("rgb.bmp", RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8), "RGB", 3, "uint8"),
    ],
)
def test_2d_formats_load_channel_first_in_display_order(tmp_path, name, array, mode, channels, dtype):
    path = tmp_path / name
    Image.fromarray(array, mode=mode).save(path)
    image = load_image(path)
    assert tuple(image.shape) == (channels, 20, 30)
    assert image.meta["original_dtype"] == dtype and str(image.dtype) == f"torch.{dtype}"
    if not name.endswith(".jpg"):  # lossless formats keep every value (RGBA: without its alpha)
        expected = array if array.ndim == 2 else np.moveaxis(array, -1, 0)[:3]
        np.testing.assert_array_equal(image.numpy().reshape(expected.shape), expected)
    assert image.meta["filename_or_obj"] == str(path)


def test_nifti_volume_keeps_its_affine(tmp_path):
    affine = np.array([[0, 0, -2.0, 10], [1.5, 0, 0, -3], [0, 1.0, 0, 7], [0, 0, 0, 1]])
    data = RNG.integers(0, 5, (6, 7, 8)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "v.nii.gz")
    image = load_image(tmp_path / "v.nii.gz")
    assert tuple(image.shape) == (1, 6, 7, 8)
    np.testing.assert_allclose(image.affine.numpy(), affine)
    np.testing.assert_array_equal(image[0].numpy(), data)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_formats(tmp_path, suffix):
    data = RNG.integers(0, 100, (5, 6, 7)).astype(np.int16)  # itk arrays are [z, y, x]
    volume = itk.image_from_array(data)
    volume.SetSpacing((0.5, 0.75, 2.0))
    itk.imwrite(volume, str(tmp_path / f"v{suffix}"))
    image = load_image(tmp_path / f"v{suffix}")
    assert tuple(image.shape) == (1, 7, 6, 5)
    np.testing.assert_allclose(np.abs(np.diag(image.affine.numpy()))[:3], [0.5, 0.75, 2.0])
    np.testing.assert_array_equal(image[0].numpy(), data.transpose(2, 1, 0))


def test_dicom_series_folder():
    image = load_image(shared_data("ct_mr_totalsegmentator/ct_dicom"))
    assert tuple(image.shape) == (1, 512, 512, 20)
    assert image.meta["original_dtype"] in ("int16", "uint16", "float32")
    assert float(image.min()) == -1024.0


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda p: p / "missing.nii.gz", "no such file or folder"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "empty folder: no DICOM files"),
        (lambda p: (p / "notes.txt").write_text("x") and p / "notes.txt", "unsupported file type '.txt'"),
        (lambda p: (p / "fake.png").write_text("not an image") and p / "fake.png", "cannot be read as an image"),
        (lambda p: (p / "fake.nii.gz").write_bytes(gzip.compress(b"garbage" * 100)) and p / "fake.nii.gz",
         "cannot be read as an image"),
    ],
    ids=["missing", "empty-folder", "unsupported", "not-png", "not-nifti"],
)
def test_unreadable_inputs_name_the_file(tmp_path, setup, message):
    path = setup(tmp_path)
    with pytest.raises(InputFileError, match=message) as info:
        load_image(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_truncated_nifti(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((30, 30, 30), np.float32), np.eye(4)), tmp_path / "v.nii.gz")
    raw = (tmp_path / "v.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputFileError, match=rf"^{tmp_path / 'cut.nii.gz'}: cannot be read as an image"):
        load_image(tmp_path / "cut.nii.gz")


def test_4d_volume_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), tmp_path / "t.nii.gz")
    with pytest.raises(InputFileError, match=r"is a 4D array \[4, 4, 4, 3\]; expected one 3D volume"):
        load_image(tmp_path / "t.nii.gz")
