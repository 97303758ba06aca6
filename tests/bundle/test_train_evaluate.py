from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser

from segmote_monai.networks import read_trainable
from segmote_monai.transforms import RandFixedVariantd, RandPromptd
from tests.bundle.conftest import CONFIGS, TINY_OVERRIDES, bundle_cli

CONFIG_FILES = ["train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "multi_gpu_evaluate.json",
                "train_class_prompts.json"]


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_configs_parse(name):
    parser = ConfigParser()
    files = [CONFIGS / name] if name in ("train.json", "inference.json") else [CONFIGS / "train.json", CONFIGS / name]
    parser.read_config(files if len(files) > 1 else files[0])
    parser.parse()
    for key in ("network_def", "run"):
        assert key in parser


def test_variant_configs_only_override():
    train = json.loads((CONFIGS / "train.json").read_text())
    for name in ("evaluate.json", "multi_gpu_train.json", "multi_gpu_evaluate.json", "train_class_prompts.json"):
        variant = json.loads((CONFIGS / name).read_text())
        assert len(variant) < len(train) / 2, name
        assert "train" not in variant, name
        if "network_def" in variant:  # evaluation rebuilds the network the checkpoint describes, nothing else
            assert name == "evaluate.json"
            assert variant["network_def"]["_target_"] == "segmote_monai.networks.build_from_checkpoint"


def test_class_prompts_recipe_overrides_named_keys():
    """The class-prompts recipe measured in BENCHMARKS.md: every key it sets is a hyper-parameter train.json names."""
    train = json.loads((CONFIGS / "train.json").read_text())
    recipe = json.loads((CONFIGS / "train_class_prompts.json").read_text())
    assert set(recipe) <= set(train) and recipe["class_prompts"] is True
    parser = ConfigParser()
    parser.read_config([CONFIGS / "train.json", CONFIGS / "train_class_prompts.json"])
    parser["bundle_root"] = str(CONFIGS.parent)  # the embedded sample's datalist gives the classes
    assert parser.get_parsed_content("num_condition_classes") > 0 and parser.get_parsed_content("lambda_ce") == 1.0


@pytest.mark.parametrize("share,key", [(0.0, None), (0.5, "label_neighbours")])
def test_neighbour_box_share_reaches_the_sampler_and_the_prompts(share, key):
    parser = ConfigParser()
    parser.read_config(CONFIGS / "train.json")
    parser["bundle_root"] = str(CONFIGS.parent)
    parser["neighbour_box_share"] = share
    assert parser.get_parsed_content("train#slice_sampler").neighbours_key == key
    prompts = next(t for t in parser.get_parsed_content("train#slice_transforms").transforms
                   if isinstance(t, RandPromptd))
    assert prompts.prompts.neighbour_share == share and prompts.neighbours_key == "label_neighbours"
    assert parser.get_parsed_content("tracked_params")["neighbour_box_share"] == share


def test_augment_keys_reach_the_transform_before_the_resize():
    parser = ConfigParser()
    parser.read_config(CONFIGS / "train.json")
    parser["bundle_root"] = str(CONFIGS.parent)
    assert parser["augment_variants"] == 0  # off by default
    parser.update({"augment_variants": 3, "augment_share": 0.25, "augment_rotate": 10.0, "augment_zoom": [0.9, 1.1],
                   "augment_gamma": [0.8, 1.2], "augment_seed": 7})
    names = [type(t).__name__ for t in parser.get_parsed_content("train#slice_transforms").transforms]
    assert names.index("RandFixedVariantd") == names.index("ToRGBd") + 1 == names.index("ResizeLongestSidePadd") - 1
    augment = next(t for t in parser.get_parsed_content("train#slice_transforms").transforms
                   if isinstance(t, RandFixedVariantd))
    assert len(augment.variants) == 3 and augment.share == 0.25 and augment.keys[0] == "image"
    assert all(abs(v.angle) <= 10 and 0.9 <= v.zoom <= 1.1 and 0.8 <= v.gamma <= 1.2 for v in augment.variants)
    assert parser.get_parsed_content("tracked_params")["augment_variants"] == 3


def test_metadata_verifies_offline(tmp_path):
    schema = Path(__file__).parent / "zoo_ci" / "meta_schema_20240725.json"
    run = bundle_cli("verify_metadata", "--meta_file", CONFIGS / "metadata.json", "--filepath", schema)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "metadata is verified with no error" in run.stdout + run.stderr


@pytest.mark.slow
def test_verify_net_in_out():
    run = bundle_cli("verify_net_in_out", "network_def", "--meta_file", CONFIGS / "metadata.json", "--config_file",
                     CONFIGS / "train.json", "--device", "cpu")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "data shape of network is verified with no error" in run.stdout + run.stderr


def test_training_epochs_write_the_trainable_checkpoints(trained_bundle):
    out, run = trained_bundle
    log = run.stdout + run.stderr
    assert "train_loss" in log and "val_mean_dice" in log and "expert_use_tiny_b1e1" in log
    assert "token_weight_entropy" in log and "expert_token_cosine" in log
    assert re.search(r"Epoch\[2\] Metrics -- .*val_dice_organ: \d\.\d+ .*val_mean_dice: \d\.\d+", log)
    for name in ("segmote_latest.pt", "segmote_best.pt"):
        payload = read_trainable(out / "models" / name)
        assert payload["backbone"]["name"] == "tiny"
        assert payload["metadata"]["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
        assert not any(k.startswith("image_encoder.") for k in payload["model"])


def test_several_datalists_train_one_model_with_per_dataset_metrics(tiny_dataset, tmp_path):
    """Two datalists (one multi-class CT, one binary MR made of the same volumes' first class) in one run:
    global class ids, per-dataset validation and routing, and PPT built because one task is binary."""
    raw = json.loads((tiny_dataset / "datalist.json").read_text())
    binary = {**raw, "name": "tiny binary", "modality": "MR", "task": "binary",
              "labels": {"0": "background", "1": "organ"}, "mask_threshold": 0.5}
    for section in ("training", "validation", "test"):
        binary[section] = [{**item, "image": str(tiny_dataset / item["image"]),
                            "label": str(tiny_dataset / item["label"])} for item in raw[section]]
    (tmp_path / "binary.json").write_text(json.dumps(binary))
    datalists = f"['{tiny_dataset / 'datalist.json'}','{tmp_path / 'binary.json'}']"
    run = bundle_cli("run", "training", "--config_file", CONFIGS / "train.json", "--logging_file",
                     CONFIGS / "logging.conf", "--datalists", datalists, "--output_dir", tmp_path / "out",
                     *TINY_OVERRIDES[:-6], "--max_epochs", "1", "--samples_per_epoch", "8", "--batch_size", "4",
                     "--dataset_sampling", "temperature", "--dataset_weights", "[1, 3]")
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert re.search(r"val_dice_tiny_binary_organ: \d\.\d+", log) and re.search(r"val_dice_tiny_lesion: \d", log)
    assert "val_mean_dice_tiny_binary" in log and "expert_use_tiny_binary_b2e4" in log and "routing_jsd_mean" in log
    payload = read_trainable(tmp_path / "out" / "models" / "segmote_latest.pt")
    assert payload["config"]["num_ppt_queries"] == 2 and payload["config"]["num_carrier_classes"] == 4
    assert payload["metadata"]["labels"] == {"0": "background", "1": "tiny organ", "2": "tiny lesion",
                                             "3": "tiny binary organ"}
    assert [d["task"] for d in payload["metadata"]["datasets"]] == ["multi-class", "binary"]
    assert (tmp_path / "out" / "routing" / "routing_epoch_001.png").is_file()


def test_training_refuses_dataset_weights_that_do_not_match_the_datalists(tiny_dataset, tmp_path):
    run = bundle_cli("run", "training", "--config_file", CONFIGS / "train.json", "--logging_file",
                     CONFIGS / "logging.conf", "--datalists", f"['{tiny_dataset / 'datalist.json'}']",
                     "--output_dir", tmp_path / "out", *TINY_OVERRIDES[:-6], "--max_epochs", "1",
                     "--dataset_weights", "[1, 3]")
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.strip()]
    assert errors[-1].endswith("dataset_weights needs one weight per dataset (1), got 2: [1.0, 3.0]"), run.stderr[-2000:]
    assert "Traceback" not in run.stderr and not (tmp_path / "out" / "models").exists()


def test_run_key_works_too(tiny_dataset, tmp_path):
    run = bundle_cli("run", "--config_file", CONFIGS / "train.json", "--dataset_dir", tiny_dataset,
                     "--datalist", tiny_dataset / "datalist.json", "--output_dir", tmp_path,
                     *TINY_OVERRIDES[:-6], "--max_epochs", "1", "--samples_per_volume", "1",
                     "--neighbour_box_share", "1.0",  # and the neighbour boxes' keys pass the slice transforms,
                     "--augment_variants", "2", "--augment_share", "1.0")  # augmented like the image and label
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert (tmp_path / "models" / "segmote_latest.pt").is_file()


def test_evaluation_writes_segmote_and_zero_shot(trained_bundle, tiny_dataset, tmp_path):
    out, _ = trained_bundle
    run = bundle_cli("run", "evaluating", "--meta_file", CONFIGS / "metadata.json", "--config_file",
                     f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']", "--dataset_dir", tiny_dataset,
                     "--datalist", tiny_dataset / "datalist.json", "--output_dir", tmp_path,
                     "--trainable_checkpoint", out / "models" / "segmote_latest.pt", "--backbone", "tiny",
                     "--expert_hidden_dim", "64")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    seen = {(r["setting"], r["model"], r["scoring"]) for r in metrics["results"]}
    assert seen == {(s, m, c) for s in ("box_tight", "box_jitter_0.1") for m in ("segmote", "zero_shot")
                    for c in ("label_map", "own_mask")}
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0] == "case,modality,setting,model,class,scoring,dice"
    assert len(csv_lines) == 1 + 2 * 2 * 2 * 2  # 2 settings x 2 models x 2 classes x 2 scorings, one test case
    per_case = {tuple(line.split(",")[2:6]): float(line.split(",")[6]) for line in csv_lines[1:]}
    for r in metrics["results"]:  # every mean is the mean of the rows it summarises (one case here)
        if r["class"] == "mean over classes":
            expected = np.mean([v for (s, m, c, sc), v in per_case.items()
                                if (s, m, sc) == (r["setting"], r["model"], r["scoring"])])
        else:
            expected = per_case[(r["setting"], r["model"], r["class"], r["scoring"])]
        assert r["mean_dice"] == pytest.approx(expected, abs=1e-6) and r["ci95"] == pytest.approx([expected] * 2, abs=1e-6)


def test_training_refuses_a_starting_checkpoint_for_another_configuration(trained_bundle, tiny_dataset, tmp_path):
    out, _ = trained_bundle
    run = bundle_cli("run", "training", "--config_file", CONFIGS / "train.json", "--dataset_dir", tiny_dataset,
                     "--datalist", tiny_dataset / "datalist.json", "--output_dir", tmp_path,
                     "--trainable_checkpoint", out / "models" / "segmote_latest.pt", *TINY_OVERRIDES[:2],
                     "--expert_hidden_dim", "32", "--max_epochs", "1")
    assert run.returncode != 0
    assert "configuration differs: expert_hidden_dim=64 in the file, 32 here" in run.stdout + run.stderr
    assert not (tmp_path / "models").exists()


def test_evaluation_builds_the_network_its_checkpoint_describes(trained_bundle, tiny_dataset, tmp_path):
    """Options given on the command line cannot contradict the checkpoint: evaluation takes them from it."""
    out, _ = trained_bundle
    run = bundle_cli("run", "evaluating", "--config_file",
                     f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']", "--dataset_dir", tiny_dataset,
                     "--datalist", tiny_dataset / "datalist.json", "--output_dir", tmp_path,
                     "--trainable_checkpoint", out / "models" / "segmote_latest.pt", "--backbone", "tiny",
                     "--expert_hidden_dim", "32", "--eval_box_jitters", "[0.0]")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert (tmp_path / "metrics.json").exists()
