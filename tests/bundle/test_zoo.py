"""The MONAI model zoo's checks on the bundle, offline: its ``ci/verify_bundle.py`` in full mode, the workflow
properties of training and inference, CONTRIBUTING's commands run from inside the bundle folder, and a config
test of the kind the zoo's ``ci/unit_tests`` run (initialise, check properties, run, finalise)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow, create_workflow

from tests.bundle.conftest import CONFIGS, REPO

ZOO_CI = Path(__file__).parent / "zoo_ci"
BUNDLE = REPO / "bundle"
NAME = "segmote"
TINY = {"backbone": "tiny", "expert_hidden_dim": 64, "max_epochs": 1, "samples_per_volume": 2, "batch_size": 4}


def _zoo_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m monai.bundle`` exactly as CONTRIBUTING writes it: relative paths, no ``--bundle_root``."""
    return subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


def _bundle_copy(root: Path) -> Path:
    """The bundle as a zoo pull request holds it, with the schema where the zoo's prepare_schema.py puts it."""
    target = root / "models" / NAME
    shutil.copytree(BUNDLE, target, ignore=shutil.ignore_patterns("runs", "eval"))
    (target / "eval").mkdir()
    shutil.copy(ZOO_CI / "meta_schema_20240725.json", target / "eval" / "schema.json")
    return target


VERIFY = """
import sys
sys.path.insert(0, "ci")
import verify_bundle
verify_bundle.download_large_files = lambda bundle_path, large_file_name: print("large files: download stubbed")
verify_bundle.verify(sys.argv[1], "models", "full")
print("verify_bundle full mode: passed")
"""


def test_model_zoo_verify_bundle_full_mode(tmp_path):
    _bundle_copy(tmp_path)
    (tmp_path / "models" / "model_info.json").write_text("{}")
    shutil.copytree(ZOO_CI, tmp_path / "ci", ignore=shutil.ignore_patterns("*.json", "*.md"))
    custom = tmp_path / "ci" / "bundle_custom_data.py"
    custom.write_text(custom.read_text() + f"\nexclude_verify_torchscript_list.append({NAME!r})\n")
    run = subprocess.run([sys.executable, "-c", VERIFY, NAME], cwd=tmp_path, capture_output=True, text=True,
                         timeout=900)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    for step in ("directory is verified correctly", "version and changelog are verified correctly",
                 "metadata format is verified correctly", "data shape is verified correctly",
                 f"bundle: {NAME} does not support torchscript, skip verifying", "verify_bundle full mode: passed"):
        assert step in out, step


@pytest.mark.parametrize("workflow_type,config", [("train", "train.json"), ("inference", "inference.json")])
def test_workflow_properties(workflow_type, config, tmp_path):
    """The bundle's defaults as they are (the embedded sample, LiteMedSAM, the shipped weights)."""
    workflow = create_workflow(workflow_type=workflow_type, config_file=str(CONFIGS / config),
                               meta_file=str(CONFIGS / "metadata.json"), logging_file=str(CONFIGS / "logging.conf"),
                               bundle_root=str(BUNDLE), output_dir=str(tmp_path))
    assert workflow.check_properties() == []


def test_zoo_style_config_test(tiny_dataset, tmp_path):
    """As the zoo's ci/unit_tests do: each workflow initialised, its properties checked, run and finalised."""
    common = {"bundle_root": str(BUNDLE), "dataset_dir": str(tiny_dataset)}
    trainer = ConfigWorkflow(workflow_type="train", config_file=str(CONFIGS / "train.json"),
                             meta_file=str(CONFIGS / "metadata.json"), logging_file=str(CONFIGS / "logging.conf"),
                             datalist=str(tiny_dataset / "datalist.json"), output_dir=str(tmp_path / "train"),
                             model_path=str(tmp_path / "model.pt"), **TINY, **common)
    trainer.initialize()
    assert trainer.check_properties() == []
    trainer.run()
    trainer.finalize()
    assert (tmp_path / "model.pt").is_file()

    inferer = ConfigWorkflow(workflow_type="infer", config_file=str(CONFIGS / "inference.json"),
                             meta_file=str(CONFIGS / "metadata.json"), logging_file=str(CONFIGS / "logging.conf"),
                             ckpt_path=str(tmp_path / "model.pt"), backbone="tiny", output_dir=str(tmp_path / "out"),
                             input=str(tiny_dataset / "images" / "case3.nii.gz"),
                             roi=str(tiny_dataset / "labels" / "case3.nii.gz"), **common)
    inferer.initialize()
    assert inferer.check_properties() == []
    assert len(inferer.dataset) == 1
    inferer.run()
    inferer.finalize()
    assert (tmp_path / "out" / "case3_seg.nii.gz").is_file()


def test_contributing_commands_from_inside_the_bundle_folder(tmp_path):
    bundle = _bundle_copy(tmp_path)
    run = _zoo_cli("verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", "eval/schema.json",
                     cwd=bundle)
    assert run.returncode == 0 and "metadata is verified with no error" in run.stdout + run.stderr, run.stderr[-2000:]
    run = _zoo_cli("verify_net_in_out", "--net_id", "network_def", "--meta_file", "configs/metadata.json",
                     "--config_file", "configs/inference.json", cwd=bundle)
    out = run.stdout + run.stderr
    assert run.returncode == 0 and "data shape of network is verified with no error" in out, out[-3000:]
    # the zoo's own inference command, on the embedded sample with its label as the ROI, writes under eval/
    case = json.loads((bundle / "data" / "chaos_t2" / "datalist.json").read_text())["test"][0]
    run = _zoo_cli("run", "--config_file", "configs/inference.json", "--roi", f"data/chaos_t2/{case['label']}",
                     cwd=bundle)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert (bundle / "eval" / f"{Path(case['image']).name.split('.')[0]}_seg.nii.gz").is_file()
