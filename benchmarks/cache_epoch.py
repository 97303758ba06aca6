"""Time of one training epoch on CHAOS T2 MRI without the embedding cache and with a warm one.

    python benchmarks/cache_epoch.py [--data ../shared/data/mri_abdomen_chaos_t2] [--samples-per-volume 8]

Same samples in every epoch (seeded slice sampling and prompts), one box prompt per sample, same batch
size, frozen ``lite_medsam`` with SegMoTE's default widths. Epochs: (1) no cache: the encoder runs on every
slice; (2) cold cache: the encoder runs and entries are written; (3) warm cache: every embedding is read.
Prints a Markdown section (machine, commit, command, seed, figures) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import REPO, provenance, write_section
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

CLASSES = [1, 2, 3, 4]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/mri_abdomen_chaos_t2")
    parser.add_argument("--samples-per-volume", type=int, default=8)
    parser.add_argument("--max-volumes", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=10, help="slices per batch (the paper's 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default="lite_medsam")
    parser.add_argument("--write", type=Path, default=None, help="put the section into this BENCHMARKS.md")
    args = parser.parse_args(argv)
    body = measure(args.data, samples_per_volume=args.samples_per_volume, max_volumes=args.max_volumes,
                   batch_size=args.batch_size, seed=args.seed, backbone=args.backbone)
    print(body)
    if args.write is not None:
        write_section(args.write, "cache", body)


def measure(data: Path, *, samples_per_volume: int = 8, max_volumes: int | None = None, batch_size: int = 10,
            seed: int = 0, backbone: str = "lite_medsam") -> str:
    """Times the three epochs; returns the Markdown section."""
    images = sorted((data / "images").glob("*.nii.gz"))[:max_volumes]
    if not images:
        sys.exit(f"{data}: no images/*.nii.gz (the CHAOS folder of ../shared/data)")
    items = [{"image": str(p), "label": str(data / "labels" / p.name), "modality": "MR"} for p in images]
    size = BACKBONE_INPUT[backbone][0]
    volumes = CacheDataset(items, Compose([LoadPaird(label_values=CLASSES), ScaleIntensityByModalityd()]),
                           progress=False)  # volumes loaded once, outside the timings
    sampler = RandSliceSamplerd(num_samples=1)
    per_slice = Compose([
        ToRGBd(), ResizeLongestSidePadd(("image", "label"), size, ("bilinear", "nearest-exact")),
        BackboneNormalized(backbone=backbone), RandPromptd(classes=CLASSES, jitter=0.1),
    ])
    dataset = SliceSampleDataset(volumes, sampler, samples_per_volume, per_slice)
    model = build_segmote(backbone)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss_fn = DiceBalanceLoss()

    def epoch(cache: EmbeddingCache | None) -> tuple[float, int]:
        set_determinism(seed)
        sampler.set_random_state(seed)
        per_slice.set_random_state(seed)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=list_data_collate)
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

    rows = "\n".join(f"| {name} | {seconds:.1f} | {seconds / samples:.3f} |" for name, seconds in (
        ("no cache (encoder on every slice)", no_cache), (f"cold cache ({misses} encoder runs, entries written)", cold),
        (f"warm cache ({hits} hits, every embedding read)", warm)))
    return f"""## Training epoch with and without the embedding cache

{provenance(seed)}
- {len(items)} CHAOS T2 volumes x {samples_per_volume} slices = {samples} samples per epoch (the same samples in
  every epoch), one jittered box each, batch {batch_size}, frozen `{backbone}` with SegMoTE's default widths

| epoch | time (s) | s / sample |
|---|---:|---:|
{rows}

Speed-up, no cache / warm cache: **{no_cache / warm:.1f}x** (goal: at least 4x). Cache: {entries} distinct slices,
{cache_mb:.0f} MiB (float16, {cache_mb / max(1, entries):.2f} MiB per slice).
"""


if __name__ == "__main__":
    main()
