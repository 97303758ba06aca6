"""DICOM-SEG out (issue 11): the bundle's inference on the 20-slice CT DICOM series, NIfTI and DICOM-SEG.

    python benchmarks/dicom_seg.py [--write]

The shipped CHAOS checkpoint (trained on MRI only) through the bundle's own command, with the TotalSegmentator
reference's liver and spleen as the ROI (its boxes on every slice), once per output format. Prints 3D Dice against
that reference, whether the DICOM-SEG read back by highdicom (``get_pixels_by_source_instance``, highdicom's own
reader, not ours) equals the NIfTI label map voxel for voxel, each run's time and the files' sizes, as a Markdown
section (machine, commit, command); ``--write`` puts it in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
from common import REPO, provenance, write_section

from segmote_monai.data.dicom_seg import label_map_frames, read_series_headers
from segmote_monai.data.readers import load_image

DATA = REPO.parent / "shared" / "data" / "ct_mr_totalsegmentator"
ORGANS = {1: ("liver", 5), 4: ("spleen", 1)}  # model label value: (name, TotalSegmentator value)


def reference_on_series_grid(series: Path) -> tuple[np.ndarray, np.ndarray]:
    """The reference (stored in another axis order) on the series' grid by world coordinates, model values."""
    image = load_image(series)
    reference = nib.load(DATA / "ct_dicom_seg.nii.gz")
    to_reference = np.linalg.inv(reference.affine) @ image.affine.numpy()
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in image.shape[1:]], indexing="ij")).reshape(3, -1)
    index = np.rint(to_reference[:3, :3] @ grid + to_reference[:3, 3:]).astype(int)
    values = np.asarray(reference.dataobj)[index[0], index[1], index[2]].reshape(image.shape[1:])
    labels = np.zeros(values.shape, np.uint8)
    for value, (_, source_value) in ORGANS.items():
        labels[values == source_value] = value
    return labels, image.affine.numpy()


def read_back(path: Path, headers: list) -> np.ndarray:
    """[N, rows, columns] label values per source instance (series order), through highdicom's reader."""
    seg = hd.seg.segread(path)
    names = {"liver": 1, "right kidney": 2, "left kidney": 3, "spleen": 4}
    value = np.zeros(seg.number_of_segments + 1, np.uint8)
    for number in seg.segment_numbers:
        value[number] = names[seg.get_segment_description(number).segment_label]
    # blank in this series' datasets; the file meta holds them, as the writer takes them
    uids = [str(ds.SOPInstanceUID or ds.file_meta.MediaStorageSOPInstanceUID) for ds in headers]
    numbers = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                                skip_overlap_checks=False)
    return value[numbers]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="put the section in BENCHMARKS.md")
    args = parser.parse_args(argv)
    series = DATA / "ct_dicom"
    labels, affine = reference_on_series_grid(series)
    rows = ["| output | liver | spleen | s | file size |", "|---|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nib.save(nib.Nifti1Image(labels, affine), tmp / "roi.nii.gz")
        outputs = {}
        for fmt in ("nifti", "dicom_seg"):
            command = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
                       str(REPO / "bundle/configs/inference.json"), "--bundle_root", str(REPO / "bundle"), "--input",
                       str(series), "--roi", str(tmp / "roi.nii.gz"), "--modality", "CT", "--output_dir",
                       str(tmp / fmt), "--output_format", fmt]
            start = time.perf_counter()
            subprocess.run(command, check=True, cwd=REPO, capture_output=True)
            seconds = time.perf_counter() - start
            path = tmp / fmt / ("ct_dicom_seg.nii.gz" if fmt == "nifti" else "ct_dicom_seg.dcm")
            outputs[fmt] = path
            if fmt == "nifti":
                pred = np.asarray(nib.load(path).dataobj)
                scores = []
                for value in ORGANS:
                    p, t = pred == value, labels == value
                    scores.append(2 * (p & t).sum() / (p.sum() + t.sum()))
                cells = " | ".join(f"{d:.3f}" for d in scores)
            else:
                cells = "same map | same map"
            rows.append(f"| {fmt} | {cells} | {seconds:.0f} | {path.stat().st_size / 1e6:.2f} MB |")
            print(rows[-1], flush=True)
        headers = read_series_headers(series)
        expected = label_map_frames(pred, affine, headers, source=series)
        back = read_back(outputs["dicom_seg"], headers)
        differing = int((back != expected).sum())
    section = ("## DICOM-SEG out (issue 11)\n\n" + provenance()
               + "\n\nThe shipped CHAOS checkpoint (MRI-trained; this is CT) through `monai.bundle run inference` on "
               "the 20-slice 512 x 512 CT series of `ct_mr_totalsegmentator/ct_dicom`, the reference's liver and "
               "spleen as ROI (a box per organ on every slice, `--modality CT`), once with `--output_format nifti` "
               "and once with `--output_format dicom_seg`. 3D Dice against the TotalSegmentator reference (a model's "
               "output, not a manual label). The DICOM-SEG read back with highdicom's own reader "
               f"(`get_pixels_by_source_instance`) differs from the NIfTI label map in **{differing}** of "
               f"{expected.size} voxels. Times are the whole command (model load included).\n\n"
               + "\n".join(rows) + "\n")
    print(section)
    if args.write:
        write_section(REPO / "BENCHMARKS.md", "dicom_seg", section)
    return section


if __name__ == "__main__":
    sys.exit(main() and 0)
