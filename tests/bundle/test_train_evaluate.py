from __future__ import annotations

import json
import re

import pytest
from monai.bundle import ConfigParser

from segmote_monai.networks import read_trainable
from tests.bundle.conftest import CONFIGS, TINY_OVERRIDES, bundle_cli
from tests.conftest import shared_data

CONFIG_FILES = ["train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "multi_gpu_evaluate.json"]


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
    for name in ("evaluate.json", "multi_gpu_train.json", "multi_gpu_evaluate.json"):
        variant = json.loads((CONFIGS / name).read_text())
        assert len(variant) < len(train) / 2, name
        assert "network_def" not in variant and "train" not in variant, name


def test_metadata_verifies_offline(tmp_path):
    schema = shared_data("../schemas/meta_schema_20240725.json")
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
    assert "train_loss" in log and "val_mean_dice" in log and "expert_use_CT_0" in log
    assert re.search(r"Epoch\[2\] Metrics -- .*val_dice_organ: \d\.\d+ .*val_mean_dice: \d\.\d+", log)
    for name in ("segmote_latest.pt", "segmote_best.pt"):
        payload = read_trainable(out / "models" / name)
        assert payload["backbone"]["name"] == "tiny"
        assert payload["metadata"]["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
        assert not any(k.startswith("image_encoder.") for k in payload["state_dict"])


def test_run_key_works_too(tiny_dataset, tmp_path):
    run = bundle_cli("run", "--config_file", CONFIGS / "train.json", "--dataset_dir", tiny_dataset,
                     "--datalist", tiny_dataset / "datalist.json", "--output_dir", tmp_path,
                     *TINY_OVERRIDES[:-6], "--max_epochs", "1", "--samples_per_volume", "1")
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
    seen = {(r["setting"], r["model"]) for r in metrics["results"]}
    assert {("box_tight", "segmote"), ("box_tight", "zero_shot"), ("box_jitter_0.1", "segmote"),
            ("box_jitter_0.1", "zero_shot")} <= seen
    assert all(0.0 <= r["mean_dice"] <= 1.0 and len(r["ci95"]) == 2 for r in metrics["results"])
    classes = {r["class"] for r in metrics["results"]}
    assert {"organ", "lesion", "mean over classes"} <= classes and {r["modality"] for r in metrics["results"]} >= {"CT"}
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0] == "case,modality,setting,model,class,dice" and len(csv_lines) == 1 + 2 * 2 * 2


def test_evaluation_refuses_a_checkpoint_for_another_configuration(trained_bundle, tiny_dataset, tmp_path):
    out, _ = trained_bundle
    run = bundle_cli("run", "evaluating", "--config_file",
                     f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']", "--dataset_dir", tiny_dataset,
                     "--datalist", tiny_dataset / "datalist.json", "--output_dir", tmp_path,
                     "--trainable_checkpoint", out / "models" / "segmote_latest.pt", "--backbone", "tiny",
                     "--expert_hidden_dim", "32")
    assert run.returncode != 0
    assert "configuration differs: expert_hidden_dim=64 in the file, 32 here" in run.stdout + run.stderr
    assert not (tmp_path / "metrics.json").exists()
