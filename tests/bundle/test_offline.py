"""No network at run time: the bundle trains (with MLflow tracking) and infers with every socket refused, and
nothing even tries to connect; and no input file name reaches the logs."""

from __future__ import annotations

import subprocess
import sys

from tests.bundle.conftest import CONFIGS, REPO, TINY_OVERRIDES, bundle_args

NO_NETWORK = """
import runpy, socket, sys
attempts = sys.argv.pop(1)
def refuse(*args, **kwargs):
    with open(attempts, "a") as log:
        log.write(repr(args[1:] or args) + "\\n")
    raise OSError("network access attempted")
socket.socket.connect = socket.socket.connect_ex = refuse
socket.create_connection = socket.getaddrinfo = refuse
sys.argv = ["monai.bundle", *sys.argv[1:]]
runpy.run_module("monai.bundle", run_name="__main__")
"""


def _offline(attempts, *args):
    return subprocess.run([sys.executable, "-c", NO_NETWORK, str(attempts), *bundle_args(*args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_training_and_inference_with_sockets_blocked(tiny_dataset, tmp_path):
    attempts = tmp_path / "attempts.txt"
    out = tmp_path / "train"
    run = _offline(attempts, "run", "training", "--config_file", CONFIGS / "train.json", "--dataset_dir", tiny_dataset,
                   "--datalist", tiny_dataset / "datalist.json", "--output_dir", out, "--tracking", "mlflow",
                   *TINY_OVERRIDES, "--max_epochs", "1")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "case0" not in run.stdout + run.stderr  # no input file name in the logs (privacy)
    run = _offline(attempts, "run", "inference", "--config_file", CONFIGS / "inference.json", "--backbone", "tiny",
                   "--ckpt_path", out / "models" / "segmote_latest.pt", "--input",
                   tiny_dataset / "images" / "case3.nii.gz", "--roi", tiny_dataset / "labels" / "case3.nii.gz",
                   "--output_dir", tmp_path / "pred")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (tmp_path / "pred" / "case3_seg.nii.gz").exists()
    logs = run.stdout.replace(str(tmp_path / "pred" / "case3_seg.nii.gz"), "") + run.stderr  # the printed output
    assert "case3" not in logs
    assert not attempts.exists(), attempts.read_text()
