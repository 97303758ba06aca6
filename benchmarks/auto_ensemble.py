"""Automatic multi-class segmentation by several trained heads over one frozen encoder, against one head.

    python benchmarks/auto_ensemble.py --group RUN_A/models/segmote_latest.pt RUN_B/models/segmote_latest.pt \
        --group RUN_C/models/segmote_latest.pt [--set acdc] [--sections validation test] [--write]

SegMoTE's encoder is frozen, so heads trained from the same backbone (other seeds, recipes or budgets) can share one
encoder pass and average their mask logits: the question is whether such an ensemble reaches what one head does not,
and whether it does more than the training it adds. Each ``--group`` is scored as one model: one checkpoint alone,
several as an ensemble (mask logits and predicted IoU averaged over the heads). The training each group used is read
from the ``done.json`` that ``benchmarks/training.py`` writes beside each run (epochs x samples per epoch, summed over
the heads), so groups of equal training can be compared. No prompt: every class asked for on every image of each
split, each class's parts re-decoded with their own boxes and the class (``prompt_free_refine``, the bundle's
default). Dice on the label map per class present in the reference, mean over the image's classes, then over images.
Prints a Markdown section (machine, commit, command); ``--write`` puts it in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch
from accuracy import load_model, shared_cache, volume_loader, zero_shot_model
from benchmark_data import load_splits
from common import REPO, log, provenance, write_section
from training import EVAL_REFINE

from segmote_monai.inferers import SliceSegmenter
from segmote_monai.metrics import dice_per_class
from segmote_monai.networks.segmote import SegMoTE, SegMoTEOutput

TITLES = {"acdc": "ACDC cine-MRI"}


class HeadEnsemble(torch.nn.Module):
    """Several SegMoTE heads over the first one's frozen encoder; ``predict`` averages their outputs.

    The heads must share the encoder's weights (trained from the same backbone): a head decodes the embedding it was
    trained on, so an ensemble over different encoders is refused.
    """

    def __init__(self, *, heads: Sequence[SegMoTE]) -> None:
        super().__init__()
        if len(heads) < 2:
            raise ValueError(f"an ensemble needs at least 2 heads, got {len(heads)}")
        first = heads[0].image_encoder.state_dict()
        for k, head in enumerate(heads[1:], start=1):
            other = head.image_encoder.state_dict()
            if other.keys() != first.keys() or any(not torch.equal(other[n], first[n]) for n in first):
                raise ValueError(f"head {k} has another image encoder than head 0; the heads must share one")
            if head.class_conditioned != heads[0].class_conditioned:
                raise ValueError(f"head {k} class_conditioned={head.class_conditioned}, head 0 "
                                 f"{heads[0].class_conditioned}")
        self.heads = torch.nn.ModuleList(heads)
        # what SliceSegmenter reads from a model
        self.decoder, self.ppt, self.img_size = heads[0].decoder, heads[0].ppt, heads[0].img_size
        self.class_conditioned = heads[0].class_conditioned

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, D, h, w], the shared encoder's output."""
        return self.heads[0].embed_images(images)

    def predict(self, **kwargs) -> SegMoTEOutput:
        """:meth:`SegMoTE.predict` of every head on the same arguments; masks [N, 1, H, W], low-resolution masks and
        IoU predictions averaged (presence logits too where every head has them)."""
        outputs = [head.predict(**kwargs) for head in self.heads]

        def mean(name: str) -> torch.Tensor | None:
            values = [getattr(o, name) for o in outputs]
            return None if any(v is None for v in values) else torch.stack(values).mean(0)

        return SegMoTEOutput(masks=mean("masks"), low_res_masks=mean("low_res_masks"),
                             iou_predictions=mean("iou_predictions"), presence_logits=mean("presence_logits"))


def training_samples(checkpoint: Path) -> int | None:
    """Epochs x samples per epoch of the run that wrote ``checkpoint``, from its ``done.json``; None if unknown."""
    done = checkpoint.parent.parent / "done.json"
    if not done.is_file():
        return None
    command = json.loads(done.read_text())["command"]
    value = {key: command[i + 1] for i, key in enumerate(command[:-1]) if key.startswith("--")}
    return int(value["--max_epochs"]) * int(value["--samples_per_epoch"])


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", nargs="+", type=Path, action="append", required=True,
                        help="checkpoints scored as one model (one: alone; several: their heads averaged)")
    parser.add_argument("--set", choices=sorted(TITLES), default="acdc")
    parser.add_argument("--sections", nargs="+", default=["validation", "test"])
    parser.add_argument("--refine", type=float, default=EVAL_REFINE,
                        help="prompt_free_refine (evaluate.json's eval_prompt_free_refine)")
    parser.add_argument("--section", default="auto_ensemble", help="the BENCHMARKS.md section --write fills")
    parser.add_argument("--heading", default="Automatic multi-class segmentation: several heads over one encoder "
                                             "(issue 11)")
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
    loaded: dict[Path, SegMoTE] = {}

    def model_of(group: list[Path]) -> torch.nn.Module:
        for path in group:
            if path not in loaded:
                loaded[path] = load_model(path)
                if not loaded[path].class_conditioned:
                    raise SystemExit(f"{path}: not a class-conditioned model (train with train_class_prompts.json)")
        return loaded[group[0]] if len(group) == 1 else HeadEnsemble(heads=[loaded[p] for p in group])

    header = "| group | heads | training samples | split | " + " | ".join(names) + " | mean |"
    rows = [header, "|---|---:|---:|---|" + "---:|" * (len(names) + 1)]
    for number, group in enumerate(args.group, start=1):
        segmenter = SliceSegmenter(model_of(group), backbone="lite_medsam", cache=cache)
        budgets = [training_samples(p) for p in group]
        budget = "unknown" if None in budgets else f"{sum(budgets)}"
        for section in args.sections:
            per_image = []
            for item in datalist.items(section):
                case = load(item)
                pred = segmenter(case["image"], None, auto_classes=classes, prompt_free_refine=args.refine)
                per_image.append(dice_per_class(pred, case["label"], classes))
            per_class = [statistics.fmean(d[c] for d in per_image if c in d) for c in classes]
            mean = statistics.fmean(statistics.fmean(d.values()) for d in per_image if d)
            rows.append(f"| {number} | {len(group)} | {budget} | {section} ({len(per_image)}) | "
                        + " | ".join(f"{v:.3f}" for v in per_class) + f" | {mean:.3f} |")
            log(f"group {number} {section}: {mean:.3f}")
    groups = "\n".join(f"  {n}. " + ", ".join(f"`{p}`" for p in g) for n, g in enumerate(args.group, start=1))
    body = (
        f"## {args.heading}\n\n"
        + provenance()
        + f"\n- groups (one checkpoint: alone; several: their heads averaged over one encoder pass):\n{groups}\n\n"
        f"{TITLES[args.set]}, no prompt: every class asked for on every image, each class's parts re-decoded with "
        f"their own boxes and the class (prompt_free_refine {args.refine:g}); Dice on the label map per class present "
        "in the reference, mean over the image's classes, then over images. Training samples: epochs x samples per "
        "epoch, summed over the group's heads (from each run's done.json).\n\n"
        + "\n".join(rows)
    )
    print(body)
    if args.write:
        write_section(REPO / "BENCHMARKS.md", args.section, body)
    return body


if __name__ == "__main__":
    main()
