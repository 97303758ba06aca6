"""Small synthetic DICOM series (pydicom), in any orientation, with a patient's identifiers to track."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

PATIENT = {"PatientName": "DOE^JANE", "PatientID": "PID-4711", "PatientBirthDate": "19700101", "PatientSex": "F"}


def write_series(folder: Path, frames: np.ndarray, *, orientation=(1, 0, 0, 0, 1, 0), spacing=(0.8, 0.7),
                 step=2.5, origin=(-20.0, -30.0, 40.0), blank_uids: bool = False) -> list[str]:
    """Writes ``frames`` [N, rows, columns] (int16) as a CT series, frame n at ``origin + n * step * normal``;
    files in reverse order of position, so no reader can rely on names. Returns the SOP Instance UIDs in frame
    order. ``blank_uids``: the dataset's Study, Series and SOP UIDs empty, as some anonymisers leave them (the
    SOP ones stay in the file meta)."""
    folder.mkdir(parents=True, exist_ok=True)
    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    uids = []
    for n, frame in enumerate(frames):
        uid = generate_uid()
        uids.append(uid)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = "" if blank_uids else CTImageStorage
        ds.SOPInstanceUID = "" if blank_uids else uid
        ds.StudyInstanceUID = "" if blank_uids else study
        ds.SeriesInstanceUID = "" if blank_uids else series
        ds.FrameOfReferenceUID = frame_of_reference
        for key, value in PATIENT.items():
            setattr(ds, key, value)
        ds.Modality = "CT"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260101", "120000", "ACC-99", "S1"
        ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 3, n + 1
        ds.Manufacturer = "test"
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + n * step * normal]
        ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
        ds.SliceThickness = float(step)
        ds.Rows, ds.Columns = frame.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(frame.astype("<i2")).tobytes()
        ds.save_as(folder / f"IM{len(frames) - n:04d}", enforce_file_format=True)
    return uids


def seg_frames_by_instance(seg, values: dict[str, int]) -> dict[str, np.ndarray]:
    """Label values per source SOP Instance UID, rebuilt from a DICOM-SEG's frames, each frame's referenced
    instance and segment (``values``: segment label -> label value); asserts no two segments claim a pixel."""
    value = {int(s.SegmentNumber): values[s.SegmentLabel] for s in seg.SegmentSequence}
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    out: dict[str, np.ndarray] = {}
    for frame, group in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        labels = out.setdefault(source, np.zeros(frame.shape, np.uint8))
        assert not (labels[frame > 0]).any(), "two segments claim one pixel"
        labels[frame > 0] = value[number]
    return out


def stacked_by_instance(frames: dict[str, np.ndarray], uids: list[str], shape: tuple[int, ...]) -> np.ndarray:
    """[N, rows, columns] in the order of ``uids``; an instance with no frame is all background."""
    return np.stack([frames.get(uid, np.zeros(shape[1:], np.uint8)) for uid in uids]).astype(np.uint8)
