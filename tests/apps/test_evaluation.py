from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segmote_monai.apps.evaluation import BundleEvaluation, zero_shot_like
from segmote_monai.data.datalist import load_datalist
from segmote_monai.transforms import LoadPaird, ScaleIntensityByModalityd
from tests.conftest import tiny_segmote


@pytest.fixture
def binary_datalist(tmp_path):
    rng = np.random.default_rng(0)
    items = []
    for n in range(2):
        mask = np.zeros((40, 56), np.uint8)
        mask[8 + n: 30, 10: 40 - n] = 255
        Image.fromarray((rng.random((40, 56)) * 255).astype(np.uint8)).save(tmp_path / f"img{n}.png")
        Image.fromarray(mask).save(tmp_path / f"img{n}_mask.png")
        items.append({"image": f"img{n}.png", "label": f"img{n}_mask.png", "patient": f"p{n}"})
    (tmp_path / "datalist.json").write_text(json.dumps({
        "modality": "XR", "labels": {"0": "background", "1": "lesion"}, "mask_threshold": 127, "test": items}))
    return load_datalist(tmp_path / "datalist.json")


def _evaluation(datalist, out, **kwargs):
    load = LoadPaird(**datalist.label_encoding())
    scale = ScaleIntensityByModalityd(keys="image")
    return BundleEvaluation(network=tiny_segmote(num_ppt_queries=2), datalist=datalist,
                            load=lambda item: scale(load(item)), backbone="tiny", output_dir=out, **kwargs)


@pytest.mark.parametrize("baselines,models", [
    (None, {"segmote", "zero_shot"}),
    ({}, {"segmote"}),
    ("two", {"segmote", "zero_shot", "other"}),
])
def test_every_model_is_scored_on_the_same_settings(binary_datalist, tmp_path, baselines, models):
    if baselines == "two":
        other = tiny_segmote()
        baselines = {"zero_shot": zero_shot_like(other), "other": other}
    summary = _evaluation(binary_datalist, tmp_path / "out", baselines=baselines).run()
    rows = summary["per_case"]
    assert {r["model"] for r in rows} == models
    for model in models - {"segmote"}:  # baselines: boxes only, every case
        assert {(r["case"], r["setting"]) for r in rows if r["model"] == model} == {
            (c, s) for c in ("p0", "p1") for s in ("box_tight", "box_jitter_0.1")}
    assert {r["setting"] for r in rows if r["model"] == "segmote"} == {"box_tight", "box_jitter_0.1", "prompt_free"}
    assert (tmp_path / "out" / "metrics.json").exists() and (tmp_path / "out" / "metrics.csv").exists()


def test_a_baseline_may_not_take_the_evaluated_networks_name(binary_datalist, tmp_path):
    with pytest.raises(ValueError, match="'segmote' names the evaluated network"):
        _evaluation(binary_datalist, tmp_path, baselines={"segmote": tiny_segmote()})
