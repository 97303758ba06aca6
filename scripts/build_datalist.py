"""Builds a datalist JSON from an images folder and a labels (or masks) folder, split by patient.

    python scripts/build_datalist.py --images DIR --labels DIR --labels-json '{"1": "liver", "2": "spleen"}' \\
        --modality MR --patient-regex 'case\\d+' --out datalist.json
    python scripts/build_datalist.py --images ph2/images --labels ph2/masks --mask-suffix _lesion \\
        --mask-threshold 127 --labels-json '{"1": "lesion"}' --modality RGB --out ph2.json

Each image (file or DICOM series folder) is paired with ``labels/<image stem><mask suffix>.*``. Patients
(``--patient-regex``: its first group, or its whole match; default: one patient per file) are split 9:1 into
training and validation (``--fractions``), seeded, so that no patient is on both sides. Unless
``--no-validate``, every pair is loaded and checked (geometry, label values within the declared classes);
every bad pair is printed on its own line naming the file, and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from segmote_monai.atomic import atomic_path
from segmote_monai.data.datalist import load_datalist, pair_files, patient_of, patient_split
from segmote_monai.errors import InputFileError
from segmote_monai.transforms import LoadPaird


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True, help="labels or masks folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--labels-json", required=True, help='label names, e.g. \'{"1": "liver"}\'')
    parser.add_argument("--modality", required=True, help="CT, MR, XR or RGB")
    parser.add_argument("--mask-suffix", default="", help="label file = <image stem><suffix>.*")
    parser.add_argument("--mask-threshold", type=float, default=None, help="0/255 masks: foreground > this")
    parser.add_argument("--patient-regex", default=None)
    parser.add_argument("--fractions", type=float, nargs=3, default=(0.9, 0.1, 0.0),
                        metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-patients", nargs="*", default=[], help="held out: always in 'test'")
    parser.add_argument("--name", default=None)
    parser.add_argument("--slice-axis", default="axial")
    parser.add_argument("--no-validate", action="store_true")
    args = parser.parse_args(argv)

    try:
        labels = {int(k): v for k, v in json.loads(args.labels_json).items()}
        pairs = pair_files(args.images, args.labels, mask_suffix=args.mask_suffix)
        patients = {image: patient_of(image, args.patient_regex) for image, _ in pairs}
        unknown = sorted(set(args.test_patients) - set(patients.values()))
        if unknown:
            raise ValueError(f"--test-patients {unknown} are not among the patients found in {args.images}")
        rest = [p for p in patients.values() if p not in args.test_patients]
        split = patient_split(rest, fractions=args.fractions, seed=args.seed)
        split["test"] = sorted(set(split["test"]) | set(args.test_patients))
    except (InputFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out_dir = args.out.resolve().parent
    section_of = {p: s for s, members in split.items() for p in members}
    foreground = [k for k in labels if k > 0]
    datalist = {
        "name": args.name or args.images.resolve().parent.name,
        "modality": args.modality.upper(),
        "task": "binary" if len(foreground) == 1 else "multi-class",
        "labels": {"0": "background", **{str(k): v for k, v in sorted(labels.items()) if k > 0}},
        "mask_threshold": args.mask_threshold,
        "training": [], "validation": [], "test": [],
    }
    for image, label in pairs:
        datalist[section_of[patients[image]]].append({
            "image": _relative(image, out_dir), "label": _relative(label, out_dir), "patient": patients[image],
        })
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(datalist, indent=1) + "\n")
        if not args.no_validate:
            errors = _validate(tmp, args.slice_axis)
            if errors:
                print("\n".join(f"error: {e}" for e in errors), file=sys.stderr)
                raise SystemExit(1)
    counts = {s: len(datalist[s]) for s in ("training", "validation", "test")}
    print(f"wrote {args.out}: {counts} items of {len(set(patients.values()))} patients ({split_summary(split)})")
    return 0


def _relative(path: Path, base: Path) -> str:
    path = path.resolve()
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def split_summary(split: dict[str, list[str]]) -> str:
    return ", ".join(f"{s}: {len(p)} patients" for s, p in split.items())


def _validate(datalist_path: Path, slice_axis: str) -> list[str]:
    """Loads every pair through the training loader; returns one line per bad pair."""
    datalist = load_datalist(datalist_path)
    load = LoadPaird(slice_axis=slice_axis, **datalist.label_encoding())
    errors = []
    for section in ("training", "validation", "test"):
        for item in datalist.items(section):
            try:
                load(item)
            except InputFileError as exc:
                errors.append(str(exc))
    return errors


if __name__ == "__main__":
    sys.exit(main())
