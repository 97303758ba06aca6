"""Accuracy on ../shared/data: SegMoTE trained jointly on every dataset against the frozen backbone zero-shot
and a fine-tuned-decoder baseline, on the same test cases and boxes; the ablations; expert use per modality."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from joint import TrainingBudget, volume_loader

from segmote_monai.apps.evaluation import BundleEvaluation
from segmote_monai.data.cache import EmbeddingCache
from segmote_monai.data.datalist import Datalist, load_datalist
from segmote_monai.networks import build_segmote
from segmote_monai.networks.segmote import SegMoTE

SPLITS = Path(__file__).resolve().parent / "splits"
#: committed patient-level splits, in table order
DATASETS = ("chaos_t2", "acdc", "xray_lung", "ph2", "kvasir")
SETTINGS = ("box_tight", "box_jitter_0.1", "prompt_free")


def load_splits(data_root: Path, work_dir: Path, names=DATASETS, *, max_test_cases: int | None = None
                ) -> dict[str, Datalist]:
    """The committed splits with paths under ``data_root``, as :class:`Datalist` s."""
    out = {}
    for name in names:
        raw = json.loads((SPLITS / f"{name}.json").read_text())
        folder = data_root / raw.pop("dataset")
        for section in ("training", "validation", "test"):
            for item in raw[section]:
                for key in ("image", "label"):
                    item[key] = str(folder / item[key])
        if max_test_cases is not None:
            patients = sorted({i["patient"] for i in raw["test"]})[:max_test_cases]
            raw["test"] = [i for i in raw["test"] if i["patient"] in patients]
        path = work_dir / "datalists" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(raw, indent=1))
        out[name] = load_datalist(path)
    return out


def shared_cache(work_dir: Path, model: SegMoTE) -> EmbeddingCache:
    """One embedding cache for every configuration (they share the frozen backbone)."""
    return EmbeddingCache.for_model(work_dir / "cache", model, {"size": model.img_size, "scaling": "modality",
                                                              "slice_axis": "axial"})


@dataclass(frozen=True)
class Variant:
    """A configuration to train: ``build_segmote`` options and the loss weight."""

    name: str
    options: Mapping[str, Any]
    lambda_balance: float = 0.01
    learning_rate: float | None = None  # None: the budget's
    description: str = ""


def make_model(variant: Variant, num_carrier_classes: int) -> SegMoTE:
    options = {"num_ppt_queries": 2, **variant.options}
    if options["num_ppt_queries"]:
        options["num_carrier_classes"] = num_carrier_classes
    return build_segmote("lite_medsam", **options)


class RoutingRecorder:
    """Sums the router's gates [N, T, E] per block while ``current`` names the dataset being evaluated."""

    def __init__(self, model: SegMoTE) -> None:
        self.current: str | None = None
        self.usage: dict[str, list[torch.Tensor]] = {}
        model.decoder.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        if self.current is None or not output.routing:
            return
        sums = [r.gates.detach().float().sum(dim=(0, 1)).cpu() for r in output.routing]
        if self.current in self.usage:
            self.usage[self.current] = [a + b for a, b in zip(self.usage[self.current], sums)]
        else:
            self.usage[self.current] = sums

    def shares(self) -> dict[str, np.ndarray]:
        """Dataset -> [blocks, E]: each block's share of gate mass per expert (rows sum to 1)."""
        return {k: np.stack([(u / u.sum()).numpy() for u in v]) for k, v in self.usage.items()}


def evaluate(network: SegMoTE, datalists: Mapping[str, Datalist], baselines: Mapping[str, SegMoTE],
             cache: EmbeddingCache, out_dir: Path, *, seed: int, recorder: RoutingRecorder | None = None,
             log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    summaries = {}
    for name, datalist in datalists.items():
        if recorder is not None:
            recorder.current = name
        log(f"evaluating {name} ({len(datalist.items('test'))} test items)")
        summaries[name] = BundleEvaluation(
            network=network, datalist=datalist, load=volume_loader(datalist), backbone="lite_medsam",
            output_dir=out_dir / name, section="test", jitters=(0.0, 0.1), seed=seed, cache=cache,
            baselines=baselines).run()
    if recorder is not None:
        recorder.current = None
    return summaries


def dataset_means(summaries: Mapping[str, dict]) -> dict[tuple[str, str, str], dict]:
    """(dataset, setting, model) -> the 'mean over classes' row (mean Dice over cases with its 95% CI)."""
    return {(name, r["setting"], r["model"]): r for name, s in summaries.items() for r in s["results"]
            if r["class"] == "mean over classes"}


def class_rows(summaries: Mapping[str, dict]) -> dict[tuple[str, str, str, str], dict]:
    return {(name, r["class"], r["setting"], r["model"]): r for name, s in summaries.items()
            for r in s["results"] if r["class"] != "mean over classes"}


def _cell(row: dict | None, ci: bool = True) -> str:
    if row is None:
        return "-"
    if ci and row["n"] > 1:
        return f"{row['mean_dice']:.3f} [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]"
    return f"{row['mean_dice']:.3f}"


MAIN_COLUMNS = [("box_tight", "zero_shot"), ("box_tight", "finetuned_decoder"), ("box_tight", "segmote"),
                ("box_jitter_0.1", "zero_shot"), ("box_jitter_0.1", "finetuned_decoder"),
                ("box_jitter_0.1", "segmote"), ("prompt_free", "segmote")]
COLUMN_NAMES = {"box_tight": "tight", "box_jitter_0.1": "±10%", "prompt_free": "prompt-free",
                "zero_shot": "zero-shot", "finetuned_decoder": "fine-tuned decoder", "segmote": "SegMoTE"}


def main_tables(summaries: Mapping[str, dict], datalists: Mapping[str, Datalist], columns=MAIN_COLUMNS) -> str:
    """Per dataset (mean over classes, 95% CI over cases) and per class; the mean over datasets."""
    means, classes = dataset_means(summaries), class_rows(summaries)
    header = "| dataset | cases | " + " | ".join(f"{COLUMN_NAMES[m]} {COLUMN_NAMES[s]}" for s, m in columns) + " |"
    rule = "|---|---:|" + "---:|" * len(columns)
    lines = ["Mean Dice over classes per case, then over cases, with the bootstrap 95% interval over cases:", "",
             header, rule]
    for name, datalist in datalists.items():
        n = summaries[name]["cases"]
        lines.append(f"| {datalist.name} | {n} | " + " | ".join(_cell(means.get((name, s, m))) for s, m in columns)
                     + " |")
    lines.append("| **mean over datasets** | | " + " | ".join(
        _mean_over_datasets(means, datalists, s, m) for s, m in columns) + " |")
    lines += ["", "Per class (mean over cases):", "", header.replace("| cases ", "| class "), rule]
    for name, datalist in datalists.items():
        for c in datalist.classes:
            label = datalist.labels[c]
            lines.append(f"| {datalist.name} | {label} | " + " | ".join(
                _cell(classes.get((name, label, s, m)), ci=False) for s, m in columns) + " |")
    return "\n".join(lines)


def _mean_over_datasets(means: Mapping, datalists: Mapping, setting: str, model: str) -> str:
    values = [means[(n, setting, model)]["mean_dice"] for n in datalists if (n, setting, model) in means]
    if not values:
        return "-"
    return f"{np.mean(values):.3f}" + (f" ({len(values)} sets)" if len(values) != len(datalists) else "")


def targets(summaries: Mapping[str, dict], datalists: Mapping[str, Datalist]) -> str:
    """The issue's goals, each with the measured figures and met / missed."""
    means, classes = dataset_means(summaries), class_rows(summaries)
    lines = []
    worst = min(((means[(n, "box_tight", "segmote")]["mean_dice"] - means[(n, "box_tight", "zero_shot")]["mean_dice"]),
                 datalists[n].name) for n in datalists)
    lines.append(f"- tight boxes, no dataset more than 0.5 Dice below zero-shot: worst difference {worst[0]:+.3f} "
                 f"({worst[1]}): **{'met' if worst[0] >= -0.5 else 'missed'}**")
    if "acdc" in datalists:
        myo = classes.get(("acdc", "myocardium", "box_tight", "segmote"))
        zs = classes.get(("acdc", "myocardium", "box_tight", "zero_shot"))
        if myo and zs:
            lines.append(f"- ACDC myocardium (tight boxes) >= 0.75: SegMoTE {myo['mean_dice']:.3f}, zero-shot "
                         f"{zs['mean_dice']:.3f}: **{'met' if myo['mean_dice'] >= 0.75 else 'missed'}**")
    jit = [(means[(n, "box_jitter_0.1", "segmote")]["mean_dice"],
            means[(n, "box_jitter_0.1", "zero_shot")]["mean_dice"]) for n in datalists]
    gain = 100 * (np.mean([a for a, _ in jit]) - np.mean([b for _, b in jit]))
    lines.append(f"- ±10% boxes, mean over datasets at least 5 Dice points above zero-shot: {gain:+.1f} points: "
                 f"**{'met' if gain >= 5 else 'missed'}**")
    free = [(datalists[n].name, means[(n, "prompt_free", "segmote")]["mean_dice"],
             means[(n, "box_tight", "zero_shot")]["mean_dice"])
            for n in datalists if (n, "prompt_free", "segmote") in means]
    if free:
        lines.append("- prompt-free (PPT) beside tight-box zero-shot: " + "; ".join(
            f"{name} {a:.3f} vs {b:.3f}" for name, a, b in free))
    return "\n".join(lines)


def routing_table(shares: Mapping[str, np.ndarray], datalists: Mapping[str, Datalist]) -> str:
    any_share = next(iter(shares.values()))
    blocks, experts = any_share.shape
    header = "| dataset (modality) | " + " | ".join(f"block {b + 1} e{e + 1}" for b in range(blocks)
                                                   for e in range(experts)) + " |"
    lines = [header, "|---|" + "---:|" * (blocks * experts)]
    for name, share in shares.items():
        d = datalists[name]
        lines.append(f"| {d.name} ({d.modality}) | " + " | ".join(f"{v:.3f}" for v in share.reshape(-1)) + " |")
    return "\n".join(lines)


def routing_heatmap(shares: Mapping[str, np.ndarray], datalists: Mapping[str, Datalist], path: Path) -> None:
    """The paper's expert-preference figure: rows datasets, columns (block, expert), colour = gate share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(shares)
    matrix = np.stack([shares[n].reshape(-1) for n in names])
    blocks, experts = next(iter(shares.values())).shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * matrix.shape[1], 1.0 + 0.55 * len(names)))
    image = ax.imshow(matrix, cmap="viridis", vmin=0.0, aspect="auto")
    ax.set_xticks(range(matrix.shape[1]), [f"b{b + 1}e{e + 1}" for b in range(blocks) for e in range(experts)])
    ax.set_yticks(range(len(names)), [f"{datalists[n].name} ({datalists[n].modality})" for n in names])
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < matrix.max() / 2 else "black",
                fontsize=7)
    ax.set_title("SegMoTE expert use per dataset (share of gate mass per block)")
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(path)


ABLATIONS = (
    Variant("segmote", {}, description="the default: 4 experts, top-2, PPT, lambda 0.01, frozen SAM decoder"),
    Variant("no_ppt", {"num_ppt_queries": 0}, description="no PPT (box prompts only)"),
    Variant("lambda_0", {}, lambda_balance=0.0, description="no load-balance loss"),
    Variant("experts_1", {"num_experts": 1, "top_k": 1}, description="1 expert"),
    Variant("experts_8", {"num_experts": 8}, description="8 experts, top-2"),
    Variant("combine_top1", {"combine": "top1"}, description="combine top1 (the best expert token only)"),
    Variant("unfrozen_decoder", {"train_decoder": True}, description="experts + SAM's decoder trained"),
    Variant("lr_5e-4", {}, learning_rate=5e-4, description="the default at 5x the learning rate"),
)


def budget_for(variant: Variant, budget: TrainingBudget) -> TrainingBudget:
    return replace(budget, lambda_balance=variant.lambda_balance,
                   learning_rate=variant.learning_rate or budget.learning_rate)
