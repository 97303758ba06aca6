"""Main job: the MONAI bundle on its embedded CHAOS T2 MRI sample, on CPU, with no download.

    python scripts/demo.py [--output-dir runs/demo] [--max-epochs 15]

Runs, and prints, three ``python -m monai.bundle`` commands: training (3 patients, validation on a 4th,
MLflow tracking to a local SQLite store when mlflow is installed), evaluation on the held-out 5th patient
(SegMoTE and the frozen LiteMedSAM zero-shot, same boxes, tight and jittered), and inference of that patient
to a NIfTI label map on its own grid. The frozen encoder's output is cached under ``<output-dir>/cache``
(delete it to clear), so a second run skips the encoder. Ends with the held-out Dice and where things are.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
CONFIGS = BUNDLE / "configs"
DATA = REPO / "bundle" / "data" / "chaos_t2"


def bundle(*args: object) -> None:
    command = [sys.executable, "-m", "monai.bundle", *map(str, args), "--bundle_root", str(BUNDLE)]
    print("\n$ " + " ".join(shlex.quote(c) for c in ["python", *command[1:]]), flush=True)
    result = subprocess.run(command, cwd=REPO)
    if result.returncode != 0:
        sys.exit(f"demo: the command above failed with exit code {result.returncode}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--samples-per-volume", type=int, default=8)
    parser.add_argument("--backbone", default="lite_medsam", help="lite_medsam, or tiny for a smoke test")
    args = parser.parse_args(argv)
    out = args.output_dir.resolve()
    start = time.time()
    common = ["--backbone", args.backbone, "--cache_dir", out / "cache"]
    tracking = ["--tracking", "mlflow"] if importlib.util.find_spec("mlflow") else []
    if not tracking:
        print("demo: mlflow is not installed, training runs without tracking (pip install -e '.[tracking]')")

    bundle("run", "training", "--meta_file", CONFIGS / "metadata.json", "--config_file", CONFIGS / "train.json",
           "--logging_file", CONFIGS / "logging.conf", "--output_dir", out, "--max_epochs", args.max_epochs,
           "--samples_per_volume", args.samples_per_volume, "--model_path", out / "models" / "model.pt", *common,
           *tracking)
    checkpoint = out / "models" / "segmote_best.pt"
    bundle("run", "evaluating", "--meta_file", CONFIGS / "metadata.json",
           "--config_file", f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']",
           "--logging_file", CONFIGS / "logging.conf", "--trainable_checkpoint", checkpoint,
           "--output_dir", out / "eval", *common)
    test_case = json.loads((DATA / "datalist.json").read_text())["test"][0]
    bundle("run", "inference", "--meta_file", CONFIGS / "metadata.json", "--config_file", CONFIGS / "inference.json",
           "--logging_file", CONFIGS / "logging.conf", "--ckpt_path", checkpoint, "--backbone", args.backbone,
           "--input", DATA / test_case["image"], "--roi", DATA / test_case["label"],
           "--output_dir", out / "predictions")

    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    rows = {(r["setting"], r["model"]): r for r in metrics["results"] if r["class"] == "mean over classes"
            and r["scoring"] == "label_map"}
    print(f"\nHeld-out 3D Dice, patient {test_case['patient']}, mean over organs ({time.time() - start:.0f} s in all):")
    print("| boxes | zero-shot (frozen backbone) | SegMoTE |")
    print("|---|---:|---:|")
    for setting in sorted({s for s, _ in rows}):
        if (setting, "zero_shot") in rows:
            print(f"| {setting} | {rows[(setting, 'zero_shot')]['mean_dice']:.3f} | "
                  f"{rows[(setting, 'segmote')]['mean_dice']:.3f} |")
    print(f"\nper organ and setting: {out / 'eval' / 'metrics.json'} and metrics.csv")
    print(f"predictions (open in 3D Slicer): {out / 'predictions'}")
    print(f"trainable checkpoint: {checkpoint}")
    if tracking:
        print(f"MLflow store: {out / 'mlruns.db'}  (view: mlflow ui --backend-store-uri sqlite:///{out / 'mlruns.db'})")


if __name__ == "__main__":
    main()
