"""From a volume to the 2D slices SegMoTE sees, and back onto the input's exact grid.

Volumes are reoriented so that every slice is in the usual display order (rows first, the patient's
right on the image's left for axial slices): ``axial`` -> ``PLS``, ``coronal`` -> ``ILP``, ``sagittal`` ->
``IPL``, slicing along the last axis. 2D images are one slice as they are.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Orientation

from segmote_monai.errors import InputFileError

__all__ = ["SLICE_AXES", "check_pair", "orient_for_slicing", "restore_grid", "slices_to_volume", "stored_slice_axis",
           "volume_to_slices"]

SLICE_AXES = {"axial": "PLS", "coronal": "ILP", "sagittal": "IPL"}


def _axcodes(slice_axis: str) -> str:
    if slice_axis not in SLICE_AXES:
        raise ValueError(f"slice_axis must be one of {list(SLICE_AXES)}, got {slice_axis!r}")
    return SLICE_AXES[slice_axis]


def orient_for_slicing(image: MetaTensor, slice_axis: str = "axial") -> MetaTensor:
    """[C, X, Y, Z] -> the same voxels in ``SLICE_AXES[slice_axis]`` order; the read affine is kept in
    ``meta["read_affine"]`` for :func:`restore_grid`. 2D [C, H, W] images pass unchanged."""
    if image.ndim == 3:
        return image
    read_affine = torch.as_tensor(image.affine, dtype=torch.float64).clone()
    oriented = Orientation(axcodes=_axcodes(slice_axis), labels=None)(image)
    oriented.meta["read_affine"] = read_affine
    return oriented


def stored_slice_axis(oriented: MetaTensor, slices: list[int]) -> tuple[int, list[int]]:
    """The stored file's axis that the oriented image's slices run along, and the indices along it of
    ``slices`` (oriented slice indices), so that a sidecar speaks of the slices a user sees in the file."""
    to_stored = np.linalg.inv(np.asarray(oriented.meta["read_affine"], dtype=np.float64)) @ np.asarray(
        oriented.affine, dtype=np.float64)
    axis = int(np.abs(to_stored[:3, 2]).argmax())
    return axis, [round(float(to_stored[axis, 2] * z + to_stored[axis, 3])) for z in slices]


def check_pair(image: MetaTensor, label: MetaTensor, *, atol_mm: float = 1e-2) -> None:
    """Raises :class:`InputFileError` naming the label when it does not lie on its image's voxel grid.

    Both must already be in the same orientation (see :func:`orient_for_slicing`), so a DICOM series and a
    NIfTI label stored in different axis orders compare by world coordinates.
    """
    path = label.meta.get("filename_or_obj", "label")
    image_path = image.meta.get("filename_or_obj", "image")
    if tuple(image.shape[1:]) != tuple(label.shape[1:]):
        raise InputFileError(
            path, f"shape {list(label.shape[1:])} differs from its image {list(image.shape[1:])} ({image_path})"
        )
    if label.shape[0] != 1:
        raise InputFileError(path, f"has {label.shape[0]} channels; a label map has 1")
    if image.ndim == 4:
        diff = (torch.as_tensor(image.affine, dtype=torch.float64)
                - torch.as_tensor(label.affine, dtype=torch.float64)).abs().max().item()
        if diff > atol_mm:
            raise InputFileError(
                path, f"affine differs from its image's ({image_path}) by up to {diff:.4g} mm (tolerance {atol_mm})"
            )


def volume_to_slices(volume: torch.Tensor) -> torch.Tensor:
    """[C, H, W, S] oriented volume -> [S, C, H, W] slices; a 2D [C, H, W] image -> [1, C, H, W]."""
    if volume.ndim == 3:
        return volume.unsqueeze(0)
    return volume.permute(3, 0, 1, 2)


def slices_to_volume(slices: torch.Tensor, *, is_2d: bool) -> torch.Tensor:
    """Inverse of :func:`volume_to_slices`: [S, C, H, W] -> [C, H, W, S] (or [C, H, W] when ``is_2d``)."""
    if is_2d:
        return slices[0]
    return slices.permute(1, 2, 3, 0)


def restore_grid(prediction: torch.Tensor, oriented_reference: MetaTensor) -> MetaTensor:
    """Puts a [C, ...] prediction made on the grid of ``oriented_reference`` (from :func:`orient_for_slicing`)
    back onto the grid the image was read on: same shape, orientation and affine, voxel for voxel."""
    prediction = torch.as_tensor(prediction)
    if prediction.ndim == 3:
        return MetaTensor(prediction, affine=oriented_reference.affine)
    read_affine = oriented_reference.meta["read_affine"]
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(np.asarray(oriented_reference.affine, dtype=np.float64)),
        nib.orientations.io_orientation(np.asarray(read_affine, dtype=np.float64)),
    )
    channel_last = nib.orientations.apply_orientation(prediction.permute(1, 2, 3, 0).numpy(), ornt)
    # a copy, not ascontiguousarray: numpy calls an array with a size-1 axis contiguous even when that axis has
    # a negative stride (a flip), which torch refuses
    restored = torch.from_numpy(np.moveaxis(channel_last, -1, 0).copy())
    return MetaTensor(restored, affine=read_affine.clone())
