"""The benchmark data: the committed patient-level splits of ``../shared/data`` and the out-of-domain test sets.

Out of domain (never trained on): the TotalSegmentator CT and MR samples (one abdominal scan each, model-made
reference labels), scored on the eight organs both label maps have. Their label files hold 117 (CT) and 50
(MR) classes; the benchmark writes copies with only these eight, renumbered 1-8, into its work folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from segmote_monai.data.datalist import Datalist, load_datalist

SPLITS = Path(__file__).resolve().parent / "splits"
#: committed patient-level splits, in table order
DATASETS = ("chaos_t2", "acdc", "xray_lung", "ph2", "kvasir")
#: TotalSegmentator organs scored out of domain (names as in its labels_ct.json / labels_mr.json)
TOTALSEG_ORGANS = ("spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas", "aorta")
TOTALSEG = {"totalseg_ct": ("TotalSegmentator CT", "CT", "ct_abdomen", "labels_ct.json"),
            "totalseg_mr": ("TotalSegmentator MR", "MR", "mr_abdomen", "labels_mr.json")}


def load_splits(data_root: Path, work_dir: Path, names=DATASETS, *, max_test_cases: int | None = None,
                max_training_cases: int | None = None) -> dict[str, Datalist]:
    """The committed splits with paths under ``data_root``, written to ``work_dir/datalists`` and loaded."""
    out = {}
    for name in names:
        raw = json.loads((SPLITS / f"{name}.json").read_text())
        folder = data_root / raw.pop("dataset")
        for section in ("training", "validation", "test"):
            for item in raw[section]:
                for key in ("image", "label"):
                    item[key] = str(folder / item[key])
        if max_test_cases is not None:
            patients = sorted({i["patient"] for i in raw["test"]})[:max_test_cases]
            raw["test"] = [i for i in raw["test"] if i["patient"] in patients]
        if max_training_cases is not None:
            raw["training"] = raw["training"][:max_training_cases]
            raw["validation"] = raw["validation"][:1]
        out[name] = _write(work_dir, name, raw)
    return out


def _write(work_dir: Path, name: str, raw: dict) -> Datalist:
    path = work_dir / "datalists" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw, indent=1))
    return load_datalist(path)


def _parts(datalist: Datalist) -> tuple[dict, dict[str, list[dict]]]:
    """A loaded datalist's header fields and its sections' items, with absolute paths (so that a cut of it may be
    written to another folder)."""
    raw = json.loads(datalist.path.read_text())
    head = {k: v for k, v in raw.items() if k not in ("training", "validation", "test")}
    return head, {section: datalist.items(section) for section in ("training", "validation", "test")}


def first_patients(datalist: Datalist, count: int, work_dir: Path) -> Datalist:
    """``datalist`` with its training split cut to its first ``count`` patients by id (validation and test kept),
    written to ``work_dir/datalists/<stem>_<count>patients.json``."""
    patients = sorted({item["patient"] for item in datalist.items("training")})
    if not 1 <= count <= len(patients):
        raise ValueError(f"--training-patients must be 1-{len(patients)} (the training split's patients), got {count}")
    head, raw = _parts(datalist)
    kept = set(patients[:count])
    raw["training"] = [item for item in raw["training"] if item["patient"] in kept]
    return _write(work_dir, f"{datalist.path.stem}_{count}patients", {**head, **raw})


def split_by_source(xray: Datalist, work_dir: Path) -> dict[str, Datalist]:
    """The chest X-ray split cut by population: ``trained``, its training and validation sections with only the
    normal images (``_0``) and no test section; ``normal_heldout``, the normal images of the test and validation
    splits (the trainer scores its validation section but never picks weights with it); ``tb_test``, the
    test split's tuberculosis images (``_1``); ``tb_all``, every tuberculosis image of every section. Each keeps
    the set's name and labels, so that a model trained on several datalists finds its classes."""
    head, raw = _parts(xray)

    def kind(item: dict, suffix: str) -> bool:
        return Path(item["image"]).stem.endswith(suffix)

    everything = raw["training"] + raw["validation"] + raw["test"]
    parts = {
        "trained": {**head, "training": [i for i in raw["training"] if kind(i, "_0")],
                    "validation": [i for i in raw["validation"] if kind(i, "_0")], "test": []},
        "normal_heldout": {**head, "test": [i for i in raw["test"] + raw["validation"] if kind(i, "_0")]},
        "tb_test": {**head, "test": [i for i in raw["test"] if kind(i, "_1")]},
        "tb_all": {**head, "test": [i for i in everything if kind(i, "_1")]},
    }
    return {k: _write(work_dir, f"xray_lung_{k}", v) for k, v in parts.items()}


def totalseg_datalists(data_root: Path, work_dir: Path) -> dict[str, Datalist]:
    """The TotalSegmentator CT and MR samples as test-only datalists of :data:`TOTALSEG_ORGANS`."""
    folder = data_root / "ct_mr_totalsegmentator"
    out = {}
    for name, (title, modality, stem, labels_file) in TOTALSEG.items():
        by_name = {v: int(k) for k, v in json.loads((folder / labels_file).read_text()).items()}
        source = nib.load(folder / f"{stem}_seg.nii.gz")
        values = np.asarray(source.dataobj).astype(np.int64)
        kept = np.zeros(values.shape, np.uint8)
        for new, organ in enumerate(TOTALSEG_ORGANS, start=1):
            kept[values == by_name[organ]] = new
        label = work_dir / "labels" / f"{name}.nii.gz"
        label.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(kept, source.affine), label)
        raw = {"name": title, "modality": modality, "task": "multi-class",
               "labels": {"0": "background", **{str(i): o for i, o in enumerate(TOTALSEG_ORGANS, start=1)}},
               "test": [{"image": str(folder / f"{stem}.nii.gz"), "label": str(label), "patient": stem}]}
        out[name] = _write(work_dir, name, raw)
    return out
