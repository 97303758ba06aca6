"""A label map as a DICOM Segmentation (DICOM-SEG) of the DICOM series it was segmented from.

PACS viewers, OHIF and 3D Slicer's DICOM workflows take DICOM-SEG, not NIfTI. The label map (on the grid the
series was read onto, RAS affine) is cut into one frame per source instance by each instance's own geometry
(Image Position and Orientation, Pixel Spacing), so the frames match the instances whatever order or
orientation the reader gave the volume; an instance off that grid is refused. Written with ``highdicom`` as a
BINARY segmentation: one segment per class with its name and SNOMED CT codes
(:func:`~segmote_monai.data.terminology.coded_property`), referencing the source series' instances.

Identifiers: highdicom copies the source's Patient and General Study modules, which DICOM requires of a
Segmentation; nothing else of the source's identity goes anywhere (the returned summary, for the sidecar, names
no patient and no source UID). A source with empty SOP Class/Instance UIDs (some anonymisers blank them) gets
them from its file meta; an empty Study, Series or Frame of Reference UID gets one derived from the instances' UIDs
(the same series always gets the same one), reported in the summary's ``derived_uids``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from monai.utils import optional_import

from segmote_monai.data.terminology import coded_property
from segmote_monai.errors import InputFileError

hd, has_highdicom = optional_import("highdicom")
pydicom, _ = optional_import("pydicom")

__all__ = ["ALGORITHM_TYPES", "has_highdicom", "label_map_frames", "read_series_headers", "write_dicom_seg"]

ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC")
_ON_GRID = 1e-2  # voxels: an instance's pixel centres must fall this close to the label map's voxel centres
_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])


def read_series_headers(folder: str | os.PathLike) -> list[Any]:
    """The headers (no pixel data) of the single-frame image instances in a DICOM series folder.

    Raises :class:`InputFileError` naming the folder for a folder with no DICOM image, a multi-frame instance or
    one without the geometry a Segmentation frame needs.
    """
    folder = Path(folder)
    headers = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError):
            continue  # not a DICOM file (a README, a DICOMDIR's neighbours); the series reader skipped it too
        if "Rows" not in ds:
            continue  # no image (a DICOMDIR, a structured report)
        missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if not ds.get(k)]
        if missing:
            raise InputFileError(path, f"DICOM image without {', '.join(missing)}: cannot place a segmentation frame")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InputFileError(path, "multi-frame DICOM image: output_format 'dicom_seg' takes single-frame series")
        headers.append(ds)
    if not headers:
        raise InputFileError(folder, "no DICOM image instances in this folder")
    return headers


def _pixel_to_voxel(ds: Any, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label-map voxel coordinates of pixel (0, 0) and the steps along a row and down a column."""
    position = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
    orientation = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    world_to_voxel = np.linalg.inv(np.asarray(affine, dtype=np.float64))

    def voxel(lps: np.ndarray) -> np.ndarray:
        return world_to_voxel[:3, :3] @ (_RAS_FROM_LPS @ lps) + world_to_voxel[:3, 3]

    origin = voxel(position)
    along_row = voxel(position + orientation[:3] * column_spacing) - origin
    down_column = voxel(position + orientation[3:] * row_spacing) - origin
    return origin, along_row, down_column


def label_map_frames(labels: np.ndarray, affine: np.ndarray, headers: list[Any], *, source: Path) -> np.ndarray:
    """[N, Rows, Columns] frames of ``labels`` [X, Y, Z] (RAS ``affine``), one per header, in their order."""
    frames = np.zeros((len(headers), int(headers[0].Rows), int(headers[0].Columns)), dtype=labels.dtype)
    r, c = np.meshgrid(np.arange(frames.shape[1]), np.arange(frames.shape[2]), indexing="ij")
    for n, ds in enumerate(headers):
        rows, columns = int(ds.Rows), int(ds.Columns)
        if (rows, columns) != frames.shape[1:]:
            raise InputFileError(source, f"instances of {frames.shape[1:]} and {(rows, columns)} pixels in one series")
        origin, along_row, down_column = _pixel_to_voxel(ds, affine)
        index = origin[:, None, None] + down_column[:, None, None] * r + along_row[:, None, None] * c
        nearest = np.rint(index)
        outside = (nearest < 0).any() or any((nearest[d] > labels.shape[d] - 1).any() for d in range(3))
        if np.abs(index - nearest).max() > _ON_GRID or outside:
            raise InputFileError(source, f"instance {n + 1} of {len(headers)} does not lie on the segmented grid")
        nearest = nearest.astype(np.intp)
        frames[n] = labels[nearest[0], nearest[1], nearest[2]]
    return frames


def _complete_uids(headers: list[Any]) -> list[str]:
    """Fills empty UIDs of the in-memory headers (see the module's docstring); the names of those derived."""
    for ds in headers:
        meta = getattr(ds, "file_meta", None)
        for keyword, meta_keyword in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                      ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not ds.get(keyword) and meta is not None and meta.get(meta_keyword):
                setattr(ds, keyword, meta.get(meta_keyword))
    if any(not ds.get("SOPInstanceUID") or not ds.get("SOPClassUID") for ds in headers):
        raise ValueError("a DICOM instance has no SOP Instance or SOP Class UID, in its dataset or its file meta")
    instances = sorted(str(ds.SOPInstanceUID) for ds in headers)
    derived = []
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {str(ds.get(keyword) or "") for ds in headers}
        if values == {""}:
            uid = pydicom.uid.generate_uid(entropy_srcs=[keyword, *instances])
            for ds in headers:
                setattr(ds, keyword, uid)
            derived.append(keyword)
        elif len(values) > 1:
            raise ValueError(f"the instances disagree on their {keyword} (or some lack it)")
    return derived


def write_dicom_seg(
    labels: np.ndarray,
    affine: np.ndarray,
    series: str | os.PathLike,
    names: Mapping[int, str],
    path: str | os.PathLike,
    *,
    algorithm_type: str,
    algorithm_version: str,
    model_name: str = "SegMoTE",
) -> dict[str, Any]:
    """Writes ``labels`` as a DICOM-SEG of the series in folder ``series`` to ``path``.

    Args:
        labels: [X, Y, Z] label map on the series' grid, with the label values of ``names``.
        affine: its 4 x 4 RAS affine (the reader's).
        series: the DICOM series folder that was segmented.
        names: label value -> name, one segment each (background, 0, is not a segment).
        path: the file to write (a temporary name that the caller renames: this writes in place).
        algorithm_type: ``AUTOMATIC`` (no prompt) or ``SEMIAUTOMATIC`` (prompted).
        algorithm_version: the software version recorded as the segmenting algorithm's.
        model_name: the algorithm's name.

    Returns:
        A summary for the sidecar: segments (number -> label value, name and codes), frames written, the
        derived UIDs' attribute names, the classes that matched no SNOMED CT code.
    """
    if not has_highdicom:
        raise ValueError("output_format 'dicom_seg' needs highdicom (pip install highdicom)")
    if algorithm_type not in ALGORITHM_TYPES:
        raise ValueError(f"algorithm_type must be one of {list(ALGORITHM_TYPES)}, got {algorithm_type!r}")
    series = Path(series)
    classes = sorted(int(c) for c in names if int(c) > 0)
    if not classes:
        raise ValueError(f"no foreground class to write in {dict(names)}")
    headers = read_series_headers(series)
    try:
        derived = _complete_uids(headers)
    except ValueError as exc:
        raise InputFileError(series, str(exc)) from exc
    frames = label_map_frames(np.asarray(labels), affine, headers, source=series)
    # segment numbers run 1..n (DICOM); the label values need not
    numbers = np.zeros(max(classes) + 1, dtype=np.uint16)
    numbers[classes] = np.arange(1, len(classes) + 1)
    stray = set(np.unique(frames).tolist()) - {0, *classes}
    if stray:
        raise ValueError(f"label values {sorted(stray)} are not among the classes {classes}")
    segment_frames = numbers[frames]
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name, version=algorithm_version, family=pydicom.sr.codedict.codes.DCM.ArtificialIntelligence)
    descriptions, summary, uncoded = [], {}, []
    for number, value in enumerate(classes, start=1):
        name = str(names[value] if value in names else names[str(value)])
        coded = coded_property(name)
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64], segmented_property_category=coded.category,
            segmented_property_type=coded.type, algorithm_type=algorithm_type, algorithm_identification=algorithm)
        if coded.modifier is not None:
            modifier = hd.sr.CodedConcept.from_code(coded.modifier)
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
        descriptions.append(description)
        if not coded.coded:
            uncoded.append(name)
        summary[str(number)] = {"label": value, "name": name, "type": f"SCT {coded.type.value} {coded.type.meaning}"
                                + (f" ({coded.modifier.meaning})" if coded.modifier is not None else "")}
    seg = hd.seg.Segmentation(
        source_images=headers,
        pixel_array=segment_frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=9001,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="SegMoTE-MONAI",
        manufacturer_model_name=model_name,
        software_versions=algorithm_version,
        device_serial_number="0",
        series_description=f"{model_name} segmentation",
        content_label="SEGMOTE",
        content_description=f"{model_name} {algorithm_type.lower()} segmentation",
    )
    seg.save_as(str(path))
    return {"segments": summary, "frames": int(seg.NumberOfFrames), "source_instances": len(headers),
            "derived_uids": derived, "uncoded": uncoded}
