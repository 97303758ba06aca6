"""One key-slice box per organ, propagated through the volume, against a box on every slice (issue 11).

    python benchmarks/propagation.py [--cases 10 21] [--margins 0 0.05] [--overlaps 0 0.7] [--write]

The shipped CHAOS checkpoint (``bundle/models/model.pt``) on the embedded patients (10: validation, where the rule
was chosen; 21: held out). The seed of each organ is its largest slice with that slice's tight box, what a reader
would draw. 3D Dice per organ and the slices each propagation reached against the slices the organ is on. Prints a
Markdown section (machine, commit, command, figures); ``--write`` puts it in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time

import numpy as np
import torch
from common import REPO, provenance, write_section
from monai.transforms import Compose

from segmote_monai.data.cache import EmbeddingCache
from segmote_monai.inferers import SliceSegmenter, prompts_from_label
from segmote_monai.inferers.propagation import PropagationSeed, propagate
from segmote_monai.networks import build_from_checkpoint
from segmote_monai.transforms import LoadPaird, ScaleIntensityByModalityd

BUNDLE = REPO / "bundle"
ORGANS = {1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen"}


def seeds_of(label: torch.Tensor) -> list[PropagationSeed]:
    seeds = []
    for c in ORGANS:
        z = int((label[0] == c).sum(dim=(0, 1)).argmax())
        ys, xs = torch.nonzero(label[0, :, :, z] == c, as_tuple=True)
        seeds.append(PropagationSeed(c, z, (xs.min().item(), ys.min().item(), xs.max().item(), ys.max().item())))
    return seeds


def dice(pred: torch.Tensor, label: torch.Tensor, c: int) -> float:
    p, t = pred == c, label == c
    return 2 * (p & t).sum().item() / max(p.sum().item() + t.sum().item(), 1)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["10", "21"])
    parser.add_argument("--margins", nargs="+", type=float, default=[0.0, 0.05])
    parser.add_argument("--overlaps", nargs="+", type=float, default=[0.0, 0.7])
    parser.add_argument("--write", action="store_true", help="put the section in BENCHMARKS.md")
    args = parser.parse_args(argv)
    model = build_from_checkpoint(trainable_checkpoint=BUNDLE / "models" / "model.pt", backbone="lite_medsam").eval()
    load = Compose([LoadPaird(label_values=[0, *ORGANS]), ScaleIntensityByModalityd(keys="image", modality="MR")])
    rows = ["| patient | prompts | " + " | ".join(ORGANS.values()) + " | mean | slices reached / on (per organ) | s |",
            "|---|---|" + "---:|" * (len(ORGANS) + 1) + "---|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache.for_model(tmp, model, {"size": 256, "scaling": "modality", "slice_axis": "axial"})
        segmenter = SliceSegmenter(model, backbone="lite_medsam", cache=cache)
        for case in args.cases:
            name = f"chaos_t2_case{case}.nii.gz"
            data = load({"image": str(BUNDLE / "data/chaos_t2/images" / name),
                         "label": str(BUNDLE / "data/chaos_t2/labels" / name)})
            image, label = data["image"], data["label"]
            on = {c: int((label[0] == c).any(0).any(0).sum()) for c in ORGANS}
            start = time.perf_counter()
            every = segmenter(image, prompts_from_label(label, list(ORGANS)))
            scores = [dice(every, label, c) for c in ORGANS]
            rows.append(f"| {case} | a box on every slice | " + " | ".join(f"{d:.3f}" for d in scores)
                        + f" | {np.mean(scores):.3f} | {', '.join(str(on[c]) for c in ORGANS)} (all) "
                        f"| {time.perf_counter() - start:.0f} |")
            for margin, overlap in itertools.product(args.margins, args.overlaps):
                start = time.perf_counter()
                pred, reached = propagate(segmenter, image, seeds_of(label), margin=margin, min_overlap=overlap)
                scores = [dice(pred, label, c) for c in ORGANS]
                span = ", ".join(f"{len(reached.get(c, []))}/{on[c]}" for c in ORGANS)
                rows.append(f"| {case} | key slice, margin {margin:g}, min_overlap {overlap:g} | "
                            + " | ".join(f"{d:.3f}" for d in scores) + f" | {np.mean(scores):.3f} | {span} "
                            f"| {time.perf_counter() - start:.0f} |")
                print(rows[-1], flush=True)
    section = ("## One key-slice box per organ, propagated (issue 11, first measurement)\n\n" + provenance()
               + "\n\nShipped CHAOS checkpoint; seed: each organ's largest slice and its tight box; 3D Dice on the "
               "label map. The rule (`propagate`'s defaults: margin 0, min_overlap 0.7) was chosen on patient 10; "
               "patient 21 is held out. Issue 11's target: within 0.03 of a box on every slice. Times include "
               "encoding only where the slice was not yet cached (the per-slice row encodes every slice first)."
               "\n\n" + "\n".join(rows) + "\n")
    print(section)
    if args.write:
        write_section(REPO / "BENCHMARKS.md", "propagation", section)
    return section


if __name__ == "__main__":
    sys.exit(main() and 0)
