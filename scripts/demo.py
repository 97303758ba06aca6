"""Main job on the embedded sample: train SegMoTE on frozen LiteMedSAM, segment a held-out volume, compare
with the frozen model's zero-shot result, and write the prediction as NIfTI on the input's grid.

    python scripts/demo.py [--datalist bundle/data/chaos_t2/datalist.json] [--output-dir runs/demo]

CPU only, no download. The frozen encoder runs once per slice (about 1.8 s each); training then touches
only cached embeddings. Box prompts come from the label of each slice and class, tight or with each side
moved by up to 10% of the box size (seeded), as a user would draw them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.transforms import ScaleIntensityRangePercentiles

from segmote_monai.atomic import atomic_path
from segmote_monai.losses import DiceBalanceLoss
from segmote_monai.networks import build_segmote, save_trainable

REPO = Path(__file__).resolve().parents[1]


def load_case(item: dict, root: Path) -> tuple[nib.Nifti1Image, np.ndarray, np.ndarray]:
    """(image NIfTI, [S, 3, H, W] float32 images in [0, 1] per axial slice, [S, H, W] int labels)."""
    image = nib.load(root / item["image"])
    label = np.asarray(nib.load(root / item["label"]).dataobj).astype(np.int64)
    volume = np.asarray(image.dataobj, dtype=np.float32)
    if volume.shape != label.shape:
        raise ValueError(f"{root / item['label']}: shape {label.shape} differs from its image {volume.shape}")
    volume = np.asarray(ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)(volume))
    slices = np.repeat(np.moveaxis(volume, 2, 0)[:, None], 3, axis=1)
    return image, slices, np.moveaxis(label, 2, 0)


def box_of(mask: np.ndarray, jitter: float, rng: np.random.Generator) -> list[float]:
    """Tight ``x0, y0, x1, y1`` box of ``mask``; each side moved by up to ``jitter`` x the box size."""
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)
    if jitter:
        size = np.array([box[2] - box[0], box[3] - box[1]] * 2) + 1
        box = box + rng.uniform(-jitter, jitter, 4) * size
    h, w = mask.shape
    return np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1]).tolist()


def prompts_for(labels: np.ndarray, classes: list[int], jitter: float, rng: np.random.Generator):
    """One box per (slice, present class): boxes [N, 4], slice index [N], class [N], masks [N, 1, H, W]."""
    boxes, index, cls, masks = [], [], [], []
    for s, label in enumerate(labels):
        for c in classes:
            mask = label == c
            if mask.any():
                boxes.append(box_of(mask, jitter, rng))
                index.append(s)
                cls.append(c)
                masks.append(mask)
    return (torch.tensor(boxes, dtype=torch.float32), torch.tensor(index), torch.tensor(cls),
            torch.from_numpy(np.stack(masks)[:, None]).float())


@torch.no_grad()
def segment(model, embeddings, labels, classes, jitter, seed, batch=32) -> np.ndarray:
    """[S, H, W] label map: per pixel the class whose mask logit is highest and above 0."""
    model.eval()
    boxes, index, cls, _ = prompts_for(labels, classes, jitter, np.random.default_rng(seed))
    best = torch.zeros(labels.shape)
    out = torch.zeros(labels.shape, dtype=torch.long)
    for start in range(0, len(boxes), batch):
        rows = slice(start, start + batch)
        used = index[rows].unique()
        remap = torch.searchsorted(used, index[rows])
        logits = model.predict(image_embeddings=embeddings[used], boxes=boxes[rows], image_index=remap).masks[:, 0]
        for logit, s, c in zip(logits, index[rows], cls[rows]):
            win = logit > torch.maximum(best[s], torch.zeros(()))
            best[s] = torch.where(win, logit, best[s])
            out[s] = torch.where(win, c, out[s])
    return out.numpy()


def dice_per_class(pred: np.ndarray, label: np.ndarray, classes: list[int]) -> dict[int, float]:
    return {c: float(2 * ((pred == c) & (label == c)).sum() / max(1, (pred == c).sum() + (label == c).sum()))
            for c in classes if (label == c).any()}


def save_nifti_atomic(array: np.ndarray, like: nib.Nifti1Image, path: Path) -> None:
    image = nib.Nifti1Image(array.astype(np.uint8), like.affine, like.header)
    image.set_data_dtype(np.uint8)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datalist", type=Path, default=REPO / "bundle/data/chaos_t2/datalist.json")
    parser.add_argument("--output-dir", type=Path, default=REPO / "runs/demo")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--jitter", type=float, default=0.1, help="box jitter, fraction of the box size")
    parser.add_argument("--train-slice-stride", type=int, default=2, help="use every n-th labelled slice")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    start = time.time()
    datalist = json.loads(args.datalist.read_text())
    root = args.datalist.parent
    classes = sorted(int(k) for k in datalist["labels"] if int(k) > 0)
    names = {int(k): v for k, v in datalist["labels"].items()}

    model = build_segmote("lite_medsam", num_ppt_queries=0)
    zero_shot = build_segmote("lite_medsam", num_expert_tokens=0, num_ppt_queries=0)

    train_embeddings, train_labels = [], []
    for item in datalist["training"]:
        _, slices, labels = load_case(item, root)
        keep = np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1))[:: args.train_slice_stride]
        train_embeddings.append(model.embed_images(torch.from_numpy(slices[keep])))
        train_labels.append(labels[keep])
    train_embeddings = torch.cat(train_embeddings)
    train_labels = np.concatenate(train_labels)
    print(f"encoded {len(train_labels)} training slices in {time.time() - start:.0f} s")

    loss_fn = DiceBalanceLoss()
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    model.train()
    running = []
    for step in range(1, args.steps + 1):
        s = int(rng.integers(len(train_labels)))
        boxes, _, _, masks = prompts_for(train_labels[s:s + 1], classes, args.jitter, rng)
        loss = loss_fn(model.predict(image_embeddings=train_embeddings[s:s + 1], boxes=boxes), masks)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        running.append(loss.item())
        if step % 100 == 0:
            print(f"step {step}: loss {np.mean(running[-100:]):.4f}")
    checkpoint = save_trainable(model, args.output_dir / "segmote_trainable.pt")

    results = []
    for item in datalist["test"]:
        image, slices, labels = load_case(item, root)
        embeddings = model.embed_images(torch.from_numpy(slices))
        for jitter in (0.0, args.jitter):
            for name, net in (("zero-shot", zero_shot), ("SegMoTE", model)):
                pred = segment(net, embeddings, labels, classes, jitter, seed=args.seed)
                results.append((item["patient"], jitter, name, dice_per_class(pred, labels, classes)))
                if name == "SegMoTE" and jitter == 0.0:
                    output = args.output_dir / f"{item['patient']}_pred.nii.gz"
                    save_nifti_atomic(np.moveaxis(pred, 0, 2), image, output)

    print(f"\n3D Dice on the held-out volume(s), boxes from the label ({time.time() - start:.0f} s in all)")
    print(f"| case | boxes | model | {' | '.join(names[c] for c in classes)} | mean |")
    print("|---" * (len(classes) + 4) + "|")
    for patient, jitter, name, dice in results:
        cells = " | ".join(f"{dice[c]:.3f}" if c in dice else "-" for c in classes)
        box = "tight" if jitter == 0 else f"±{jitter:.0%}"
        print(f"| {patient} | {box} | {name} | {cells} | {np.mean(list(dice.values())):.3f} |")
    print(f"\npredictions: {args.output_dir}")
    print(f"trainable checkpoint: {checkpoint}")


if __name__ == "__main__":
    main()
