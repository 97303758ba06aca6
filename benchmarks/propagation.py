"""One key-slice box (or one 3D box) per organ, propagated through the volume, against a box on every slice.

    python benchmarks/propagation.py [--cases 10 21] [--data_dir DIR] [--margins 0] [--overlaps 0.7]
        [--growths none 0.1] [--shifts none 2] [--tapers none 0.7] [--agreements none 0.3] [--reboxes none 0.9]
        [--exclusives no yes] [--rebox_touching yes no] [--rebox_key_slices yes no] [--anchors no yes] [--cache_dir DIR]
        [--timing [--timing_reboxes none 0.9] [--timing_seeds 3d key]] [--write [--section NAME]]

The shipped CHAOS checkpoint (``bundle/models/model.pt``), by default on the embedded test patients 10 and 21
(``--data_dir ../shared/data/mri_abdomen_chaos_t2 --cases 02 01 03 05``: the patients the stopping rule was tuned
on, the validation patient and three training patients). The seed of each organ is its largest slice with that
slice's tight box, what a reader would draw, or its 3D bounding box (what a user draws in MONAI Label), propagated
from its middle slice within itself; rows for a box on every slice and for the 3D box on every slice it spans
compare. ``--agreements``: with a value, the organs' prompt-free masks are the walks' second opinion, as the bundle
does for a class-conditioned model (``prompt_free_agreement``); ``--reboxes``: with a value, where a walk's mask
has a predicted IoU below it, the box of the organ's prompt-free mask near the previous mask is tried too
(``prompt_free_rebox``; for key-slice seeds too unless ``--rebox_key_slices no``, as the bundle since 0.6.7);
``--exclusives yes``: each slice's prompt-free masks decoded for every organ, a pixel to the highest logit (the
bundle decodes the walk's organ alone); ``--rebox_touching no``: the rebox box from all of the prompt-free mask near
the previous mask, not only its parts that touch it; ``--anchors yes``: a tapering organ's box narrowed from the
edges that receded (``propagate(anchor=True)``) rather than about its centre.
``--timing`` times ``--timing_seeds`` (3D boxes, key-slice boxes; the defaults, prompt-free agreement 0.3) with each
``--timing_reboxes``. 3D Dice
per organ and the slices each propagation reached against the slices the organ is on (issue 11).
Prints a Markdown section (machine, commit, command, figures); ``--write`` puts it in BENCHMARKS.md (section
``propagation``, or ``propagation_tuning`` with another ``--data_dir``; ``--section``, ``--heading`` name it).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, provenance, write_section
from monai.transforms import Compose

from segmote_monai.data.cache import EmbeddingCache
from segmote_monai.data.slicing import volume_to_slices
from segmote_monai.inferers import SliceSegmenter, prompts_from_label
from segmote_monai.inferers.prompt_free import second_opinion
from segmote_monai.inferers.propagation import PropagationSeed, propagate
from segmote_monai.networks import build_from_checkpoint
from segmote_monai.transforms import LoadPaird, ScaleIntensityByModalityd
from segmote_monai.transforms.array import box_of_mask

BUNDLE = REPO / "bundle"
ORGANS = {1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen"}


def seeds_of(label: torch.Tensor) -> list[PropagationSeed]:
    seeds = []
    for c in ORGANS:
        z = int((label[0] == c).sum(dim=(0, 1)).argmax())
        ys, xs = torch.nonzero(label[0, :, :, z] == c, as_tuple=True)
        seeds.append(PropagationSeed(c, z, (xs.min().item(), ys.min().item(), xs.max().item(), ys.max().item())))
    return seeds


def boxes_3d(label: torch.Tensor) -> dict[int, tuple[tuple[float, float, float, float], int, int]]:
    """Per organ, its 3D bounding box as a user or MONAI Label gives it: (x0, y0, x1, y1) on every slice, z0, z1."""
    out = {}
    for c in ORGANS:
        ys, xs, zs = torch.nonzero(label[0] == c, as_tuple=True)
        out[c] = (xs.min().item(), ys.min().item(), xs.max().item(), ys.max().item()), zs.min().item(), zs.max().item()
    return out


def prompts_3d(label: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    per_slice = [([], []) for _ in range(label.shape[-1])]
    for c, (box, z0, z1) in boxes_3d(label).items():
        for z in range(z0, z1 + 1):
            per_slice[z][0].append(list(box))
            per_slice[z][1].append(c)
    return [(torch.tensor(b, dtype=torch.float32).reshape(-1, 4), torch.tensor(c, dtype=torch.long))
            for b, c in per_slice]


def seeds_3d(label: torch.Tensor) -> list[PropagationSeed]:
    """What the bundle makes of a propagated 3D box: its middle slice, its range, its extent as bounds."""
    return [PropagationSeed(c, (z0 + z1) // 2, box, z0, z1, within_box=True)
            for c, (box, z0, z1) in boxes_3d(label).items()]


def dice(pred: torch.Tensor, label: torch.Tensor, c: int) -> float:
    p, t = pred == c, label == c
    return 2 * (p & t).sum().item() / max(p.sum().item() + t.sum().item(), 1)


def walk(segmenter: SliceSegmenter, image: torch.Tensor, seeds: list[PropagationSeed], agreement: float | None,
         rebox: float | None = None, exclusive: bool = False, **options) -> tuple[torch.Tensor, dict[int, list[int]]]:
    """``propagate`` as the bundle runs it for a class-conditioned model: with the organs' prompt-free masks as
    the second opinion (decoded where a walk asks) unless ``agreement`` and ``rebox`` are both None."""
    embeddings: dict[int, torch.Tensor] = {}
    opinion = second_opinion(segmenter, image, list(ORGANS), embeddings=embeddings, agreement=agreement, rebox=rebox,
                             exclusive=exclusive)
    return propagate(segmenter, image, seeds, embeddings=embeddings, **options, **opinion)


def timing(model, image: torch.Tensor, seeds: list[PropagationSeed], rounds: int = 3, agreement: float | None = 0.3,
           rebox: float | None = 0.9, exclusive: bool = False) -> tuple[list[tuple[float, float]], int]:
    """Seconds of one propagation of ``seeds`` (defaults, the bundle's prompt-free ``agreement`` and ``rebox``,
    nothing cached) and of the model's own compute for
    the same work: the slices propagation encoded, each with one box per structure it found there (a whole-slice
    box on a slice where a walk stopped), through :class:`SliceSegmenter`. After one slice encoded and decoded
    untimed (the first calls of a process are slower), ``rounds`` rounds, the order swapped from one to the next;
    returns the (propagation, own) pairs and the number of slices encoded."""
    segmenter = SliceSegmenter(model, backbone="lite_medsam")
    slices = volume_to_slices(image)
    encoded: list[int] = []
    preprocess = segmenter.preprocess

    def recording(image_slice):
        encoded.append(next(z for z in range(len(slices)) if torch.equal(slices[z], image_slice)))
        return preprocess(image_slice)

    def timed_propagation() -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        pred, _ = walk(segmenter, image, seeds, agreement, rebox, exclusive)
        return time.perf_counter() - start, pred

    segmenter(slices[:1].movedim(0, -1), [(torch.tensor([[0.0, 0.0, 8.0, 8.0]]), torch.tensor([1]))])
    segmenter.preprocess = recording
    first, pred = timed_propagation()
    segmenter.preprocess = preprocess
    h, w = slices.shape[-2:]
    prompts = []
    for z in range(len(slices)):
        found = [c for c in ORGANS if (pred[0, ..., z] == c).any()] if z in encoded else []
        boxes = [box_of_mask(pred[0, ..., z] == c).tolist() for c in found]
        if z in encoded and not found:
            boxes, found = [[0.0, 0.0, w - 1.0, h - 1.0]], [1]
        prompts.append((torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(found, dtype=torch.long)))

    def timed_own() -> float:
        start = time.perf_counter()
        segmenter(image, prompts)
        return time.perf_counter() - start

    pairs = [(first, timed_own())]
    for r in range(1, rounds):
        if r % 2:
            own = timed_own()
            pairs.append((timed_propagation()[0], own))
        else:
            propagated = timed_propagation()[0]
            pairs.append((propagated, timed_own()))
    return pairs, len(encoded)


def _optional(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def _yes(text: str) -> bool:
    if text.lower() not in ("yes", "no"):
        raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")
    return text.lower() == "yes"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["10", "21"])
    parser.add_argument("--data_dir", default=str(BUNDLE / "data/chaos_t2"),
                        help="CHAOS images/ and labels/ (../shared/data/mri_abdomen_chaos_t2 for the tuning patients)")
    parser.add_argument("--margins", nargs="+", type=float, default=[0.0])
    parser.add_argument("--overlaps", nargs="+", type=float, default=[0.7])
    parser.add_argument("--growths", nargs="+", type=_optional, default=[None, 0.1], help="max_growth (none: off)")
    parser.add_argument("--shifts", nargs="+", type=_optional, default=[None, 2.0], help="max_shift (none: off)")
    parser.add_argument("--tapers", nargs="+", type=_optional, default=[None, 0.7],
                        help="taper: the narrowest a box is made where the organ tapers (none: off)")
    parser.add_argument("--follows", nargs="+", type=_optional, default=[None],
                        help="follow: how far each box edge continues its mask's last step (none: off)")
    parser.add_argument("--agreements", nargs="+", type=_optional, default=[None],
                        help="prompt-free agreement: a walk goes on where the prompt-free mask agrees (none: off)")
    parser.add_argument("--reboxes", nargs="+", type=_optional, default=[None],
                        help="rebox_below: the predicted IoU under which the prompt-free mask's box is tried too")
    parser.add_argument("--exclusives", nargs="+", type=_yes, default=[False],
                        help="yes: a pixel several classes' prompt-free masks claim goes to the highest logit (every "
                             "class decoded where one is read); no (the bundle's): only the walk's class decoded")
    parser.add_argument("--rebox_touching", nargs="+", type=_yes, default=[True],
                        help="yes (the bundle's): the rebox takes only the parts of the prompt-free mask that touch "
                             "the previous mask; no: all of it within the window")
    parser.add_argument("--anchors", nargs="+", type=_yes, default=[False],
                        help="narrow a tapering box from the edges that receded (yes) or about its centre (no)")
    parser.add_argument("--heading", default=None, help="the section's heading (default: from --data_dir)")
    parser.add_argument("--rebox_key_slices", nargs="*", type=_yes, default=[True],
                        help="yes (the bundle's since 0.6.7; also the flag alone): rebox key-slice seeds as well as "
                             "3D boxes; no: 3D boxes only")
    parser.add_argument("--cache_dir", default=None,
                        help="keep the slices' encodings here between runs (default: a temporary folder)")
    parser.add_argument("--timing", action="store_true", help="also time propagation against the model's compute")
    parser.add_argument("--timing_reboxes", nargs="+", type=_optional, default=[0.9],
                        help="rebox_below values to time (none: off; the bundle's is 0.9)")
    parser.add_argument("--timing_seeds", nargs="+", choices=["3d", "key"], default=["3d"],
                        help="the seeds to time: each organ's 3D box, or its key-slice box")
    parser.add_argument("--write", action="store_true", help="put the section in BENCHMARKS.md")
    parser.add_argument("--section", default=None,
                        help="the section's name (default propagation, or propagation_tuning with another --data_dir)")
    args = parser.parse_args(argv)
    args.rebox_key_slices = args.rebox_key_slices or [True]
    model = build_from_checkpoint(trainable_checkpoint=BUNDLE / "models" / "model.pt", backbone="lite_medsam").eval()
    load = Compose([LoadPaird(label_values=[0, *ORGANS]), ScaleIntensityByModalityd(keys="image", modality="MR")])
    rows = ["| patient | prompts | " + " | ".join(ORGANS.values()) + " | mean | slices reached / on (per organ) | s |",
            "|---|---|" + "---:|" * (len(ORGANS) + 1) + "---|---:|"]
    times = ["| patient | seeds | rebox_below | round | slices encoded | propagation s | the model's own compute s "
             "| ratio |", "|---|---|---|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache.for_model(args.cache_dir or tmp, model,
                                         {"size": 256, "scaling": "modality", "slice_axis": "axial"})
        segmenter = SliceSegmenter(model, backbone="lite_medsam", cache=cache)
        for case in args.cases:
            name = f"chaos_t2_case{case}.nii.gz"
            data = load({"image": str(Path(args.data_dir) / "images" / name),
                         "label": str(Path(args.data_dir) / "labels" / name)})
            image, label = data["image"], data["label"]
            on = {c: int((label[0] == c).any(0).any(0).sum()) for c in ORGANS}
            start = time.perf_counter()
            every = segmenter(image, prompts_from_label(label, list(ORGANS)))
            scores = [dice(every, label, c) for c in ORGANS]
            rows.append(f"| {case} | a box on every slice | " + " | ".join(f"{d:.3f}" for d in scores)
                        + f" | {np.mean(scores):.3f} | {', '.join(str(on[c]) for c in ORGANS)} (all) "
                        f"| {time.perf_counter() - start:.0f} |")
            start = time.perf_counter()
            scores = [dice(segmenter(image, prompts_3d(label)), label, c) for c in ORGANS]
            rows.append(f"| {case} | a 3D box per organ (on every slice it spans) | "
                        + " | ".join(f"{d:.3f}" for d in scores) + f" | {np.mean(scores):.3f} | - "
                        f"| {time.perf_counter() - start:.0f} |")
            for (margin, overlap, growth, shift, taper, follow, agreement, rebox, exclusive,
                 touching, key_rebox, anchor) in itertools.product(
                    args.margins, args.overlaps, args.growths, args.shifts, args.tapers, args.follows, args.agreements,
                    args.reboxes, args.exclusives, args.rebox_touching, args.rebox_key_slices,
                    args.anchors):
                if rebox is None and (touching, key_rebox) != (args.rebox_touching[0], args.rebox_key_slices[0]):
                    continue  # without a rebox neither the bound nor the key slices' rebox changes anything
                extra = "".join(f", {name} {value:g}" for name, value in (("max_growth", growth), ("max_shift", shift),
                                                                          ("taper", taper), ("follow", follow),
                                                                          ("prompt-free agreement", agreement),
                                                                          ("rebox_below", rebox))
                                if value is not None)
                extra += ", prompt-free masks per class" if not exclusive and (agreement, rebox) != (None, None) else ""
                extra += ", rebox not touching" if rebox is not None and not touching else ""
                extra += ", narrowed from the receding edges" if anchor else ""
                kinds = [("key slice" + ("" if key_rebox or rebox is None else " (not reboxed)"), seeds_of(label))]
                if key_rebox == args.rebox_key_slices[0]:
                    kinds.append(("3D box, propagated", seeds_3d(label)))  # the option leaves 3D boxes as they are
                for kind, seeds in kinds:
                    start = time.perf_counter()
                    pred, reached = walk(segmenter, image, seeds, agreement, rebox, exclusive, margin=margin,
                                         min_overlap=overlap, max_growth=growth, max_shift=shift, taper=taper,
                                         follow=follow, rebox_key_slices=key_rebox,
                                         rebox_touching=touching, anchor=anchor)
                    scores = [dice(pred, label, c) for c in ORGANS]
                    span = ", ".join(f"{len(reached.get(c, []))}/{on[c]}" for c in ORGANS)
                    rows.append(f"| {case} | {kind}, margin {margin:g}, min_overlap {overlap:g}{extra} | "
                                + " | ".join(f"{d:.3f}" for d in scores) + f" | {np.mean(scores):.3f} | {span} "
                                f"| {time.perf_counter() - start:.0f} |")
                    print(rows[-1], flush=True)
            if args.timing:
                for kind, rebox, exclusive in itertools.product(args.timing_seeds, args.timing_reboxes,
                                                                args.exclusives):
                    seeds = seeds_3d(label) if kind == "3d" else seeds_of(label)
                    pairs, count = timing(model, image, seeds, rebox=rebox, exclusive=exclusive)
                    setting = f"{rebox if rebox is not None else 'off'}{'' if exclusive else ', per class'}"
                    for r, (propagated, own) in enumerate(pairs, 1):
                        times.append(f"| {case} | {'3D box' if kind == '3d' else 'key slice'} | {setting} | {r} "
                                     f"| {count} "
                                     f"| {propagated:.1f} | {own:.1f} | {propagated / own:.2f} |")
                        print(times[-1], flush=True)
    tuning = Path(args.data_dir).resolve() != (BUNDLE / "data/chaos_t2").resolve()
    heading = ("## One key-slice box or one 3D box per organ, propagated (issue 11)" if not tuning else
               f"## Propagation: tuning on patients {', '.join(args.cases)} (issue 11)")
    heading = f"## {args.heading}" if args.heading else heading
    section = (heading + "\n\n" + provenance()
               + "\n\nShipped CHAOS checkpoint; seeds: each organ's largest slice and its tight box (key slice), or "
               "its 3D bounding box propagated from its middle slice within itself (3D box); 3D Dice on the label "
               "map. `propagate`'s defaults: margin 0 (chosen on patient 10), max_growth 0.1 and max_shift 2 "
               "(chosen on patients 02, 01, 03, 05 with min_overlap 0.7: section `propagation_tuning`), taper 0.7 "
               "and min_overlap 0.6 (chosen on the same patients: section `propagation_taper`). `prompt-free "
               "agreement 0.3`: the organs' prompt-free masks (the shipped checkpoint is class-conditioned) are the "
               "walks' second opinion, a walk that would stop for `min_overlap` goes on where the class's prompt-free "
               "mask agrees with its new mask (IoU >= 0.3), what the bundle does since 0.6.4 (chosen on the same "
               "patients: section `propagation_second_opinion`). `rebox_below 0.9`: where a walk's mask has a "
               "predicted IoU below 0.9, the box of the organ's prompt-free mask near the previous mask is decoded too "
               "and the mask with the higher predicted IoU kept, what the bundle does since 0.6.5 (`prompt_free_rebox`,"
               " chosen on the same patients: section `propagation_rebox`), for 3D boxes and, since 0.6.7, key-slice "
               "boxes (a key-slice row marked `not reboxed`: 3D boxes only, as before). Issue 11's target: "
               "within 0.03 of a box on every slice. Times include "
               "encoding only where the slice was not yet cached (the per-slice row encodes every slice first)."
               "\n\n" + "\n".join(rows) + "\n")
    if args.timing:
        section += ("\nTime, nothing cached (the seeds as given, the defaults, prompt-free agreement 0.3, "
                    "rebox_below as given): one "
                    "propagation against the model's own "
                    "compute for the same work (the slices it encoded, each once, with one box per structure found "
                    "there, through `SliceSegmenter`), after one slice segmented untimed, in three rounds, "
                    "propagation first in rounds 1 and 3, last in round 2. Issue 11's target: at most 1.15."
                    "\n\n" + "\n".join(times) + "\n")
    print(section)
    if args.write:
        write_section(REPO / "BENCHMARKS.md", args.section or ("propagation_tuning" if tuning else "propagation"),
                      section)
    return section


if __name__ == "__main__":
    sys.exit(main() and 0)
