from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.bundle.conftest import CONFIGS, REPO, TINY_OVERRIDES, bundle_args, bundle_cli

mlflow = pytest.importorskip("mlflow")


def test_mlflow_tracking_goes_to_a_local_sqlite_store(tiny_dataset, tmp_path):
    run = bundle_cli("run", "training", "--config_file", CONFIGS / "train.json", "--tracking", "mlflow",
                     "--dataset_dir", tiny_dataset, "--datalist", tiny_dataset / "datalist.json",
                     "--output_dir", tmp_path, *TINY_OVERRIDES[:-6], "--max_epochs", "2", "--samples_per_volume", "2")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    store = tmp_path / "mlruns.db"
    assert store.is_file()
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("segmote")
    (found,) = client.search_runs([experiment.experiment_id])
    metrics = set(found.data.metrics)
    assert {"train_loss", "balance_loss", "val_mean_dice", "val_dice_organ", "val_dice_lesion", "expert_use_tiny_b1e1",
            "token_weight_entropy", "expert_token_cosine", "expert_output_cosine"} <= metrics
    assert len(client.get_metric_history(found.info.run_id, "balance_loss")) == 2  # per epoch
    assert found.data.params["backbone"] == "tiny" and found.data.params["num_experts"] == "4"
    assert not any(str(tiny_dataset) in v for v in found.data.params.values())  # no paths in parameters
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert "segmote_latest.pt" in artifacts and any(a.endswith(".json") for a in artifacts)
    assert {"routing_epoch_001.png", "routing_epoch_002.png"} <= artifacts  # the routing heatmap per epoch


def test_two_process_gloo_ddp_ends_with_identical_weights(tiny_dataset, tmp_path):
    configs = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "monai.bundle",
         *bundle_args("run", "training", "--config_file", configs, "--dataset_dir", tiny_dataset,
                      "--datalist", tiny_dataset / "datalist.json", "--output_dir", tmp_path, *TINY_OVERRIDES[:-6],
                      "--max_epochs", "2", "--samples_per_volume", "4", "--batch_size", "2")],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    items = {int(r): set(map(int, re.findall(r"\d+", s))) for r, s in re.findall(r"rank (\d): training items \[([\d, ]*)\]", log)}
    hashes = dict(re.findall(r"rank (\d): trainable weights sha256 ([0-9a-f]{64})", log))
    assert set(items) == {0, 1} and items[0] and items[1] and not items[0] & items[1]
    assert len(items[0] | items[1]) == 2 * 4  # 2 training volumes x 4 slices, split between the ranks
    assert hashes.keys() == {"0", "1"} and hashes["0"] == hashes["1"]
    assert (tmp_path / "models" / "segmote_latest.pt").is_file()
