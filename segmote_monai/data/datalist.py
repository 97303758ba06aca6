"""MSD-style datalists: ``training`` / ``validation`` / ``test`` lists of ``{image, label}`` with per-dataset
label names, task type and mask encoding, and per-item modality and patient.

Example::

    {"name": "CHAOS T2", "modality": "MR", "task": "multi-class",
     "labels": {"0": "background", "1": "liver", "2": "right kidney"},
     "mask_threshold": null,
     "training": [{"image": "images/case01.nii.gz", "label": "labels/case01.nii.gz", "patient": "case01"}],
     "validation": [...], "test": [...]}

``mask_threshold`` (e.g. 127) says labels are 0/255 or JPEG masks: foreground = grey value above it.
Paths are relative to the datalist's folder (or absolute).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segmote_monai.data.readers import IMAGE_2D_SUFFIXES, VOLUME_SUFFIXES
from segmote_monai.errors import InputFileError
from segmote_monai.modalities import MODALITIES

__all__ = ["SECTIONS", "TASKS", "Datalist", "load_datalist", "pair_files", "patient_of", "patient_split"]

SECTIONS = ("training", "validation", "test")
TASKS = ("binary", "multi-class")


@dataclass
class Datalist:
    path: Path
    name: str
    task: str
    labels: dict[int, str]
    modality: str | None
    mask_threshold: float | None
    sections: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def classes(self) -> list[int]:
        """Foreground label values."""
        return sorted(k for k in self.labels if k > 0)

    def label_encoding(self) -> dict[str, Any]:
        """Arguments for :class:`~segmote_monai.transforms.LoadPaird`."""
        if self.mask_threshold is not None:
            return {"mask_threshold": self.mask_threshold}
        return {"label_values": self.classes}

    def items(self, section: str) -> list[dict[str, Any]]:
        return self.sections.get(section, [])

    def model_metadata(self) -> dict[str, Any]:
        """What a trained checkpoint carries for inference: label names and task type."""
        return {"labels": {str(k): v for k, v in sorted(self.labels.items())}, "task": self.task,
                "modality": self.modality}


def load_datalist(path: str | os.PathLike, *, check_files: bool = True) -> Datalist:
    """Reads and validates a datalist; item paths come back absolute and every item has a ``modality``.

    Raises :class:`InputFileError` naming the datalist (bad JSON or fields) or the missing file.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputFileError(path, "datalist not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise InputFileError(path, "a datalist is a JSON object with 'labels' and 'training'/'validation'/'test'")
    try:
        labels = {int(k): str(v) for k, v in dict(raw.get("labels", {})).items()}
    except (TypeError, ValueError) as exc:
        raise InputFileError(path, f"'labels' must map integer values to names ({exc})") from exc
    foreground = [k for k in labels if k > 0]
    if not foreground:
        raise InputFileError(path, "'labels' declares no foreground class (values > 0)")
    task = raw.get("task", "binary" if len(foreground) == 1 else "multi-class")
    if task not in TASKS:
        raise InputFileError(path, f"'task' must be one of {list(TASKS)}, got {task!r}")
    if task == "binary" and len(foreground) != 1:
        raise InputFileError(path, f"task 'binary' needs exactly one foreground class, 'labels' has {len(foreground)}")
    default_modality = raw.get("modality")
    out = Datalist(path=path, name=str(raw.get("name", path.stem)), task=task, labels=labels,
                   modality=default_modality, mask_threshold=raw.get("mask_threshold"))
    if not any(raw.get(s) for s in SECTIONS):
        raise InputFileError(path, f"no items: expected at least one of {list(SECTIONS)}")
    for section in SECTIONS:
        items = []
        for i, item in enumerate(raw.get(section) or []):
            where = f"'{section}' item {i}"
            if not isinstance(item, dict) or "image" not in item:
                raise InputFileError(path, f"{where} has no 'image'")
            if section != "test" and not item.get("label"):
                raise InputFileError(path, f"{where} has no 'label'")
            modality = str(item.get("modality", default_modality) or "").upper()
            if modality not in MODALITIES:
                raise InputFileError(path, f"{where}: modality {modality or None!r} not one of {list(MODALITIES)}")
            resolved = {**item, "modality": modality}
            for key in ("image", "label"):
                if item.get(key):
                    file = Path(item[key]) if Path(item[key]).is_absolute() else path.parent / item[key]
                    if check_files and not file.exists():
                        raise InputFileError(file, f"listed in {path} ({where}) but does not exist")
                    resolved[key] = str(file)
            items.append(resolved)
        out.sections[section] = items
    return out


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(VOLUME_SUFFIXES + IMAGE_2D_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def pair_files(images_dir: Path, labels_dir: Path, *, mask_suffix: str = "") -> list[tuple[Path, Path]]:
    """Pairs each image (file or DICOM folder) of ``images_dir`` with ``labels_dir/<stem><mask_suffix>.*``.

    Raises :class:`InputFileError` naming an image without a label, or a label that matches no image.
    """
    suffixes = VOLUME_SUFFIXES + IMAGE_2D_SUFFIXES
    labels = {_stem(p): p for p in sorted(labels_dir.iterdir()) if p.name.lower().endswith(suffixes)}
    pairs, used = [], set()
    for image in sorted(images_dir.iterdir()):
        if image.name.startswith(".") or not (image.is_dir() or image.name.lower().endswith(suffixes)):
            continue
        key = _stem(image) + mask_suffix
        if key not in labels:
            raise InputFileError(image, f"no label named {key}.* in {labels_dir}")
        pairs.append((image, labels[key]))
        used.add(key)
    unused = sorted(set(labels) - used)
    if unused:
        raise InputFileError(labels[unused[0]], f"label matches no image in {images_dir}")
    if not pairs:
        raise InputFileError(images_dir, "no images found")
    return pairs


def patient_of(path: Path, pattern: str | None) -> str:
    """The patient id of a file: the first group of ``pattern`` (or its whole match); the file stem without one."""
    if pattern is None:
        return _stem(path)
    match = re.search(pattern, path.name)
    if match is None:
        raise InputFileError(path, f"file name does not match the patient pattern {pattern!r}")
    return match.group(1) if match.groups() else match.group(0)


def patient_split(
    patients: Sequence[str], *, fractions: Sequence[float] = (0.9, 0.1, 0.0), seed: int = 0
) -> dict[str, list[str]]:
    """Splits patient ids (never files) into training / validation / test by ``fractions``, seeded.

    Every section with a non-zero fraction gets at least one patient when there are enough.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {list(fractions)}")
    unique = sorted(set(patients))
    order = list(np.random.default_rng(seed).permutation(len(unique)))
    shuffled = [unique[i] for i in order]
    n = len(shuffled)
    n_val = max(1, round(fractions[1] * n)) if fractions[1] > 0 and n >= 2 else 0
    n_test = max(1, round(fractions[2] * n)) if fractions[2] > 0 and n - n_val >= 2 else 0
    n_train = n - n_val - n_test
    return {
        "training": sorted(shuffled[:n_train]),
        "validation": sorted(shuffled[n_train:n_train + n_val]),
        "test": sorted(shuffled[n_train + n_val:]),
    }
