from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from segmote_monai.data.joint import JointDatalist, class_offset, dataset_weights, metric_name, samples_per_item
from segmote_monai.data.slice_dataset import SliceSampleDataset
from segmote_monai.transforms import LoadPaird


def _datalist(root, name, task, cases, labels, threshold=None):
    items = []
    for i in range(cases):
        image = root / f"{name}_{i}.png"
        mask = root / f"{name}_{i}_mask.png"
        Image.fromarray((np.random.default_rng(i).random((12, 10)) * 255).astype(np.uint8)).save(image)
        values = np.zeros((12, 10), np.uint8)
        values[2:6, 3:7] = 255 if threshold else 1
        if not threshold and len(labels) > 2:
            values[7:10, 1:4] = 2
        Image.fromarray(values).save(mask)
        items.append({"image": image.name, "label": mask.name, "patient": f"{name}{i}"})
    raw = {"name": name, "modality": "RGB" if threshold else "MR", "task": task, "labels": labels,
           "mask_threshold": threshold, "training": items[:-1], "validation": items[-1:]}
    path = root / f"{name}.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.fixture
def joint(tmp_path):
    heart = _datalist(tmp_path, "Heart MR", "multi-class", 4, {"0": "bg", "1": "ring", "2": "cavity"})
    skin = _datalist(tmp_path, "skin", "binary", 9, {"0": "bg", "1": "lesion"}, threshold=127)
    return JointDatalist.load([heart, skin])


def test_class_ids_become_global(joint):
    assert joint.offsets == [0, 2] and joint.classes == [1, 2, 3]
    assert joint.labels == {0: "background", 1: "Heart MR ring", 2: "Heart MR cavity", 3: "skin lesion"}
    assert joint.groups == {"heart_mr": [1, 2], "skin": [3]} and joint.has_binary
    items = joint.items("training")
    assert [i["dataset"] for i in items] == [0] * 3 + [1] * 8
    assert items[0]["label_encoding"] == {"label_values": [1, 2]} and items[-1]["label_encoding"] == {
        "mask_threshold": 127}
    assert {i["task"] for i in items} == {"multi-class", "binary"} and items[-1]["class_offset"] == 2


def test_one_datalist_keeps_its_own_ids_and_metadata(tmp_path):
    single = JointDatalist.load(_datalist(tmp_path, "heart", "multi-class", 3, {"0": "bg", "1": "ring",
                                                                                "2": "cavity"}))
    assert single.labels == {0: "background", 1: "ring", 2: "cavity"} and not single.has_binary
    assert single.model_metadata() == single.datalists[0].model_metadata()


def test_class_offset_finds_each_datalist_among_a_models_ids(joint, tmp_path):
    metadata = json.loads(json.dumps(joint.model_metadata()))  # as a checkpoint stores it (string keys)
    heart, skin = joint.datalists
    assert class_offset(metadata, heart) == 0 and class_offset(metadata, skin) == 2
    # a model trained on one datalist numbers classes by its label values, whatever datalist it is given
    assert class_offset(JointDatalist([skin]).model_metadata(), heart) == 0
    other = JointDatalist.load(_datalist(tmp_path, "other", "binary", 2, {"0": "bg", "1": "lesion"}, threshold=127))
    assert class_offset(metadata, other.datalists[0]) is None
    renamed = JointDatalist.load(_datalist(tmp_path, "skin", "binary", 2, {"0": "bg", "1": "mole"}, threshold=127))
    assert class_offset(metadata, renamed.datalists[0]) is None  # the same name, other classes


def test_per_item_encoding_and_offset_reach_the_label_map(joint):
    load = LoadPaird()
    heart, skin = joint.items("training")[0], joint.items("training")[-1]
    assert set(torch.unique(load(heart)["label"]).tolist()) == {0, 1, 2}
    loaded = load(skin)
    assert set(torch.unique(loaded["label"]).tolist()) == {0, 3} and "label_encoding" not in loaded
    with pytest.raises(ValueError, match="no label encoding for .*: give label_values or mask_threshold"):
        LoadPaird()({"image": skin["image"], "label": skin["label"]})


@pytest.mark.parametrize("rule,temperature,expected", [
    ("uniform", 2.0, [0.5, 0.5]),
    ("proportional", 2.0, [0.25, 0.75]),
    ("temperature", 2.0, [1 / (1 + 3 ** 0.5), 3 ** 0.5 / (1 + 3 ** 0.5)]),
    ("temperature", 1.0, [0.25, 0.75]),
])
def test_sampling_rules(rule, temperature, expected):
    np.testing.assert_allclose(dataset_weights([10, 30], rule, temperature), expected)


@pytest.mark.parametrize("rule,weights,expected", [
    ("uniform", [1, 3], [0.25, 0.75]),
    ("uniform", [2.0, 2.0], [0.5, 0.5]),
    ("proportional", [3, 1], [0.5, 0.5]),
    ("temperature", [1, 1], [1 / (1 + 3 ** 0.5), 3 ** 0.5 / (1 + 3 ** 0.5)]),
])
def test_dataset_weights_multiply_the_rules_shares(rule, weights, expected):
    np.testing.assert_allclose(dataset_weights([10, 30], rule, 2.0, weights), expected)


@pytest.mark.parametrize("kwargs,message", [
    ({"rule": "round_robin"}, r"rule must be one of \['uniform', 'proportional', 'temperature'\], got 'round_robin'"),
    ({"rule": "temperature", "temperature": 0.0}, "temperature must be > 0, got 0.0"),
    ({"weights": [1.0]}, r"dataset_weights needs one weight per dataset \(2\), got 1: \[1.0\]"),
    ({"weights": [1.0, 0.0]}, r"dataset_weights must all be finite and > 0, got \[1.0, 0.0\]"),
    ({"weights": [1.0, float("nan")]}, r"dataset_weights must all be finite and > 0, got \[1.0, nan\]"),
])
def test_bad_sampling_rules(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dataset_weights([3, 4], **kwargs)


def test_samples_per_case_follow_the_rule_and_sum_exactly(joint):
    counts = joint.samples_per_case(100, rule="uniform", seed=0)
    assert len(counts) == 3 + 8 and sum(counts) == 100
    assert sum(counts[:3]) == 50 and sum(counts[3:]) == 50
    assert max(counts[:3]) - min(counts[:3]) <= 1 and max(counts[3:]) - min(counts[3:]) <= 1
    proportional = joint.samples_per_case(110, rule="proportional", seed=0)
    assert sum(proportional[:3]) == 30 and sum(proportional[3:]) == 80  # 3 and 8 cases
    with pytest.raises(ValueError, match="samples_per_epoch must be >= 1, got 0"):
        joint.samples_per_case(0)
    weighted = joint.samples_per_case(100, rule="uniform", weights=[3, 1], seed=0)
    assert sum(weighted[:3]) == 75 and sum(weighted[3:]) == 25
    with pytest.raises(ValueError, match=r"one weight per dataset \(2\), got 3"):
        joint.samples_per_case(100, weights=[1, 1, 1])


def test_samples_per_item_groups_items_by_dataset_in_any_order(joint):
    datasets = [item["dataset"] for item in joint.items("training")]
    assert samples_per_item(datasets, 100, seed=0) == joint.samples_per_case(100, seed=0)
    shuffled = [1, 0, 1, 1, 0, 1]
    counts = samples_per_item(shuffled, 60, rule="uniform", seed=0)
    assert sum(c for c, d in zip(counts, shuffled) if d == 0) == 30 and sum(counts) == 60
    assert samples_per_item([0, 0], 16) == [8, 8]  # MONAI Label's items: no dataset key, dataset 0


def test_item_defaults_are_the_first_datasets(joint):
    from segmote_monai.transforms import ItemDefaultsd

    defaults = joint.item_defaults()
    assert defaults["modality"] == "MR" and defaults["label_encoding"] == joint.datalists[0].label_encoding()
    filled = ItemDefaultsd(defaults)({"image": "a.nii.gz", "label": "b.nii.gz", "modality": None})
    assert filled["modality"] == "MR" and filled["class_offset"] == 0 and filled["image"] == "a.nii.gz"
    kept = ItemDefaultsd(defaults)({"image": "a.png", "modality": "RGB", "dataset": 1})
    assert kept["modality"] == "RGB" and kept["dataset"] == 1


def test_datalist_names_must_differ(tmp_path):
    path = _datalist(tmp_path, "same", "binary", 2, {"0": "bg", "1": "x"}, threshold=127)
    with pytest.raises(ValueError, match=r"datalist names must differ \(they name the metrics\)"):
        JointDatalist.load([path, path])


def test_metric_names():
    assert metric_name("Chest X-ray (Shenzhen)") == "chest_x_ray_shenzhen" and metric_name("  ") == "dataset"


def test_slice_dataset_draws_each_volume_its_count():
    volumes = [{"v": i} for i in range(3)]
    dataset = SliceSampleDataset(volumes, lambda d: [dict(d)], [2, 0, 3])
    assert len(dataset) == 5 and [dataset[i]["v"] for i in range(5)] == [0, 0, 2, 2, 2]
    assert len(SliceSampleDataset(volumes, lambda d: [d], 4)) == 12
    with pytest.raises(ValueError, match=r"samples_per_volume must give 3 counts >= 0, not all 0, got \[1, 1\]"):
        SliceSampleDataset(volumes, lambda d: [d], [1, 1])
    with pytest.raises(ValueError, match="samples_per_volume must be >= 1, got 0"):
        SliceSampleDataset(volumes, lambda d: [d], 0)
