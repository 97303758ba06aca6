"""Main job on the embedded sample: train SegMoTE on frozen LiteMedSAM, segment the held-out volume, compare
with the frozen model's zero-shot result on the same boxes, and write the prediction as NIfTI on the input's
exact grid.

    python scripts/demo.py [--datalist bundle/data/chaos_t2/datalist.json] [--output-dir runs/demo]

CPU only, no download. The frozen encoder's output is cached under ``<output-dir>/cache`` (delete it to
clear), so a second run skips the encoder. Box prompts come from the label of each slice and class: jittered
by up to 10% of the box size in training, tight and jittered (seeded) in evaluation.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, list_data_collate
from monai.transforms import Compose
from monai.utils import set_determinism

from segmote_monai.atomic import atomic_path
from segmote_monai.data import restore_grid
from segmote_monai.data.cache import EmbeddingCache
from segmote_monai.data.datalist import load_datalist
from segmote_monai.data.slice_dataset import SliceSampleDataset
from segmote_monai.engines import training_iteration
from segmote_monai.inferers import SliceSegmenter, prompts_from_label
from segmote_monai.losses import DiceBalanceLoss
from segmote_monai.metrics import dice_per_class
from segmote_monai.networks import build_segmote, save_trainable
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datalist", type=Path, default=REPO / "bundle/data/chaos_t2/datalist.json")
    parser.add_argument("--output-dir", type=Path, default=REPO / "runs/demo")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--samples-per-volume", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--jitter", type=float, default=0.1, help="box jitter, fraction of the box size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default="lite_medsam", help="lite_medsam, or tiny for a smoke test")
    args = parser.parse_args(argv)
    start = time.time()
    set_determinism(args.seed)
    datalist = load_datalist(args.datalist)
    classes = datalist.classes
    load = Compose([LoadPaird(**datalist.label_encoding()), ScaleIntensityByModalityd()])

    model = build_segmote(args.backbone, num_ppt_queries=0)
    zero_shot = build_segmote(args.backbone, num_expert_tokens=0, num_ppt_queries=0)
    size = model.img_size
    cache = EmbeddingCache.for_model(args.output_dir / "cache", model, {"size": size, "scaling": "modality"})

    train = SliceSampleDataset(
        CacheDataset(datalist.items("training"), load, progress=False),
        RandSliceSamplerd(num_samples=1), args.samples_per_volume,
        Compose([ToRGBd(), ResizeLongestSidePadd(("image", "label"), size, ("bilinear", "nearest-exact")),
                 BackboneNormalized(backbone=args.backbone), RandPromptd(classes=classes, jitter=args.jitter)]),
    )
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, collate_fn=list_data_collate)
    loss_fn = DiceBalanceLoss()
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    for epoch in range(1, args.epochs + 1):
        losses = [training_iteration(model, optimiser, loss_fn, batch, cache=cache)["loss"].item()
                  for batch in loader]
        if epoch % 10 == 0 or epoch == 1:
            print(f"epoch {epoch}: loss {np.mean(losses):.4f} ({cache.hits} cached / {cache.misses} encoded slices, "
                  f"{time.time() - start:.0f} s)")
    checkpoint = save_trainable(model, args.output_dir / "segmote_trainable.pt")

    rows = []
    for item in datalist.items("test"):
        case = load(item)
        name = item.get("patient", Path(item["image"]).name.split(".")[0])
        for jitter in (0.0, args.jitter):
            prompts = prompts_from_label(case["label"], classes, jitter=jitter, seed=args.seed)
            for label, net in (("zero-shot", zero_shot), ("SegMoTE", model)):
                pred = SliceSegmenter(net, backbone=args.backbone, cache=cache)(case["image"], prompts)
                rows.append((name, jitter, label, dice_per_class(pred, case["label"], classes)))
                if label == "SegMoTE" and jitter == 0.0:
                    restored = restore_grid(pred, case["image"])
                    nifti = nib.Nifti1Image(restored[0].numpy().astype(np.uint8), restored.affine.numpy())
                    with atomic_path(args.output_dir / f"{name}_pred.nii.gz") as tmp:
                        nib.save(nifti, tmp)

    names = datalist.labels
    print(f"\n3D Dice on the held-out volume(s), boxes from the label ({time.time() - start:.0f} s in all)")
    print(f"| case | boxes | model | {' | '.join(names[c] for c in classes)} | mean |")
    print("|---" * (len(classes) + 4) + "|")
    for case_name, jitter, label, dice in rows:
        cells = " | ".join(f"{dice[c]:.3f}" if c in dice else "-" for c in classes)
        boxes = "tight" if jitter == 0 else f"±{jitter:.0%}"
        print(f"| {case_name} | {boxes} | {label} | {cells} | {np.mean(list(dice.values())):.3f} |")
    print(f"\npredictions: {args.output_dir}")
    print(f"trainable checkpoint: {checkpoint}")
    print(f"embedding cache: {cache.directory} ({cache.size_bytes() / 2**20:.0f} MiB; delete to clear)")


if __name__ == "__main__":
    main()
