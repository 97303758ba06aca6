from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from segmote_monai.data.datalist import load_datalist

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def class_boxes(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import class_boxes

    yield class_boxes
    for name in ("class_boxes", "accuracy", "benchmark_data", "common", "training"):
        sys.modules.pop(name, None)


def _cardiac(tmp_path: Path) -> Path:
    sections = {"training": ["p3_a", "p1_a", "p3_b", "p2_a", "p1_b"], "validation": ["p4_a"], "test": ["p5_a"]}
    raw = {"name": "acdc", "modality": "MR", "task": "multi-class",
           "labels": {"0": "background", "1": "right ventricle", "2": "myocardium", "3": "left ventricle"}}
    for section, stems in sections.items():
        raw[section] = []
        for stem in stems:
            for kind in ("images", "masks"):
                (tmp_path / kind).mkdir(exist_ok=True)
                (tmp_path / kind / f"{stem}.png").write_bytes(b"")
            raw[section].append({"image": f"images/{stem}.png", "label": f"masks/{stem}.png",
                                 "patient": stem.split("_")[0]})
    path = tmp_path / "acdc.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.mark.parametrize("count,expected", [(1, ["p1_a", "p1_b"]), (2, ["p1_a", "p2_a", "p1_b"]),
                                            (3, ["p3_a", "p1_a", "p3_b", "p2_a", "p1_b"])])
def test_first_patients_cuts_the_training_split_only(class_boxes, tmp_path, count, expected):
    cut = class_boxes.first_patients(load_datalist(_cardiac(tmp_path)), count, tmp_path / "work")
    assert [Path(i["image"]).stem for i in cut.items("training")] == expected
    assert [Path(i["image"]).stem for i in cut.items("test")] == ["p5_a"]
    assert [Path(i["image"]).stem for i in cut.items("validation")] == ["p4_a"]
    assert cut.name == "acdc" and cut.path.name == f"acdc_{count}patients.json"


@pytest.mark.parametrize("count", [0, 4])
def test_first_patients_refuses_counts_outside_the_split(class_boxes, tmp_path, count):
    with pytest.raises(ValueError, match=f"--training-patients must be 1-3 .* got {count}"):
        class_boxes.first_patients(load_datalist(_cardiac(tmp_path)), count, tmp_path / "work")
