"""Automatic multi-class segmentation of 2D images: each class's prompt-free mask as it is, or re-decoded with boxes.

    python benchmarks/auto_refine.py --checkpoints RUN_A/models/segmote_latest.pt RUN_B/models/segmote_latest.pt
        [--set acdc] [--fractions 0.25 0.5 1] [--sections validation training test]
        [--write [--section NAME --heading TEXT]]

The checkpoints are class-conditioned models (trained with ``train_class_prompts.json``) of one multi-class set. On
every image of each split, every class is asked for with no prompt (:class:`~segmote_monai.inferers.SliceSegmenter`
with ``auto_classes``) and the label map scored (Dice per class present in the reference, mean over the image's
classes, then over images; the smaller mask wins where two overlap). Settings: each class's prompt-free mask as it
is; ``whole box``: decoded again with the tight box of the whole mask (``auto_refine``), with plain boxes and with
the class given beside the box (``class_boxes``); ``parts >= f + class``: each 4-connected part with at least that
fraction of the largest part's area decoded again with its own tight box and its class, the union kept
(``prompt_free_refine``). The setting is chosen on the validation and training splits; the test split is reported
beside them. Prints a Markdown section (machine, commit, command); ``--write`` puts it in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from accuracy import load_model, shared_cache, volume_loader, zero_shot_model
from benchmark_data import load_splits
from common import REPO, log, provenance, write_section

from segmote_monai.inferers import SliceSegmenter
from segmote_monai.metrics import dice_per_class

MULTI_CLASS = ("acdc",)
TITLES = {"acdc": "ACDC cine-MRI"}


def settings(fractions: list[float]) -> dict[str, dict]:
    """Setting name -> SliceSegmenter keyword arguments."""
    out: dict[str, dict] = {"prompt-free mask": {}, "whole box": {"auto_refine": True},
                            "whole box + class": {"auto_refine": True, "class_boxes": True}}
    out.update({f"parts >= {f:g} + class": {"prompt_free_refine": f} for f in fractions})
    return out


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs="+", type=Path, required=True)
    parser.add_argument("--set", choices=MULTI_CLASS, default="acdc")
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.5, 1.0])
    parser.add_argument("--sections", nargs="+", default=["validation", "training", "test"])
    parser.add_argument("--timed", default="parts >= 0.5 + class", help="the setting whose decoder time is printed")
    parser.add_argument("--section", default="auto_refine", help="the BENCHMARKS.md section --write fills")
    parser.add_argument("--heading", default="Automatic multi-class masks re-decoded with their own boxes, 2D "
                                             "images (issue 11)")
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "benchmarks")
    parser.add_argument("--write", action="store_true", help="put the section in BENCHMARKS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    work = args.work_dir.resolve()
    datalist = load_splits(args.data_root.resolve(), work, (args.set,))[args.set]
    cache = shared_cache(work, zero_shot_model())
    load, classes = volume_loader(datalist), list(datalist.classes)
    names = [datalist.labels[c] for c in classes]
    table = settings(args.fractions)
    # (checkpoint, split, setting) -> per image: {class: Dice}
    scores: dict[tuple[int, str, str], list[dict[int, float]]] = {}
    times: dict[str, list[float]] = {"prompt-free mask": [], args.timed: []}
    for k, checkpoint in enumerate(args.checkpoints):
        model = load_model(checkpoint)
        if not model.class_conditioned:
            raise SystemExit(f"{checkpoint}: not a class-conditioned model (train with train_class_prompts.json)")
        segmenter = SliceSegmenter(model, backbone="lite_medsam", cache=cache)
        for section in args.sections:
            for item in datalist.items(section):
                case = load(item)
                segmenter(case["image"], None, auto_classes=classes)  # cached encoder: the times are the decoder's
                for name, kwargs in table.items():
                    start = time.perf_counter()
                    pred = segmenter(case["image"], None, auto_classes=classes, **kwargs)
                    if name in times:
                        times[name].append(time.perf_counter() - start)
                    scores.setdefault((k, section, name), []).append(dice_per_class(pred, case["label"], classes))
            log(f"{checkpoint} {section}: done")

    def image_mean(per_image: list[dict[int, float]]) -> float:
        return statistics.fmean(statistics.fmean(d.values()) for d in per_image if d)

    def class_mean(per_image: list[dict[int, float]], c: int) -> float:
        values = [d[c] for d in per_image if c in d]
        return statistics.fmean(values) if values else float("nan")

    runs = range(len(args.checkpoints))
    header = ["setting"] + [f"{s} ({len(datalist.items(s))})" for s in args.sections]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(args.sections)]
    for name in table:
        cells = [name]
        for section in args.sections:
            per_run = [image_mean(scores[(k, section, name)]) for k in runs]
            spread = f" ({', '.join(f'{v:.3f}' for v in per_run)})" if len(per_run) > 1 else ""
            cells.append(f"{statistics.fmean(per_run):.3f}{spread}")
        lines.append("| " + " | ".join(cells) + " |")
    per_class = ["| split | setting | " + " | ".join(names) + " | mean |", "|---|---|" + "---:|" * (len(names) + 1)]
    for section in args.sections:
        for name in table:
            values = [statistics.fmean(class_mean(scores[(k, section, name)], c) for k in runs) for c in classes]
            mean = statistics.fmean(image_mean(scores[(k, section, name)]) for k in runs)
            per_class.append(f"| {section} | {name} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {mean:.3f} |")
    body = (
        f"## {args.heading}\n\n"
        + provenance()
        + "\n- checkpoints: " + ", ".join(f"`{c}`" for c in args.checkpoints) + "\n\n"
        f"{TITLES[args.set]}, no prompt: every class asked for on every image; Dice on the label map per class present "
        "in the reference, mean over the image's classes, then over images; mean over the checkpoints, in parentheses "
        "each one's. `whole box`: each class's mask decoded again with the tight box of the whole mask "
        "(`auto_refine`); `parts >= f`: each 4-connected part with at least that fraction of the largest part's "
        "area decoded again with its own tight box, the union kept (`prompt_free_refine`); `+ class`: the class "
        "given beside the box (`prompt_free_refine` always gives it).\n\n"
        + "\n".join(lines)
        + "\n\nPer class, mean over the checkpoints:\n\n"
        + "\n".join(per_class)
        + f"\n\nDecoder time per image with the encoder's output cached (median over {len(times['prompt-free mask'])} "
        f"calls): {statistics.median(times['prompt-free mask']) * 1000:.0f} ms prompt-free, "
        f"{statistics.median(times[args.timed]) * 1000:.0f} ms `{args.timed}`."
    )
    print(body)
    if args.write:
        write_section(REPO / "BENCHMARKS.md", args.section, body)
    return body


if __name__ == "__main__":
    main()
