"""A training run killed with SIGKILL mid-epoch resumes when the same command is run again, losing at most
the epoch it was in; the final checkpoint loads."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import torch

from segmote_monai.networks import build_segmote, load_trainable
from tests.bundle.conftest import CONFIGS, REPO, bundle_args

EPOCHS = 6


def _command(tiny_dataset, out):
    return [sys.executable, "-m", "monai.bundle", *bundle_args(
        "run", "training", "--config_file", CONFIGS / "train.json", "--dataset_dir", tiny_dataset, "--datalist",
        tiny_dataset / "datalist.json", "--output_dir", out, "--backbone", "tiny", "--expert_hidden_dim", "64",
        "--batch_size", "4", "--samples_per_volume", "24", "--max_epochs", EPOCHS)]


def test_killed_training_resumes_losing_at_most_one_epoch(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    state = out / "models" / "resume_state.pt"
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(_command(tiny_dataset, out), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not state.exists():
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no epoch completed in 300 s"
            time.sleep(0.02)
        time.sleep(0.5)  # well into the next epoch
        first.send_signal(signal.SIGKILL)
        first.wait()
    saved = torch.load(state, map_location="cpu", weights_only=True)["epoch"]
    assert 1 <= saved < EPOCHS, f"killed after epoch {saved}: not mid-run"

    second = subprocess.run(_command(tiny_dataset, out), cwd=REPO, capture_output=True, text=True, timeout=600)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-3000:]
    assert f"resuming after epoch {saved} of {EPOCHS}" in output
    assert f"Epoch: {saved}/{EPOCHS}," not in output and f"Epoch: {saved + 1}/{EPOCHS}," in output
    final = torch.load(state, map_location="cpu", weights_only=True)
    assert final["epoch"] == EPOCHS and final["lr_scheduler"]["last_epoch"] == EPOCHS
    model = build_segmote("tiny", expert_hidden_dim=64, num_ppt_queries=0, num_carrier_classes=3)
    load_trainable(model, out / "models" / "segmote_latest.pt")
