from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from segmote_monai.data.datalist import load_datalist

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def benchmark_data(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import benchmark_data

    yield benchmark_data
    sys.modules.pop("benchmark_data", None)


def _datalist(tmp_path: Path, file: str, head: dict, sections: dict[str, list[str]], patient=lambda stem: stem) -> Path:
    """A datalist file of empty images and masks named by ``sections``' stems, the patient of each from its stem."""
    raw = dict(head)
    for section, stems in sections.items():
        raw[section] = []
        for stem in stems:
            for kind in ("images", "masks"):
                (tmp_path / kind).mkdir(exist_ok=True)
                (tmp_path / kind / f"{stem}.png").write_bytes(b"")
            raw[section].append({"image": f"images/{stem}.png", "label": f"masks/{stem}.png", "patient": patient(stem)})
    path = tmp_path / file
    path.write_text(json.dumps(raw))
    return path


def _xray(tmp_path: Path) -> Path:
    return _datalist(tmp_path, "xray.json", {"name": "Chest X-ray (Shenzhen)", "modality": "XR", "task": "binary",
                                             "labels": {"0": "background", "1": "lungs"}, "mask_threshold": 127.0},
                     {"training": ["a_0", "b_1", "c_0", "d_1"], "validation": ["e_0", "f_1"],
                      "test": ["g_0", "h_1", "i_1"]})


def _cardiac(tmp_path: Path) -> Path:
    """Two slices of patients p1 and p3, one of p2, listed out of id order."""
    head = {"name": "acdc", "modality": "MR", "task": "multi-class",
            "labels": {"0": "background", "1": "right ventricle", "2": "myocardium", "3": "left ventricle"}}
    return _datalist(tmp_path, "acdc.json", head, {"training": ["p3_a", "p1_a", "p3_b", "p2_a", "p1_b"],
                                                   "validation": ["p4_a"], "test": ["p5_a"]},
                     patient=lambda stem: stem.split("_")[0])


def _stems(datalist, section):
    return [Path(i["image"]).stem for i in datalist.items(section)]


def test_split_by_source_trains_on_normal_images_and_tests_on_every_tuberculosis_image(benchmark_data, tmp_path):
    parts = benchmark_data.split_by_source(load_datalist(_xray(tmp_path)), tmp_path / "work")
    assert _stems(parts["trained"], "training") == ["a_0", "c_0"]
    assert _stems(parts["trained"], "validation") == ["e_0"] and _stems(parts["trained"], "test") == []
    assert _stems(parts["normal_heldout"], "test") == ["g_0", "e_0"]
    assert _stems(parts["tb_test"], "test") == ["h_1", "i_1"]
    assert sorted(_stems(parts["tb_all"], "test")) == ["b_1", "d_1", "f_1", "h_1", "i_1"]
    for part in parts.values():  # same name and labels: a jointly trained model finds its classes
        assert part.name == "Chest X-ray (Shenzhen)" and part.labels == {0: "background", 1: "lungs"}
        assert part.task == "binary" and part.modality == "XR"


@pytest.mark.parametrize("count,expected", [(1, ["p1_a", "p1_b"]), (2, ["p1_a", "p2_a", "p1_b"]),
                                            (3, ["p3_a", "p1_a", "p3_b", "p2_a", "p1_b"])])
def test_first_patients_cuts_the_training_split_only(benchmark_data, tmp_path, count, expected):
    cut = benchmark_data.first_patients(load_datalist(_cardiac(tmp_path)), count, tmp_path / "work")
    assert _stems(cut, "training") == expected
    assert _stems(cut, "test") == ["p5_a"] and _stems(cut, "validation") == ["p4_a"]
    assert cut.name == "acdc" and cut.path.name == f"acdc_{count}patients.json"


@pytest.mark.parametrize("count", [0, 4])
def test_first_patients_refuses_counts_outside_the_split(benchmark_data, tmp_path, count):
    with pytest.raises(ValueError, match=f"--training-patients must be 1-3 .* got {count}"):
        benchmark_data.first_patients(load_datalist(_cardiac(tmp_path)), count, tmp_path / "work")
