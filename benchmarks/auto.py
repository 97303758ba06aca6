"""Automatic multi-class segmentation and class-aware boxes on held-out CHAOS patients (issue 11, items 1 and 2).

For each checkpoint and patient: the class-conditioned prompt-free label map (every organ asked for on every
slice; checkpoints trained with ``class_prompts``), and a box on every slice from the label, tight and with each
side moved by up to 10% (seed 0), without and (class-conditioned checkpoints) with each box's class. 3D Dice on
the label map; for the automatic rows also, per organ, the slices without it in the reference where it was
predicted (false-positive slices) and the slices with it where nothing was predicted. ``automatic, propagated``:
one seed per organ from the prompt-free masks, propagated with the prompt-free masks as a second opinion
(:func:`~segmote_monai.inferers.auto_seeds.propagate_auto` with its defaults), what the bundle's ``prompt_mode auto``
does on a volume (``auto_propagate``).

    python benchmarks/auto.py --checkpoints bundle/models/model.pt [--timing] [--write [--section NAME]]

``--timing`` (class-conditioned checkpoints): seconds of automatic segmentation per slice and propagated, nothing
cached, three rounds in swapped order after an untimed first slice (:func:`timing`); issue 11's budget for
propagation is 1.15 x the model's own compute (here: the per-slice automatic pass, which encodes every slice once as
the propagated one does).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, provenance, write_section
from monai.transforms import Compose

from segmote_monai.data.cache import EmbeddingCache
from segmote_monai.inferers import SliceSegmenter, prompts_from_label
from segmote_monai.inferers.auto_seeds import propagate_auto
from segmote_monai.networks import build_from_checkpoint
from segmote_monai.transforms import LoadPaird, ScaleIntensityByModalityd

BUNDLE = REPO / "bundle"
ORGANS = {1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen"}


def dice(pred: torch.Tensor, label: torch.Tensor, c: int) -> float:
    p, t = pred == c, label == c
    return 2 * (p & t).sum().item() / max(p.sum().item() + t.sum().item(), 1)


def slice_errors(pred: torch.Tensor, label: torch.Tensor, c: int) -> tuple[int, int, int, int]:
    """(slices predicted without the organ, slices without it, slices with it predicted empty, slices with it)."""
    predicted = (pred[0] == c).flatten(0, 1).any(0)
    present = (label[0] == c).flatten(0, 1).any(0)
    return (int((predicted & ~present).sum()), int((~present).sum()), int((~predicted & present).sum()),
            int(present.sum()))


def _span(slices: list[int]) -> str:
    """'first-last (count)' of sorted slice indices; 'none' for none."""
    return f"{slices[0]}-{slices[-1]} ({len(slices)})" if slices else "none"


def timing(model, image: torch.Tensor, rounds: int = 3) -> list[tuple[float, float]]:
    """(per slice, propagated) seconds of automatic segmentation of ``image``, nothing cached: after one slice
    encoded and decoded untimed (a process's first calls are slower), ``rounds`` rounds, the order swapped from one
    to the next, so that neither mode always runs on a warmer process."""
    SliceSegmenter(model, backbone="lite_medsam")(image[..., :1], None, auto_classes=list(ORGANS))

    def per_slice() -> float:
        start = time.perf_counter()
        SliceSegmenter(model, backbone="lite_medsam")(image, None, auto_classes=list(ORGANS))
        return time.perf_counter() - start

    def propagated() -> float:
        start = time.perf_counter()
        propagate_auto(SliceSegmenter(model, backbone="lite_medsam"), image, list(ORGANS))
        return time.perf_counter() - start

    pairs = []
    for r in range(rounds):
        if r % 2:
            second = propagated()
            pairs.append((per_slice(), second))
        else:
            first = per_slice()
            pairs.append((first, propagated()))
    return pairs


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs="+", default=[str(BUNDLE / "models" / "model.pt")])
    parser.add_argument("--names", nargs="+", default=None,
                        help="what to call each checkpoint in the tables (default: its path)")
    parser.add_argument("--cases", nargs="+", default=["10", "21"])
    parser.add_argument("--data_dir", default=str(BUNDLE / "data/chaos_t2"))
    parser.add_argument("--jitter", type=float, default=0.1)
    parser.add_argument("--cache_dir", default=None,
                        help="keep the encoder's outputs here (default: a temporary folder)")
    parser.add_argument("--write", action="store_true", help="put the section in BENCHMARKS.md")
    parser.add_argument("--timing", action="store_true", help="time automatic per slice against propagated")
    parser.add_argument("--reboxes", nargs="+", default=[], type=lambda t: None if t.lower() == "none" else float(t),
                        help="also propagated with these rebox_below values (none: off)")
    parser.add_argument("--propagated_only", action="store_true",
                        help="only the automatic, propagated rows (no per-slice or box rows)")
    parser.add_argument("--refines", nargs="+", default=[], type=float,
                        help="also the per-slice automatic masks refined with these prompt_free_refine values")
    parser.add_argument("--per_slice_only", action="store_true",
                        help="only the automatic per-slice rows (with --refines, refined too)")
    parser.add_argument("--section", default="automatic", help="the section's name in BENCHMARKS.md")
    parser.add_argument("--title", default="Automatic multi-class segmentation and class-aware boxes (issue 11)")
    args = parser.parse_args(argv)
    if args.names is not None and len(args.names) != len(args.checkpoints):
        parser.error(f"--names gives {len(args.names)} names for {len(args.checkpoints)} checkpoints")
    load = Compose([LoadPaird(label_values=[0, *ORGANS]), ScaleIntensityByModalityd(keys="image", modality="MR")])
    rows = ["| checkpoint | patient | prompts | " + " | ".join(ORGANS.values()) + " | mean | s |",
            "|---|---|---|" + "---:|" * (len(ORGANS) + 1) + "---:|"]
    errors = ["| checkpoint | patient | prompts | " + " | ".join(ORGANS.values()) + " |",
              "|---|---|---|" + "---|" * len(ORGANS)]
    means: dict[tuple[str, str], list[float]] = {}
    times = ["| checkpoint | patient | round | automatic per slice s | automatic, propagated s | ratio |",
             "|---|---|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.cache_dir or tmp
        for i, checkpoint in enumerate(args.checkpoints):
            path = Path(checkpoint).resolve()
            name = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else checkpoint
            name = args.names[i] if args.names else name
            model = build_from_checkpoint(trainable_checkpoint=checkpoint, backbone="lite_medsam").eval()
            cache = EmbeddingCache.for_model(tmp, model, {"size": 256, "scaling": "modality", "slice_axis": "axial"})
            segmenter = SliceSegmenter(model, backbone="lite_medsam", cache=cache)
            for case in args.cases:
                file = f"chaos_t2_case{case}.nii.gz"
                data = load({"image": str(Path(args.data_dir) / "images" / file),
                             "label": str(Path(args.data_dir) / "labels" / file)})
                image, label = data["image"], data["label"]
                # (row name, prompts or None for automatic, the segmenter's options for that row)
                runs = []
                if model.class_conditioned:
                    auto = {"auto_classes": list(ORGANS)}
                    runs.append(("automatic (no prompt)", None, auto))
                    runs += [(f"automatic (no prompt), prompt_free_refine {f:g}", None,
                              {**auto, "prompt_free_refine": f}) for f in args.refines]
                    runs.append(("automatic, propagated", None, {"propagated": True}))
                    runs += [(f"automatic, propagated, rebox_below {rebox}", None,
                              {"propagated": True, "rebox_below": rebox}) for rebox in args.reboxes]
                    if model.presence is not None:
                        runs.append(("automatic (no prompt), presence head off", None,
                                     {**auto, "auto_presence": False}))
                for jitter in (0.0, args.jitter):
                    kind = "tight box" if jitter == 0 else f"±{jitter:.0%} box"
                    prompts = prompts_from_label(label, list(ORGANS), jitter=jitter, seed=0)
                    runs.append((f"{kind} on every slice", prompts, {}))
                    if model.class_conditioned:
                        runs.append((f"{kind} on every slice + class", prompts, {"class_boxes": True}))
                if args.propagated_only:
                    runs = [run for run in runs if run[2].get("propagated")]
                if args.per_slice_only:
                    runs = [run for run in runs if run[1] is None and not run[2].get("propagated")]
                if args.timing and model.class_conditioned:
                    for round_, (per_slice, propagated) in enumerate(timing(model, image), start=1):
                        times.append(f"| {name} | {case} | {round_} | {per_slice:.1f} | {propagated:.1f} "
                                     f"| {propagated / per_slice:.2f} |")
                        print(times[-1], flush=True)
                for kind, prompts, options in runs:
                    start = time.perf_counter()
                    if options.get("propagated"):
                        # the automatic seeds are key-slice seeds
                        rebox = ({"rebox_below": options["rebox_below"], "rebox_key_slices": True}
                                 if "rebox_below" in options else {})
                        pred, reached = propagate_auto(segmenter, image, list(ORGANS), **rebox)
                        present = {c: torch.nonzero((label[0] == c).flatten(0, 1).any(0))[:, 0].tolist()
                                   for c in ORGANS}
                        print(f"{case} slices reached: " + ", ".join(
                            f"{ORGANS[c]} {_span(reached.get(c, []))} (reference {_span(present[c])})"
                            for c in ORGANS), flush=True)
                    else:
                        pred = segmenter(image, prompts, **options)
                    if prompts is None:
                        counts = [slice_errors(pred, label, c) for c in ORGANS]
                        errors.append(f"| {name} | {case} | {kind} | " + " | ".join(
                            f"{fp}/{absent} FP, {fn}/{present} missed" for fp, absent, fn, present in counts) + " |")
                    scores = [dice(pred, label, c) for c in ORGANS]
                    means.setdefault((name, kind), []).append(float(np.mean(scores)))
                    rows.append(f"| {name} | {case} | {kind} | " + " | ".join(f"{d:.3f}" for d in scores)
                                + f" | {np.mean(scores):.3f} | {time.perf_counter() - start:.0f} |")
                    print(rows[-1], flush=True)
    summary = ["| checkpoint | prompts | mean over patients |", "|---|---|---:|"] + [
        f"| {name} | {kind} | {np.mean(values):.3f} |" for (name, kind), values in means.items()]
    section = (f"## {args.title}\n\n" + provenance(seed=0)
               + f"\n\nCHAOS T2 patients {', '.join(args.cases)} (held out from every checkpoint's training); 3D Dice "
               "on the label map (overlaps: the smaller mask wins). Automatic: every organ asked for on every slice "
               "by the class-conditioned PPT; where the checkpoint has a presence head, a class it finds absent "
               "from a slice gets no mask there (`presence head off`: every mask kept). `+ class`: the box's class "
               "goes to the decoder beside the box "
               "(class-aware prompts). Issue 11's target for automatic CHAOS: mean >= 0.85.\n\n"
               + "\n".join(summary) + "\n\n" + "\n".join(rows) + "\n")
    if len(errors) > 2:
        section += ("\nAutomatic, per organ: slices without the organ in the reference where it was predicted (FP), "
                    "and slices with it where nothing was predicted (missed).\n\n" + "\n".join(errors) + "\n")
    if len(times) > 2:
        section += ("\nTime of automatic segmentation, nothing cached: per slice against one seed per organ "
                    "propagated (the same slices encoded once each); three rounds, the order swapped from one to "
                    "the next, after one slice segmented untimed. Issue 11's budget: 1.15.\n\n"
                    + "\n".join(times) + "\n")
    print(section)
    if args.write:
        write_section(REPO / "BENCHMARKS.md", args.section, section)
    return section


if __name__ == "__main__":
    sys.exit(main() and 0)
