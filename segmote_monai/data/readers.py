"""Reading images and labels from disk through MONAI's readers, with one-line errors naming the file.

Volumes (NIfTI, a DICOM series folder, NRRD, MHA/MHD) come back as channel-first MetaTensors
``[C, X, Y, Z]`` with their world affine (RAS, MONAI's convention); 2D images (PNG, JPEG, TIFF, BMP) as
``[C, H, W]`` in display order (rows first), with their original dtype so that 8- and 16-bit images can be
scaled correctly. RGBA loses its alpha channel (with a warning).

Refused, each with an :class:`InputFileError` naming the file: a missing, truncated or foreign file, an empty
folder, a folder holding more than one DICOM series, a 4D array, NaN or infinite values.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from monai.data import ITKReader, MetaTensor, NibabelReader, PILReader
from nibabel.filebasedimages import ImageFileError

from segmote_monai.errors import InputFileError

__all__ = ["IMAGE_2D_SUFFIXES", "VOLUME_SUFFIXES", "is_2d_path", "load_image"]

logger = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_2d_path(path: str | os.PathLike) -> bool:
    return _suffix(Path(path)) in IMAGE_2D_SUFFIXES


def _reader(path: Path):
    if path.is_dir():
        return ITKReader()  # a DICOM series, sorted by slice position
    suffix = _suffix(path)
    if suffix in (".nii", ".nii.gz"):
        return NibabelReader()
    if suffix in (".nrrd", ".mha", ".mhd"):
        return ITKReader()
    if suffix in IMAGE_2D_SUFFIXES:
        return PILReader(reverse_indexing=False)
    raise InputFileError(
        path, f"unsupported file type '{suffix}' (expected a DICOM folder or one of "
        f"{', '.join(VOLUME_SUFFIXES + IMAGE_2D_SUFFIXES)})"
    )


# What MONAI's readers (nibabel, ITK, PIL) raise on a truncated, corrupt or foreign file.
_READ_ERRORS = (OSError, EOFError, ValueError, RuntimeError, KeyError, IndexError, TypeError, SyntaxError,
                ImageFileError)


def load_image(path: str | os.PathLike) -> MetaTensor:
    """Loads one image, label or DICOM series folder as a channel-first MetaTensor.

    Raises :class:`InputFileError` (``<path>: <problem>``) for a missing, unreadable or unsupported file.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "no such file or folder")
    if path.is_dir():
        _check_one_series(path)
    reader = _reader(path)
    try:
        data, meta = reader.get_data(reader.read(str(path)))
    except _READ_ERRORS as exc:
        detail = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise InputFileError(path, f"cannot be read as an image ({detail})") from exc
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise InputFileError(path, f"{bad} of {data.size} values are NaN or infinite")
    if isinstance(reader, PILReader):
        if data.ndim == 3 and data.shape[-1] == 4:
            # the file name stays out of logs above debug level (it may carry a patient's name)
            logger.warning("an RGBA image was converted to RGB: its alpha channel is dropped")
            logger.debug("RGBA image converted to RGB: %s", path)
        # PIL gives [H, W] or [H, W, C]; channel-first, alpha dropped (the mask or background of the photo).
        data = data[None] if data.ndim == 2 else np.moveaxis(data, -1, 0)[:3]
        affine = torch.eye(4, dtype=torch.float64)
    else:
        if data.ndim == 4 and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim != 3 and not (data.ndim == 2 and _suffix(path) in (".nii", ".nii.gz")):
            raise InputFileError(path, f"is a {data.ndim}D array {list(data.shape)}; expected one 3D volume")
        data = data[None]
        affine = torch.as_tensor(meta["affine"], dtype=torch.float64)
    meta = {"affine": affine, "filename_or_obj": str(path), "original_dtype": str(data.dtype),
            "space": "RAS", "original_channel_dim": 0}
    return MetaTensor(torch.from_numpy(np.require(data, requirements=["C", "W"])), meta=meta)


def _check_one_series(folder: Path) -> None:
    """An empty folder, or one mixing DICOM series (ITK would silently read only the first), is refused."""
    if not any(p.is_file() for p in folder.iterdir()):
        raise InputFileError(folder, "empty folder: no DICOM files")
    import itk

    names = itk.GDCMSeriesFileNames.New()
    names.SetUseSeriesDetails(False)  # one series = one SeriesInstanceUID
    names.SetDirectory(str(folder))
    series = list(names.GetSeriesUIDs())
    if not series:
        raise InputFileError(folder, "no DICOM series found in this folder")
    if len(series) > 1:
        raise InputFileError(folder, f"holds {len(series)} DICOM series; give a folder with exactly one series")
