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


def _xray(tmp_path: Path) -> Path:
    sections = {"training": ["a_0", "b_1", "c_0", "d_1"], "validation": ["e_0", "f_1"], "test": ["g_0", "h_1", "i_1"]}
    raw = {"name": "Chest X-ray (Shenzhen)", "modality": "XR", "task": "binary",
           "labels": {"0": "background", "1": "lungs"}, "mask_threshold": 127.0}
    for section, stems in sections.items():
        raw[section] = []
        for stem in stems:
            for kind in ("images", "masks"):
                (tmp_path / kind).mkdir(exist_ok=True)
                (tmp_path / kind / f"{stem}.png").write_bytes(b"")
            raw[section].append({"image": f"images/{stem}.png", "label": f"masks/{stem}.png", "patient": stem})
    path = tmp_path / "xray.json"
    path.write_text(json.dumps(raw))
    return path


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
