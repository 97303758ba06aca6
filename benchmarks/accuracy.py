"""Accuracy of trained models on the committed test splits and out-of-domain sets, aggregated over seeds; expert
use per dataset on the test prompts."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import Compose

from segmote_monai.apps.evaluation import BundleEvaluation, bootstrap_interval
from segmote_monai.data.cache import EmbeddingCache
from segmote_monai.data.datalist import Datalist
from segmote_monai.networks import build_from_checkpoint, build_segmote
from segmote_monai.networks.segmote import SegMoTE
from segmote_monai.routing import expert_use, mean_pairwise_cosine, routing_divergence, token_weight_entropy
from segmote_monai.transforms import LoadPaird, ScaleIntensityByModalityd

SETTINGS = ("box_tight", "box_jitter_0.1", "prompt_free")
SETTING_NAMES = {"box_tight": "tight", "box_jitter_0.1": "±10%", "prompt_free": "prompt-free"}
SCORINGS = ("own_mask", "label_map")


def volume_loader(datalist: Datalist) -> Callable[[dict], dict]:
    return Compose([LoadPaird(**datalist.label_encoding()), ScaleIntensityByModalityd(keys="image")])


def shared_cache(work_dir: Path, model: SegMoTE) -> EmbeddingCache:
    """One embedding cache for every configuration, keyed as the bundle's trainer keys it."""
    return EmbeddingCache.for_model(work_dir / "cache", model, {"size": model.img_size, "scaling": "modality",
                                                              "slice_axis": "axial"})


def zero_shot_model() -> SegMoTE:
    return build_segmote("lite_medsam", num_expert_tokens=0, num_ppt_queries=0).eval()


def load_model(checkpoint: str | Path) -> SegMoTE:
    return build_from_checkpoint(checkpoint, "lite_medsam").eval()


class RoutingRecorder:
    """Collects, per decoded prompt, the G-weighted clean expert use [blocks, E], the entropy of G and the
    expert tokens' pairwise cosine, under the dataset name ``current``."""

    def __init__(self, model: SegMoTE) -> None:
        self.current: str | None = None
        self.use: dict[str, list[np.ndarray]] = defaultdict(list)
        self.entropy: dict[str, list[float]] = defaultdict(list)
        self.cosine: dict[str, list[float]] = defaultdict(list)
        self.handle = model.decoder.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        if self.current is None or not output.routing:
            return
        self.use[self.current] += list(expert_use(output.routing).numpy())
        self.entropy[self.current] += token_weight_entropy(output.routing[-1].token_weights).tolist()
        self.cosine[self.current] += mean_pairwise_cosine(output.expert_tokens).tolist()

    def close(self) -> None:
        self.handle.remove()


def evaluate(model: SegMoTE, datalists: Mapping[str, Datalist], cache: EmbeddingCache, out_dir: Path, *,
             seed: int, jitters: Sequence[float] = (0.0, 0.1), recorder: RoutingRecorder | None = None,
             overlap: str = "smaller", log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """``BundleEvaluation`` of ``model`` alone on every datalist's test section: dataset -> summary.

    A dataset whose ``out_dir/<name>/metrics.json`` exists, scored with ``overlap``, is read back instead of
    evaluated again (the benchmark resumes after an interruption, as training does), unless ``recorder`` needs
    the forward passes. Files from before the label map's rule was recorded used ``"logit"``.
    """
    out = {}
    for name, datalist in datalists.items():
        done = out_dir / name / "metrics.json"
        previous = json.loads(done.read_text()) if recorder is None and done.exists() else None
        if previous is not None and previous.get("overlap", "logit") == overlap:
            out[name] = previous
            log(f"    {name}: read back from {done}")
            continue
        if recorder is not None:
            recorder.current = name
        out[name] = BundleEvaluation(network=model, datalist=datalist, load=volume_loader(datalist),
                                     backbone="lite_medsam", output_dir=out_dir / name, section="test",
                                     jitters=jitters, seed=seed, cache=cache, baselines={}, overlap=overlap).run()
        log(f"    {name}: {out[name]['cases']} cases")
    if recorder is not None:
        recorder.current = None
    return out


def mean_by(summary: dict, key: str, setting: str, scoring: str = "own_mask") -> dict[str, float]:
    """``key`` ("case" or "class") -> mean Dice of the summary's rows for ``setting`` and ``scoring``."""
    values: dict[str, list[float]] = defaultdict(list)
    for r in summary["per_case"]:
        if r["setting"] == setting and r["scoring"] == scoring:
            values[r[key]].append(r["dice"])
    return {k: float(np.mean(v)) for k, v in values.items()}


def per_case(summary: dict, setting: str, scoring: str = "own_mask") -> dict[str, float]:
    """case -> mean Dice over its classes."""
    return mean_by(summary, "case", setting, scoring)


def per_class(summary: dict, setting: str, scoring: str = "own_mask") -> dict[str, float]:
    """class -> mean Dice over cases."""
    return mean_by(summary, "class", setting, scoring)


class Results:
    """summaries[model][seed][dataset] -> BundleEvaluation summary, with the means the tables need."""

    def __init__(self) -> None:
        self.summaries: dict[str, dict[int, dict[str, dict]]] = defaultdict(dict)

    def add(self, model: str, seed: int, summaries: dict[str, dict]) -> None:
        self.summaries[model][seed] = summaries

    def seeds(self, model: str) -> list[int]:
        return sorted(self.summaries.get(model, {}))

    def dataset(self, model: str, dataset: str, setting: str, scoring: str = "own_mask"
                ) -> dict[str, Any] | None:
        """Mean over seeds of the mean over cases, the bootstrap 95% interval over cases of the seed-averaged
        case means, and the seeds' spread (min, max); None where the model has no such rows."""
        runs = [per_case(s[dataset], setting, scoring) for s in self.summaries.get(model, {}).values()
                if dataset in s]
        runs = [r for r in runs if r]
        if not runs:
            return None
        cases = sorted(runs[0])
        averaged = [float(np.mean([r[c] for r in runs])) for c in cases]
        seed_means = [float(np.mean(list(r.values()))) for r in runs]
        return {"mean": float(np.mean(averaged)), "ci95": bootstrap_interval(averaged), "seeds": len(runs),
                "spread": (min(seed_means), max(seed_means)), "cases": len(cases)}

    def classes(self, model: str, dataset: str, setting: str, scoring: str = "own_mask") -> dict[str, float]:
        runs = [per_class(s[dataset], setting, scoring) for s in self.summaries.get(model, {}).values()
                if dataset in s]
        runs = [r for r in runs if r]
        return {c: float(np.mean([r[c] for r in runs])) for c in runs[0]} if runs else {}


def cell(entry: dict[str, Any] | None, *, ci: bool = False) -> str:
    if entry is None:
        return "-"
    text = f"{entry['mean']:.3f}"
    if ci and entry["cases"] > 1:
        text += f" [{entry['ci95'][0]:.3f}, {entry['ci95'][1]:.3f}]"
    if entry["seeds"] > 1:
        text += f" ({entry['spread'][0]:.3f}-{entry['spread'][1]:.3f})"
    return text


def routing_tables(recorder: RoutingRecorder, titles: Mapping[str, str], *, permutations: int = 199,
                   seed: int = 0) -> tuple[str, dict[str, np.ndarray], dict]:
    """Markdown: expert use per dataset and block, the entropy of G and the expert-output cosine; the pairwise
    divergences with their permutation test. Also returns the shares and the test results."""
    names = [n for n in titles if recorder.use.get(n)]
    shares = {titles[n]: np.mean(recorder.use[n], axis=0) for n in names}
    blocks, experts = next(iter(shares.values())).shape
    header = ("| dataset | prompts | " + " | ".join(f"b{b + 1}e{e + 1}" for b in range(blocks) for e in range(experts))
              + " | entropy of G | expert-output cosine |")
    lines = [header, "|---|---:|" + "---:|" * (blocks * experts + 2)]
    for n in names:
        lines.append(f"| {titles[n]} | {len(recorder.use[n])} | "
                     + " | ".join(f"{v:.2f}" for v in shares[titles[n]].reshape(-1))
                     + f" | {np.mean(recorder.entropy[n]):.3f} | {np.nanmean(recorder.cosine[n]):.3f} |")
    use = np.concatenate([np.stack(recorder.use[n]) for n in names])
    groups = [titles[n] for n in names for _ in recorder.use[n]]
    tests = routing_divergence(use, groups, permutations=permutations, seed=seed)
    pairs = ["| datasets | JSD (bits) | largest of the shuffled JSDs | p | different |", "|---|---:|---:|---:|---|"]
    for (a, b), t in sorted(tests.items(), key=lambda kv: -kv[1]["jsd"]):
        pairs.append(f"| {a} / {b} | {t['jsd']:.3f} | {t['null_max']:.3f} | {t['p_value']:.3f} | "
                     f"{'yes' if t['different'] else 'no'} |")
    return "\n".join(lines) + "\n\n" + "\n".join(pairs), shares, tests


def token_cosine(model: SegMoTE) -> float:
    return float(mean_pairwise_cosine(model.decoder.expert_tokens.weight)) if model.decoder.expert_tokens is not None \
        else float("nan")


def stack_seeds(values: Sequence[float]) -> str:
    return f"{np.mean(values):.3f}" + (f" ({min(values):.3f}-{max(values):.3f})" if len(values) > 1 else "")

