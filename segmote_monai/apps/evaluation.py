"""The bundle's ``evaluating`` workflow: SegMoTE against the frozen backbone alone, on the same data and the
same boxes, in one run.

Settings per volume or image: boxes from its label per slice and class, tight and jittered (each side moved
by up to a fraction of the box size, seeded); prompt-free (PPT) on binary tasks. Dice per volume and class,
scored two ways from the same predictions: ``label_map``, on the reassembled label map (where two classes'
masks overlap, the label map's rule decides: what a user gets), and ``own_mask``, each class on the mask its
own prompts gave (the paper's protocol). Writes ``metrics.json`` (means with bootstrap 95% intervals over
cases, per scoring, setting, model, class and modality; and every case) and ``metrics.csv`` (one row per
case, setting, model, class and scoring), both atomically.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from segmote_monai.atomic import atomic_path
from segmote_monai.data.cache import EmbeddingCache
from segmote_monai.data.datalist import Datalist
from segmote_monai.distributed import rank_and_world
from segmote_monai.errors import InputFileError, RequestError
from segmote_monai.inferers.slices import SliceSegmenter, automatic_refine, check_options, prompts_from_label
from segmote_monai.metrics import dice_per_class
from segmote_monai.networks.decoder import MoTEMaskDecoder
from segmote_monai.networks.segmote import SegMoTE

__all__ = ["BundleEvaluation", "bootstrap_interval", "zero_shot_like"]

logger = logging.getLogger(__name__)


def zero_shot_like(model: SegMoTE) -> SegMoTE:
    """The frozen backbone alone (experts off, no PPT), sharing ``model``'s frozen parts.

    Refused for a model whose SAM decoder was trained: its original weights are not in memory any more;
    build the baseline from the backbone instead.
    """
    if model.train_decoder:
        raise ValueError("zero_shot_like needs a model with a frozen SAM decoder (train_decoder=False)")
    decoder = MoTEMaskDecoder(mask_decoder=model.decoder.mask_decoder, num_expert_tokens=0)
    return SegMoTE(image_encoder=model.image_encoder, prompt_encoder=model.prompt_encoder, decoder=decoder,
                   backbone_name=model.backbone_name, backbone_sha256=model.backbone_sha256).eval()


def bootstrap_interval(values: Sequence[float], *, samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean over cases."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return (float(values.mean()), float(values.mean())) if len(values) else (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (samples, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


class BundleEvaluation:
    """Evaluates ``network`` and its baselines (by default the zero-shot backbone) on one datalist section.

    Args:
        network: the trained SegMoTE.
        datalist: the :class:`Datalist`; its ``section`` is evaluated.
        load: the volume pre-processing (``LoadPaird`` + ``ScaleIntensityByModalityd``).
        backbone: the backbone's name (its normalisation).
        output_dir: where ``metrics.json`` / ``metrics.csv`` go.
        jitters: box settings (0 = tight).
        baselines: name -> model evaluated on the same data and boxes; ``None`` is ``{"zero_shot":
            zero_shot_like(network)}``, ``{}`` none.
        prompt_free: also score the network with no prompt: PPT on a binary task, or, for a model trained with
            class-conditioned PPT (``class_prompts``), every class asked for on every slice (automatic
            multi-class segmentation per slice; the inference's ``auto_propagate``, seeds propagated through the
            volume, is scored by ``benchmarks/auto.py``). ``None``: whenever the network can.
        prompt_free_refine: the prompt-free rows' parts (each class's, for automatic rows of 2D images) re-decoded
            with their own boxes, as the inference's ``prompt_free_refine`` does (None: the prompt-free masks as they
            are, what ``benchmarks/run.py`` scores).
        overlap: the label map's rule where two classes' masks overlap
            (:func:`~segmote_monai.inferers.merge_masks`).
        class_boxes: give the network each box's class (class-aware prompts; a class-conditioned model only).
            Baselines get the boxes alone.
        class_offset: what to add to the datalist's label values to get the network's class ids (for
            ``class_boxes`` and the automatic rows): 0 for a model trained on this datalist alone; a model trained
            on several numbers each one's classes from its offset; None: the network has no ids for this
            datalist's classes (no automatic rows; ``class_boxes`` refused).
            :func:`~segmote_monai.data.joint.class_offset` reads it from the checkpoint's metadata.
        checkpoint: the network's trainable checkpoint file, named in refusals that depend on the model.
    """

    def __init__(
        self,
        *,
        network: SegMoTE,
        datalist: Datalist,
        load: Callable[[dict], dict],
        backbone: str,
        output_dir: str | os.PathLike,
        section: str = "test",
        jitters: Sequence[float] = (0.0, 0.1),
        seed: int = 0,
        cache: EmbeddingCache | None = None,
        slice_batch_size: int = 8,
        baselines: Mapping[str, SegMoTE] | None = None,
        prompt_free: bool | None = None,
        prompt_free_refine: float | None = None,
        overlap: str = "smaller",
        class_boxes: bool = False,
        class_offset: int | None = 0,
        checkpoint: str | os.PathLike | None = None,
    ) -> None:
        self.network = network
        self.datalist = datalist
        self.load = load
        self.backbone = backbone
        self.output_dir = Path(output_dir)
        self.section = section
        self.jitters = [float(j) for j in jitters]
        self.seed = seed
        self.cache = cache
        self.slice_batch_size = slice_batch_size
        self.overlap = overlap
        if baselines is not None and "segmote" in baselines:
            raise ValueError(f"'segmote' names the evaluated network; baselines need other names, got "
                             f"{list(baselines)}")
        self.baselines = dict(baselines) if baselines is not None else {"zero_shot": zero_shot_like(network)}
        where = f"{checkpoint}: " if checkpoint is not None else ""
        if class_boxes and not network.class_conditioned:
            raise RequestError(f"{where}class_boxes needs a model trained with class-conditioned PPT "
                               "(class_prompts); this one has none")
        if class_boxes and class_offset is None:
            raise RequestError(f"{where}class_boxes: the model was trained on other datalists than "
                               f"{datalist.name!r} (its metadata names no part with these classes)")
        self.class_boxes = bool(class_boxes)
        self.class_offset = class_offset or 0
        # a class-conditioned model segments a multi-class datalist with no prompt by asking for each class
        self.auto = datalist.task != "binary" and network.class_conditioned and class_offset is not None
        can = (datalist.task == "binary" and network.ppt is not None) or self.auto
        if prompt_free and not can:
            raise RequestError(f"{where}prompt-free evaluation needs PPT on a binary task or class-conditioned PPT; "
                               f"task is {datalist.task!r}, PPT {'on' if network.ppt is not None else 'off'}, class "
                               f"conditioning {'on' if network.class_conditioned else 'off'}")
        self.prompt_free = can if prompt_free is None else bool(prompt_free)
        check_options(refine=prompt_free_refine)
        self.prompt_free_refine = prompt_free_refine

    def _scores(self, model: SegMoTE, case: dict, prompts: Any) -> list[tuple[str, int, float]]:
        """(scoring, class, Dice) for every class present in the case's label."""
        segmenter = SliceSegmenter(model, backbone=self.backbone, cache=self.cache, batch_size=self.slice_batch_size,
                                   overlap=self.overlap)
        beside = prompts is not None and self.datalist.task == "binary" and getattr(model, "ppt_beside_prompts", False)
        own_model = model is self.network
        refine = automatic_refine(case["image"], self.prompt_free_refine) if self.auto else self.prompt_free_refine
        labels, own = segmenter(case["image"], prompts, prompt_free_class=self.datalist.classes[0], class_masks=True,
                                ppt_beside_boxes=beside, class_boxes=own_model and self.class_boxes,
                                auto_classes=self.datalist.classes if own_model and self.auto else None,
                                class_offset=self.class_offset if own_model else 0,
                                prompt_free_refine=refine if own_model and prompts is None else None)
        out = [("label_map", c, d) for c, d in dice_per_class(labels, case["label"], self.datalist.classes).items()]
        for c in self.datalist.classes:
            truth = case["label"] == c
            if truth.any():
                pred = own[c] if c in own else torch.zeros_like(truth)
                out.append(("own_mask", c, float(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))))
        return out

    def run(self) -> dict[str, Any]:
        """Evaluates every item (under torch.distributed, each rank a shard; rank 0 writes the files)."""
        items = self.datalist.items(self.section)
        if not items:
            raise ValueError(f"{self.datalist.path}: no '{self.section}' items to evaluate")
        rank, world = rank_and_world()
        models = {"segmote": self.network.eval(), **{k: m.eval() for k, m in self.baselines.items()}}
        classes = self.datalist.classes
        rows = []
        for index, item in enumerate(tqdm(items[rank::world], desc="evaluating", unit="volume", disable=rank > 0)):
            case = self.load(item)
            name = str(item.get("patient", index * world + rank))
            if not case["label"].any():
                logger.warning("'%s' item %d has an empty label: nothing to prompt or score, left out", self.section,
                               index * world + rank)
                continue
            settings = [(f"box_jitter_{j:g}" if j else "box_tight", prompts_from_label(
                case["label"], classes, jitter=j, seed=self.seed)) for j in self.jitters]
            for setting, prompts in settings:
                for model_name, model in models.items():
                    rows += [(name, item["modality"], setting, model_name, c, d, scoring)
                             for scoring, c, d in self._scores(model, case, prompts)]
            if self.prompt_free:
                rows += [(name, item["modality"], "prompt_free", "segmote", c, d, scoring)
                         for scoring, c, d in self._scores(self.network, case, None)]
        if world > 1:
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        if not rows:
            raise InputFileError(self.datalist.path,
                                 f"every '{self.section}' item has an empty label: nothing to score")
        summary = self._summarise(rows)
        if rank == 0:
            self._write(rows, summary)
        return summary

    def _summarise(self, rows: list[tuple]) -> dict[str, Any]:
        names = self.datalist.labels
        groups: dict[tuple, list[float]] = defaultdict(list)
        per_case: dict[tuple, list[float]] = defaultdict(list)
        for case, modality, setting, model, c, dice, scoring in rows:
            groups[(scoring, setting, model, names[c], modality)].append(dice)
            per_case[(scoring, setting, model, case)].append(dice)
        by_mean: dict[tuple, list[float]] = defaultdict(list)
        for (scoring, setting, model, _), values in per_case.items():
            by_mean[(scoring, setting, model)].append(float(np.mean(values)))
        summary: dict[str, Any] = {"section": self.section, "cases": len({r[0] for r in rows}), "overlap": self.overlap,
                                   "results": []}
        for (scoring, setting, model, label, modality), values in sorted(groups.items()):
            low, high = bootstrap_interval(values, seed=self.seed)
            summary["results"].append({"scoring": scoring, "setting": setting, "model": model, "class": label,
                                       "modality": modality, "mean_dice": float(np.mean(values)),
                                       "ci95": [low, high], "n": len(values)})
        for (scoring, setting, model), values in sorted(by_mean.items()):
            low, high = bootstrap_interval(values, seed=self.seed)
            summary["results"].append({"scoring": scoring, "setting": setting, "model": model,
                                       "class": "mean over classes", "modality": "all",
                                       "mean_dice": float(np.mean(values)), "ci95": [low, high], "n": len(values)})
        summary["per_case"] = [{"case": r[0], "modality": r[1], "setting": r[2], "model": r[3], "class": names[r[4]],
                                "dice": r[5], "scoring": r[6]} for r in rows]
        return summary

    def _write(self, rows: list[tuple], summary: dict[str, Any]) -> None:
        with atomic_path(self.output_dir / "metrics.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=1) + "\n")
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["case", "modality", "setting", "model", "class", "scoring", "dice"])
        names = self.datalist.labels
        writer.writerows([(r[0], r[1], r[2], r[3], names[r[4]], r[6], f"{r[5]:.6f}") for r in rows])
        with atomic_path(self.output_dir / "metrics.csv") as tmp:
            tmp.write_text(buffer.getvalue())
