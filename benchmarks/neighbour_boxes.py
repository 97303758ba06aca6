"""Training on boxes from the neighbouring slice (issue 11): does a model trained with some of its boxes cut from
the next or previous slice's label walk a volume better from one box per organ?

A propagation walk hands each slice the box of the previous slice's mask (``propagate``, margin 0). The recipe of
the shipped weights (``train.json`` + ``train_class_prompts.json``: 15 epochs, lr 1e-4 halved at epochs 7 and 12,
16 slices per volume, boxes jittered by up to 10%) is trained on the shipped datalist's training patients less the
test patients (default 01, 03, 05), with ``neighbour_box_share`` 0 (the control) and each share given, for each
seed; the last epoch's weights of every run are scored, on the test patients and the validation patient 02
(neither trained on), by:

- a box on every slice (tight, from the label) and the walks from each organ's key-slice box and from its 3D box,
  the bundle's defaults (``propagation.walk``), 3D Dice on the label map, as ``propagation.py`` scores them;
- each organ's mean slice Dice on its own mask with the box of the slice above or below (both, where the organ is
  on them), what a perfect walk would hand it.

Runs are kept in ``--work_dir`` and not trained again. Usage::

    python benchmarks/neighbour_boxes.py --shares 0.5 --seeds 2 --cache_dir /tmp/cache --write
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, log, provenance, write_section
from monai.transforms import Compose
from propagation import ORGANS, dice, seeds_3d, seeds_of, walk

from segmote_monai.data.cache import EmbeddingCache
from segmote_monai.inferers import SliceSegmenter, prompts_from_label
from segmote_monai.networks import build_from_checkpoint
from segmote_monai.transforms import LoadPaird, ScaleIntensityByModalityd
from segmote_monai.transforms.array import box_of_mask

BUNDLE = REPO / "bundle"
CONFIGS = BUNDLE / "configs"
SHIPPED_DATALIST = BUNDLE / "docs" / "shipped_model_datalist.json"
MEASURES = ("every", "key", "3d", "neighbour")
MEASURE_NAMES = {"every": "a box on every slice", "key": "key slice, walked", "3d": "3D box, walked",
                 "neighbour": "neighbour-slice boxes (slice Dice, own mask)"}


def datalist(data_dir: Path, test: list[str], out: Path) -> Path:
    """The shipped datalist on ``data_dir`` with the ``test`` patients moved out of its training split."""
    raw = json.loads(SHIPPED_DATALIST.read_text())

    def here(item: dict) -> dict:
        return {**item, "image": str(data_dir / "images" / Path(item["image"]).name),
                "label": str(data_dir / "labels" / Path(item["label"]).name)}

    names = {f"case{p}" for p in test}
    raw["test"] = [here(i) for i in raw["training"] if i["patient"] in names]
    raw["training"] = [here(i) for i in raw["training"] if i["patient"] not in names]
    raw["validation"] = [here(i) for i in raw["validation"]]
    if len(raw["test"]) != len(names):
        raise SystemExit(f"error: --test {' '.join(test)}: not all are training patients of {SHIPPED_DATALIST.name}")
    out.write_text(json.dumps(raw, indent=1))
    return out


def train(share: float, seed: int, data: Path, work: Path, cache_dir: Path) -> Path:
    """The shipped recipe with ``neighbour_box_share`` ``share``; returns the last epoch's checkpoint."""
    out = work / f"share{share:g}_seed{seed}"
    checkpoint = out / "models" / "segmote_latest.pt"
    if (out / "done.json").exists():
        log(f"share {share:g} seed {seed}: already trained ({out})")
        return checkpoint
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", str(CONFIGS / "metadata.json"),
               "--config_file", repr([str(CONFIGS / "train.json"), str(CONFIGS / "train_class_prompts.json")]),
               "--logging_file", str(CONFIGS / "logging.conf"), "--bundle_root", str(BUNDLE), "--datalist", str(data),
               "--output_dir", str(out), "--cache_dir", str(cache_dir),
               "--model_path", str(out / "models" / "model.pt"),
               "--val_interval", "15", "--seed", str(seed), "--neighbour_box_share", str(share)]
    log(f"training share {share:g} seed {seed}")
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.log", "w") as stream:
        result = subprocess.run(command, cwd=REPO, stdout=stream, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"training failed ({out / 'train.log'}):\n{(out / 'train.log').read_text()[-3000:]}")
    (out / "done.json").write_text(json.dumps({"seconds": time.perf_counter() - start, "command": command[1:]}))
    log(f"share {share:g} seed {seed}: {(time.perf_counter() - start) / 60:.1f} min")
    return checkpoint


def neighbour_dice(segmenter: SliceSegmenter, image: torch.Tensor, label: torch.Tensor) -> float:
    """Mean over organs and slices of the slice Dice (own mask) with the box of the slice above or below."""
    scores = []
    depth = label.shape[-1]
    for c in ORGANS:
        organ = label[0] == c
        for step in (1, -1):
            boxes = {z: box_of_mask(organ[..., z + step]) for z in range(depth)
                     if organ[..., z].any() and 0 <= z + step < depth and organ[..., z + step].any()}
            prompts = [(boxes[z].reshape(1, 4), torch.tensor([c])) if z in boxes else
                       (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)) for z in range(depth)]
            pred = segmenter(image, prompts)[0] == c
            for z in boxes:
                p, t = pred[..., z], organ[..., z]
                scores.append(2 * (p & t).sum().item() / max(1, p.sum().item() + t.sum().item()))
    return float(np.mean(scores))


def score(checkpoint: Path, cases: list[str], data_dir: Path, cache_dir: Path) -> dict[str, dict[str, float]]:
    """Per case, each measure of :data:`MEASURES` (organ means)."""
    model = build_from_checkpoint(trainable_checkpoint=checkpoint, backbone="lite_medsam").eval()
    load = Compose([LoadPaird(label_values=[0, *ORGANS]), ScaleIntensityByModalityd(keys="image", modality="MR")])
    cache = EmbeddingCache.for_model(cache_dir, model, {"size": 256, "scaling": "modality", "slice_axis": "axial"})
    segmenter = SliceSegmenter(model, backbone="lite_medsam", cache=cache)
    out = {}
    for case in cases:
        name = f"chaos_t2_case{case}.nii.gz"
        data = load({"image": str(data_dir / "images" / name), "label": str(data_dir / "labels" / name)})
        image, label = data["image"], data["label"]
        every = segmenter(image, prompts_from_label(label, list(ORGANS)))
        key, _ = walk(segmenter, image, seeds_of(label), 0.3, 0.9)
        box_3d, _ = walk(segmenter, image, seeds_3d(label), 0.3, 0.9)
        out[case] = {m: float(np.mean([dice(pred, label, c) for c in ORGANS]))
                     for m, pred in (("every", every), ("key", key), ("3d", box_3d))}
        out[case]["neighbour"] = neighbour_dice(segmenter, image, label)
        log(f"  {checkpoint.parent.parent.name} case {case}: "
            + ", ".join(f"{m} {v:.3f}" for m, v in out[case].items()))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shares", nargs="+", type=float, default=[0.5], help="neighbour_box_share values (0 added)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--test", nargs="+", default=["01", "03", "05"],
                        help="training patients of the shipped datalist held out to test on")
    parser.add_argument("--data_dir", type=Path, default=REPO.parent / "shared" / "data" / "mri_abdomen_chaos_t2")
    parser.add_argument("--work_dir", type=Path, default=REPO / "runs" / "benchmarks" / "neighbour_boxes")
    parser.add_argument("--cache_dir", type=Path, default=None,
                        help="the slices' encodings, shared by training and scoring (default: in --work_dir)")
    parser.add_argument("--write", action="store_true", help="put the section in BENCHMARKS.md")
    args = parser.parse_args(argv)
    if not (args.data_dir / "images").is_dir():
        print(f"error: {args.data_dir}: no images/ folder (CHAOS T2 as in ../shared/data)", file=sys.stderr)
        return 1
    args.work_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = args.cache_dir or args.work_dir / "cache"
    data = datalist(args.data_dir.resolve(), args.test, args.work_dir / "datalist.json")
    shares = [0.0, *[s for s in args.shares if s != 0.0]]
    cases = [*args.test, "02"]
    results: dict[tuple[float, int], dict[str, dict[str, float]]] = {}
    for seed in range(args.seeds):
        for share in shares:
            results[share, seed] = score(train(share, seed, data, args.work_dir, cache_dir), cases, args.data_dir,
                                         cache_dir)
    rows = ["| neighbour_box_share | seed | " + " | ".join(f"{MEASURE_NAMES[m]}" for m in MEASURES)
            + " | key slice - every slice | 3D box - every slice |", "|---:|---:|" + "---:|" * (len(MEASURES) + 2)]

    def row(share: float, seed: str, runs: list[dict[str, dict[str, float]]]) -> str:
        mean = {m: np.mean([np.mean([r[c][m] for c in cases]) for r in runs]) for m in MEASURES}
        return (f"| {share:g} | {seed} | " + " | ".join(f"{mean[m]:.3f}" for m in MEASURES)
                + f" | {mean['key'] - mean['every']:+.3f} | {mean['3d'] - mean['every']:+.3f} |")

    for share in shares:
        for seed in range(args.seeds):
            rows.append(row(share, str(seed), [results[share, seed]]))
        rows.append(row(share, "mean", [results[share, s] for s in range(args.seeds)]))
    per_case = ["| neighbour_box_share | patient | " + " | ".join(MEASURE_NAMES[m] for m in MEASURES) + " |",
                "|---:|---|" + "---:|" * len(MEASURES)]
    for share in shares:
        for case in cases:
            per_case.append(f"| {share:g} | {case} | " + " | ".join(
                f"{np.mean([results[share, s][case][m] for s in range(args.seeds)]):.3f}" for m in MEASURES) + " |")
    section = ("## Propagation: training on boxes from the neighbouring slice (issue 11)\n\n" + provenance()
               + f"\n- seeds: {', '.join(map(str, range(args.seeds)))} (training)\n\n"
               "The shipped weights' recipe (`train.json` + `train_class_prompts.json`, 15 epochs, the last epoch's "
               f"weights) trained on the shipped datalist's training patients less {', '.join(args.test)}, with "
               "`neighbour_box_share` 0 (the control) and the shares given: that share of the box rows gets the tight "
               "box of its organ on the slice above or below. Scored on patients "
               f"{', '.join(cases)} (none of them trained on; 02 is the validation patient): mean over patients of the "
               "organs' mean 3D Dice on the label map with a box on every slice and with the walks from each organ's "
               "key-slice box and 3D box (the bundle's defaults, as `benchmarks/propagation.py` runs them), and the "
               "organs' mean slice Dice on their own masks with the box of the slice above or below.\n\n"
               + "\n".join(rows) + "\n\nPer patient, mean over seeds:\n\n" + "\n".join(per_case) + "\n")
    print(section)
    if args.write:
        write_section(REPO / "BENCHMARKS.md", "propagation_neighbour_boxes", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
