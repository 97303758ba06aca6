"""Time of one training epoch on CHAOS T2 MRI without the embedding cache and with a warm one.

    python benchmarks/cache_epoch.py [--data ../shared/data/mri_abdomen_chaos_t2] [--samples-per-volume 8]

Same samples in every epoch (seeded slice sampling and prompts), one box prompt per sample, same batch
size, frozen ``lite_medsam`` with SegMoTE's default widths. Epochs: (1) no cache: the encoder runs on every
slice; (2) cold cache: the encoder runs and entries are written; (3) warm cache: every embedding is read.
Prints a Markdown section (machine, commit, command, seed, figures) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from monai.data import CacheDataset, DataLoader, list_data_collate
from monai.transforms import Compose
from monai.utils import set_determinism

from segmote_monai.data.cache import EmbeddingCache
from segmote_monai.data.slice_dataset import SliceSampleDataset
from segmote_monai.engines import training_iteration
from segmote_monai.losses import DiceBalanceLoss
from segmote_monai.networks import build_segmote
from segmote_monai.networks.backbones import BACKBONE_INPUT
from segmote_monai.transforms import (
    BackboneNormalized,
    LoadPaird,
    RandPromptd,
    RandSliceSamplerd,
    ResizeLongestSidePadd,
    ScaleIntensityByModalityd,
    ToRGBd,
)

REPO = Path(__file__).resolve().parents[1]
CLASSES = [1, 2, 3, 4]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return f"{cpu}, {torch.get_num_threads()} threads, {platform.system()}, Python {platform.python_version()}, " \
           f"torch {torch.__version__}"


def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/mri_abdomen_chaos_t2")
    parser.add_argument("--samples-per-volume", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=10, help="slices per batch (the paper's 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default="lite_medsam")
    args = parser.parse_args(argv)
    images = sorted((args.data / "images").glob("*.nii.gz"))
    if not images:
        sys.exit(f"{args.data}: no images/*.nii.gz (the CHAOS folder of ../shared/data)")
    items = [{"image": str(p), "label": str(args.data / "labels" / p.name), "modality": "MR"} for p in images]
    size = BACKBONE_INPUT[args.backbone][0]
    volumes = CacheDataset(items, Compose([LoadPaird(label_values=CLASSES), ScaleIntensityByModalityd()]),
                           progress=False)  # volumes loaded once, outside the timings
    sampler = RandSliceSamplerd(num_samples=1)
    per_slice = Compose([
        ToRGBd(), ResizeLongestSidePadd(("image", "label"), size, ("bilinear", "nearest-exact")),
        BackboneNormalized(backbone=args.backbone), RandPromptd(classes=CLASSES, jitter=0.1),
    ])
    dataset = SliceSampleDataset(volumes, sampler, args.samples_per_volume, per_slice)
    model = build_segmote(args.backbone)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss_fn = DiceBalanceLoss()

    def epoch(cache: EmbeddingCache | None) -> tuple[float, int]:
        set_determinism(args.seed)
        sampler.set_random_state(args.seed)
        per_slice.set_random_state(args.seed)
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, collate_fn=list_data_collate)
        start, samples = time.perf_counter(), 0
        for batch in loader:
            training_iteration(model, optimiser, loss_fn, batch, cache=cache)
            samples += len(batch["image"])
        return time.perf_counter() - start, samples

    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache.for_model(tmp, model, {"size": size, "modality": "MR", "percentiles": (0.5, 99.5)})
        no_cache, samples = epoch(None)
        cold, _ = epoch(cache)
        misses, hits_before = cache.misses, cache.hits
        warm, _ = epoch(cache)
        hits = cache.hits - hits_before  # this epoch's alone
        cache_mb, entries = cache.size_bytes() / 2**20, len(cache.entries())

    command = "python " + " ".join([str(Path(sys.argv[0]).relative_to(REPO)) if Path(sys.argv[0]).is_absolute()
                                     else sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    print("## Training epoch with and without the embedding cache\n")
    print(f"- machine: {machine()}")
    print(f"- commit: {commit()}")
    print(f"- command: `{command}`")
    print(f"- seed {args.seed}; {len(items)} CHAOS T2 volumes x {args.samples_per_volume} slices = {samples} "
          f"samples, one jittered box each, batch {args.batch_size}, backbone {args.backbone}")
    print()
    print("| epoch | time (s) | s / sample |")
    print("|---|---:|---:|")
    for name, seconds in (("no cache", no_cache), (f"cold cache ({misses} misses, written)", cold),
                          (f"warm cache ({hits} hits)", warm)):
        print(f"| {name} | {seconds:.1f} | {seconds / samples:.3f} |")
    print(f"\nSpeed-up, no cache / warm cache: **{no_cache / warm:.1f}x**; cache: {entries} distinct slices, "
          f"{cache_mb:.0f} MiB (float16, {cache_mb / max(1, entries):.2f} MiB each).")


if __name__ == "__main__":
    main()
