"""The benchmarks: measured tables for BENCHMARKS.md, each with the machine, commit, command and seeds.

    python benchmarks/run.py main        # 3 seeds x (SegMoTE, no-MoTE control, fine-tuned decoder) + zero-shot:
                                         # in-domain test splits, TotalSegmentator CT/MR, routing (< 2 h, 2 CPUs)
                                         # with the default loss, Dice + cross-entropy: sections accuracy_ce1
                                         # and routing_ce1, run folders <recipe>_ce1_seed<n>
    python benchmarks/run.py main --lambda-ce 0  # the loss control, Dice alone: sections accuracy and routing
    python benchmarks/run.py loo         # leave one dataset out (ACDC, Kvasir): what each keeps outside its data
    python benchmarks/run.py ablations   # one factor at a time at the main budget, one seed
    python benchmarks/run.py shift       # prompt-free on chest X-rays of another kind: trained on normal
                                         # lungs only, scored on the tuberculosis images (2 seeds)
    python benchmarks/run.py speed       # speed, memory and cache sections
    python benchmarks/run.py memory      # the peak-memory section alone
    python benchmarks/run.py main --quick  # every step on a few cases, a few minutes (writes elsewhere)

Every model is trained by the bundle itself (``python -m monai.bundle run training`` on the datalists of the
committed splits, see ``training.py``) and evaluated by the bundle's evaluation app on the test splits
(``benchmarks/splits/``) over ``--data-root`` (default ``../shared/data``). All runs share one embedding cache
under ``--work-dir`` (default ``runs/benchmarks``), so the frozen encoder runs once per slice; a finished
training run is not repeated when the command is run again.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from accuracy import (
    SETTING_NAMES,
    Results,
    RoutingRecorder,
    cell,
    evaluate,
    load_model,
    routing_tables,
    shared_cache,
    token_cosine,
    zero_shot_model,
)
from benchmark_data import DATASETS, load_splits, split_by_source, totalseg_datalists
from common import REPO, log, provenance, write_section
from training import RECIPES, Budget, Recipe, train

from segmote_monai.data.datalist import Datalist
from segmote_monai.inferers import OVERLAP_RULES
from segmote_monai.networks.segmote import SegMoTE
from segmote_monai.visualize import routing_heatmap

TRAINED = ("segmote", "tokens_no_mote", "finetuned_decoder")
MODEL_NAMES = {"zero_shot": "zero-shot", "finetuned_decoder": "fine-tuned decoder", "tokens_no_mote": "no MoTE",
               "segmote": "SegMoTE"}
DEFAULT_LR = 5e-4
LOO_FOLDS = ("acdc", "kvasir")  # one MR and one RGB set left out
ABLATIONS = (
    Recipe("shared_attention", {"expert_attention": "shared"}, "expert tokens in SAM's sequence (the paper's layout)"),
    Recipe("routed_head", {"mask_head": "routed"}, "the routed token alone makes the mask (the paper's head)"),
    Recipe("first_token_init", {"token_init": "sam_first_token"}, "every expert token from SAM's first mask token"),
    Recipe("norm4", {"mote_norm": "norm4"}, "MoTE LayerNorms from the blocks' image-key norm (norm4)"),
    Recipe("noise_0.7", {"router_noise_std": 0.7}, "router noise at Shazeer's default scale (0.7)"),
    Recipe("ppt_beside_boxes", {"ppt_beside_prompts": True}, "PPT tokens beside the box on binary sets"),
    Recipe("lambda_0", {"lambda_balance": 0.0}, "no load-balance loss"),
    Recipe("experts_1", {"num_experts": 1, "top_k": 1}, "1 expert"),
    Recipe("top1", {"combine": "top1"}, "combine top1 (the paper's literal text)"),
    Recipe("experts_write_image", {"experts_write_image": True}, "the image also attends to the expert tokens "
                                                                 "(zero-initialised write-back)"),
    Recipe("trainable_reader", {"trainable_reader": True}, "the expert tokens read the blocks through their own "
                                                           "(trainable) copies of SAM's attention"),
    Recipe("lr_1e-4", {"learning_rate": 1e-4}, "learning rate 1e-4"),
    Recipe("finetuned_decoder_lr_1e-4", {**RECIPES["finetuned_decoder"].overrides, "learning_rate": 1e-4},
           "the fine-tuned decoder at learning rate 1e-4 (the baseline at its own best rate)"),
)


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = args.work_dir.resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        quick = args.quick
        self.datalists = load_splits(args.data_root.resolve(), self.work, DATASETS,
                                     max_test_cases=1 if quick else None, max_training_cases=3 if quick else None)
        self.ood = totalseg_datalists(args.data_root.resolve(), self.work)
        epochs, samples = args.epochs or (2 if quick else 10), args.samples_per_epoch or (20 if quick else 300)
        self.budget = Budget(epochs=epochs, samples_per_epoch=samples, learning_rate=args.learning_rate,
                             lr_milestones=(7,) if quick else (round(0.6 * epochs), round(0.9 * epochs)),
                             lambda_ce=args.lambda_ce)
        # runs with the cross-entropy term (the default since bundle 0.5.0) train, evaluate and write their
        # sections under names of their own: the Dice-only runs and sections measured before keep theirs; so do
        # runs at another budget or learning rate (a finished run folder is reused, so its name must say both)
        self.tag = f"_ce{args.lambda_ce:g}" if args.lambda_ce else ""
        if not quick and (epochs, samples) != (10, 300):
            self.tag += f"_{epochs}x{samples}"
        if args.learning_rate != DEFAULT_LR:
            self.tag += f"_lr{args.learning_rate:g}"
        #: trained at another budget or learning rate than the main table's
        self.other_budget = self.tag != (f"_ce{args.lambda_ce:g}" if args.lambda_ce else "")
        self.weights = dict(args.dataset_weights or {})
        if self.weights:
            self.tag += "_w" + "_".join(f"{n}{w:g}" for n, w in sorted(self.weights.items()))
        self.seeds = list(range(args.first_seed, args.first_seed + (args.seeds or (1 if quick else 3))))
        # the sections of a run that leaves out seed 0 say so: they do not replace those that hold it
        self.section_tag = self.tag + (f"_seed{args.first_seed}" if args.first_seed else "")
        self.cache = shared_cache(self.work, zero_shot_model())
        # evaluations under another overlap rule get their own folder: the default's stay as they are
        self.evals = self.work / ("eval" if args.overlap == "smaller" else f"eval_{args.overlap}")

    def evaluate(self, model: SegMoTE, datalists: Mapping[str, Datalist], name: str, **kwargs) -> dict:
        """``evaluate`` into ``evals/<name>`` with the run's overlap rule (boxes drawn with seed 0)."""
        return evaluate(model, datalists, self.cache, self.evals / name, seed=0, overlap=self.args.overlap, log=log,
                        **kwargs)

    def paths(self, names: Sequence[str]) -> list[Path]:
        return [self.datalists[n].path for n in names]

    def budget_for(self, names: Sequence[str]) -> Budget:
        """The run's budget for training on the datasets ``names``, in that order, with their weights."""
        if not self.weights:
            return self.budget
        text = ", ".join(f"{self.datalists[n].name} x {w:g}" for n, w in self.weights.items()) + ", the others x 1"
        return replace(self.budget, dataset_weights=tuple(self.weights.get(n, 1.0) for n in names), weights_text=text)

    def heading_notes(self) -> str:
        """What a section's heading says about a run that is not the main table's Dice-only default: the loss,
        another budget or learning rate, dataset weights (" (...; ...)"), or nothing."""
        args = self.args
        notes = ([f"loss Dice + {args.lambda_ce:g} x cross-entropy"] if args.lambda_ce else []) + (
            [f"{self.budget.epochs} epochs x {self.budget.samples_per_epoch} samples, lr {self.budget.learning_rate:g}"]
            if self.other_budget else []) + (
            [f"datasets weighted {self.budget_for(DATASETS).weights_text}"] if self.weights else [])
        return f" ({'; '.join(notes)})" if notes else ""

    def titles(self) -> dict[str, str]:
        return {n: d.name for n, d in {**self.datalists, **self.ood}.items()}


def table(results: Results, datalists: Mapping[str, Datalist], models: Sequence[str], *, scoring: str = "own_mask",
          ci: bool = False) -> str:
    columns = [(s, m) for s in ("box_tight", "box_jitter_0.1") for m in models] + [("prompt_free", "segmote")]
    header = ("| dataset | " + " | ".join(f"{MODEL_NAMES[m]} {SETTING_NAMES[s]}" for s, m in columns) + " |")
    lines = [header, "|---|" + "---:|" * len(columns)]
    means: dict[tuple, list[float]] = {c: [] for c in columns}
    for name, datalist in datalists.items():
        row = []
        for s, m in columns:
            entry = results.dataset(m, name, s, scoring)
            row.append(cell(entry, ci=ci))
            if entry is not None:
                means[(s, m)].append(entry["mean"])
        lines.append(f"| {datalist.name} | " + " | ".join(row) + " |")
    lines.append("| **mean over datasets** | " + " | ".join(
        (f"{np.mean(v):.3f}" + (f" ({len(v)} sets)" if len(v) != len(datalists) else "")) if v else "-"
        for v in means.values()) + " |")
    return "\n".join(lines)


def class_table(results: Results, datalists: Mapping[str, Datalist], models: Sequence[str]) -> str:
    columns = [(s, m, sc) for sc in ("own_mask", "label_map") for s in ("box_tight", "box_jitter_0.1") for m in models]
    names = [f"{MODEL_NAMES[m]} {SETTING_NAMES[s]}" + (" (label map)" if sc == "label_map" else "")
             for s, m, sc in columns]
    header = "| dataset | class | " + " | ".join(names) + " |"
    lines = [header, "|---|---|" + "---:|" * len(columns)]
    for name, datalist in datalists.items():
        per = {(s, m, sc): results.classes(m, name, s, sc) for s, m, sc in columns}
        for c in datalist.classes:
            label = datalist.labels[c]
            lines.append(f"| {datalist.name} | {label} | " + " | ".join(
                f"{per[k][label]:.3f}" if label in per[k] else "-" for k in columns) + " |")
    return "\n".join(lines)


def run_main(ctx: Context) -> None:
    args = ctx.args
    results = Results()
    everything = {**ctx.datalists, **ctx.ood}
    log("evaluating the frozen backbone (zero-shot)")
    results.add("zero_shot", 0, ctx.evaluate(zero_shot_model(), everything, "zero_shot"))
    stats: dict[str, list[dict]] = {}
    recorder, routed_model = None, None
    trained = [n for n in TRAINED if n in args.recipes]
    models = ("zero_shot", *reversed(trained))
    for seed in ctx.seeds:
        for name in trained:
            run = train(RECIPES[name], ctx.paths(DATASETS), budget=ctx.budget_for(DATASETS), seed=seed,
                        out_dir=ctx.work / "runs" / f"{name}{ctx.tag}_seed{seed}", cache_dir=ctx.work / "cache",
                        log=log)
            stats.setdefault(name, []).append(run)
            model = load_model(run["checkpoint"])
            if name == "segmote" and seed == ctx.seeds[0]:
                recorder, routed_model = RoutingRecorder(model), model
            log(f"evaluating {name} seed {seed}")
            results.add(name, seed, ctx.evaluate(model, everything, f"{name}{ctx.tag}_seed{seed}",
                                                 recorder=recorder if model is routed_model else None))
    (ctx.evals / f"main{ctx.section_tag}_results.json").write_text(json.dumps(results.summaries, indent=1, default=str))

    minutes = {n: np.mean([s["seconds"] for s in v]) / 60 for n, v in stats.items()}
    recipes = "; ".join(f"**{MODEL_NAMES[n]}**: {RECIPES[n].description}"
                        for n in trained)
    ppt_recipes = "SegMoTE and the no-MoTE control" if "tokens_no_mote" in trained else "SegMoTE"
    loss = ctx.heading_notes()
    title = ", ".join(MODEL_NAMES[n] for n in trained) + " and the frozen backbone" + loss
    body = f"""## Accuracy: {title}

{provenance()}
- seeds: {', '.join(map(str, ctx.seeds))} (training; the jittered boxes of the evaluation use seed 0 throughout)
- data: `../shared/data`, the committed patient-level splits in `benchmarks/splits/`{
' (--quick: 1 test case per dataset, 3 training cases)' if args.quick else ''}; out of domain, never trained on:
  the TotalSegmentator CT and MR samples (8 abdominal organs, model-made references)
- training, the same for every recipe, by the bundle (`python -m monai.bundle run training` on the five
  training splits at once, `--datalists`): {ctx.budget_for(DATASETS).text()}. {ppt_recipes} also decode{
'' if 'tokens_no_mote' in trained else 's'} a prompt-free row for half of the binary sets' samples (PPT), on top of
  the same box-prompted samples
- recipes: {recipes};
  **zero-shot**: the frozen LiteMedSAM alone on the same boxes
- mean training time per run on this machine: {', '.join(f'{MODEL_NAMES[n]} {m:.1f} min' for n, m in minutes.items())}
- evaluation: every test case, one box per slice and class from its label, tight and with each side moved by up
  to 10% of the box size (seeded), 3D Dice per case on the reassembled volume (2D sets per image), the last
  epoch's weights (no model selection)

Mean Dice over classes per case, then over cases and seeds; each class scored on its own prompts' mask (the
paper's protocol); in brackets the bootstrap 95% interval over cases of the seed-averaged case means, in
parentheses the range of the seeds' means:

{table(results, everything, models, ci=True)}

The same, scored on the merged label map, as users get it (where two classes' masks overlap the smaller one wins,
the bundle's `label_overlap` default; `python benchmarks/run.py main --overlap logit` scores the highest-logit rule):

{table(results, everything, models, scoring='label_map')}

Per class, mean over cases and seeds:

{class_table(results, everything, models)}

{targets(results, ctx)}
"""
    write_section(args.out, f"accuracy{ctx.section_tag}", body)
    if recorder is not None:
        text, shares, _ = routing_tables(recorder, ctx.titles())
        png = REPO / "benchmarks" / "figures" / f"routing{ctx.section_tag}{'_quick' if args.quick else ''}.png"
        routing_heatmap(shares, png, title="SegMoTE expert use on the test prompts (G-weighted clean gates)")
        routing = f"""## Routing: do experts specialise?{loss}

{provenance()}
- the seed-{ctx.seeds[0]} SegMoTE model above on every test prompt (tight and jittered boxes, prompt-free): per
  prompt and block, each expert's share of the routed token, ``sum_t G_t P_t,e`` with the clean gates
- learned expert tokens: mean pairwise cosine {token_cosine(routed_model):.3f} (they start from SAM's four mask
  tokens); entropy of G per prompt over log T (1: a plain average of the tokens)
- "different": the Jensen-Shannon divergence between two datasets' mean expert use exceeds all 199 values
  obtained by shuffling which dataset each prompt came from (p < 0.005)

{text}

![expert use per dataset]({png.relative_to(REPO)})

Logged by the trainer after every epoch of that run (training prompts, MLflow metrics of the same names; the
heatmap of each epoch is an MLflow artifact, `routing/routing_epoch_<n>.png`):

{epoch_routing(ctx.work / "runs" / f"segmote{ctx.tag}_seed{ctx.seeds[0]}" / "train.log")}
"""
        write_section(args.out, f"routing{ctx.section_tag}", routing)
    log(f"accuracy and routing written to {args.out}")


def epoch_routing(train_log: Path) -> str:
    """The routing measures the trainer logged after every epoch (RoutingStatistics), as a table."""
    keys = ("token_weight_entropy", "expert_token_cosine", "expert_output_cosine", "routing_jsd_mean",
            "routing_jsd_min", "balance_loss")
    lines = ["| epoch | " + " | ".join(keys) + " |", "|---:|" + "---:|" * len(keys)]
    for epoch, text in re.findall(r"Epoch\[(\d+)\] Metrics -- (.*balance_loss.*)", train_log.read_text()):
        values = dict(re.findall(r"(\w+): ([-0-9.e]+)", text))
        cells = [f"{float(values[k]):.3f}" if k in values else "-" for k in keys]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(results: Results, ctx: Context) -> str:
    lines = ["Targets (own-mask scoring unless said):", ""]
    means = {}
    for model in ("segmote", "finetuned_decoder", "zero_shot"):
        values = [v["mean"] for v in (results.dataset(model, n, "box_tight") for n in ctx.datalists) if v]
        if values:
            means[model] = np.mean(values)
    if "finetuned_decoder" in means:
        gap = means["segmote"] - means["finetuned_decoder"]
        lines.append(f"- tight-box mean over the five sets, SegMoTE >= fine-tuned decoder - 0.01: "
                     f"{means['segmote']:.3f} vs {means['finetuned_decoder']:.3f} ({gap:+.3f}): "
                     f"**{'met' if gap >= -0.01 else 'missed'}**")
    else:
        lines.append("- tight-box mean over the five sets against the fine-tuned decoder: not measured in this run")
    for setting in ("box_tight", "box_jitter_0.1"):
        for scoring in ("own_mask", "label_map"):
            myo = results.classes("segmote", "acdc", setting, scoring).get("myocardium")
            ft = results.classes("finetuned_decoder", "acdc", setting, scoring).get("myocardium")
            if myo is not None:
                lines.append(f"- ACDC myocardium >= 0.85, {SETTING_NAMES[setting]} boxes, "
                             f"{scoring.replace('_', ' ')}: SegMoTE {myo:.3f}"
                             + (f" (fine-tuned decoder {ft:.3f})" if ft is not None else "") + ": "
                             f"**{'met' if myo >= 0.85 else 'missed'}**")
    for name, datalist in ctx.ood.items():
        for setting in ("box_tight", "box_jitter_0.1"):
            ours, zs = results.dataset("segmote", name, setting), results.dataset("zero_shot", name, setting)
            ft = results.dataset("finetuned_decoder", name, setting)
            if ours and zs:
                d = ours["mean"] - zs["mean"]
                vs_ft = f"; fine-tuned decoder {ft['mean'] - zs['mean']:+.3f}" if ft else ""
                lines.append(f"- out of domain, {datalist.name}, {SETTING_NAMES[setting]}: SegMoTE "
                             f"{ours['mean']:.3f} vs zero-shot {zs['mean']:.3f} ({d:+.3f}{vs_ft}): "
                             f"**{'met' if d >= -0.01 else 'missed'}**")
    return "\n".join(lines)


def run_loo(ctx: Context) -> None:
    args = ctx.args
    results: dict[str, Results] = {}
    seed = ctx.seeds[0]
    zs = Results()
    everything = {**ctx.datalists, **ctx.ood}
    zs.add("zero_shot", 0, ctx.evaluate(zero_shot_model(), everything, "zero_shot"))
    recipes = [r for r in ("segmote", "finetuned_decoder") if r in args.recipes]
    for fold in args.folds:
        kept = [n for n in DATASETS if n != fold]
        res = results[fold] = Results()
        tests = {fold: ctx.datalists[fold], **ctx.ood}
        for name in recipes:
            run = train(RECIPES[name], ctx.paths(kept), budget=ctx.budget_for(kept), seed=seed,
                        out_dir=ctx.work / "runs" / f"loo_{fold}_{name}{ctx.tag}_seed{seed}",
                        cache_dir=ctx.work / "cache", log=log)
            res.add(name, seed, ctx.evaluate(load_model(run["checkpoint"]), tests,
                                             f"loo_{fold}_{name}{ctx.tag}_seed{seed}"))
    lines = ["| left out | test set | setting | zero-shot | SegMoTE | fine-tuned decoder | SegMoTE - zero-shot | "
             "fine-tuned - zero-shot |", "|---|---|---|---:|---:|---:|---:|---:|"]
    kept_all = []
    for fold, res in results.items():
        for name in (fold, *ctx.ood):
            for setting in ("box_tight", "box_jitter_0.1"):
                z = zs.dataset("zero_shot", name, setting)["mean"]
                means = [res.dataset(r, name, setting)["mean"] if r in recipes else None
                         for r in ("segmote", "finetuned_decoder")]
                kept_all.append([None if m is None else m - z for m in means])
                cells = [f"{m:.3f}" if m is not None else "-" for m in means]
                cells += [f"{m - z:+.3f}" if m is not None else "-" for m in means]
                lines.append(f"| {ctx.datalists[fold].name} | {everything[name].name} | {SETTING_NAMES[setting]} | "
                             f"{z:.3f} | {' | '.join(cells)} |")
    worst = [f"{min(k[i] for k in kept_all):+.3f}" if r in recipes else "not run"
             for i, r in enumerate(("segmote", "finetuned_decoder"))]
    verdict = "met" if float(worst[0]) >= -0.01 else "missed"
    scope = "" if len(args.folds) == len(LOO_FOLDS) else f" on the folds run, {', '.join(args.folds)}"
    body = f"""## Outside the training data: leave one dataset out{ctx.heading_notes()}

{provenance()}
- seed: {seed}; each fold trains SegMoTE and the fine-tuned decoder by the bundle on the four other sets' training
  splits ({ctx.budget.text()}), then scores the left-out set's test split and the TotalSegmentator CT and MR
  samples, against the frozen backbone on the same boxes (own-mask scoring)

{chr(10).join(lines)}

Worst difference to zero-shot over these sets and settings: SegMoTE {worst[0]}, fine-tuned decoder {worst[1]}
(target: SegMoTE >= zero-shot - 0.01 on every set, tight and ±10%: **{verdict}**{scope}).
"""
    write_section(args.out, f"loo{ctx.section_tag}", body)
    log(f"leave-one-out written to {args.out}")


def run_shift(ctx: Context) -> None:
    """Prompt-free on images of another kind than the training's: the five sets with the chest X-ray's training
    split cut to its normal images, then the held-out normals (in-domain) against every tuberculosis image."""
    args = ctx.args
    parts = split_by_source(ctx.datalists["xray_lung"], ctx.work)
    order = [n for n in DATASETS if n != "xray_lung"] + ["xray_lung"]
    kept = [ctx.datalists[n].path for n in order[:-1]] + [parts["trained"].path]
    tests = {k: parts[k] for k in ("normal_heldout", "tb_test", "tb_all")}
    titles = {"normal_heldout": "normal, test and validation splits", "tb_test": "tuberculosis, test split",
              "tb_all": "tuberculosis, every split (none trained on)"}
    seeds = ctx.seeds[:2] if args.seeds is None and not args.quick else ctx.seeds
    results, main_results = Results(), Results()
    zs = Results()
    zs.add("zero_shot", 0, ctx.evaluate(zero_shot_model(), tests, "shift_zero_shot"))
    for seed in seeds:
        run = train(RECIPES["segmote"], kept, budget=ctx.budget_for(order), seed=seed,
                    out_dir=ctx.work / "runs" / f"shift_xray_segmote{ctx.tag}_seed{seed}",
                    cache_dir=ctx.work / "cache", log=log)
        results.add("segmote", seed, ctx.evaluate(load_model(run["checkpoint"]), tests,
                                                  f"shift_xray_segmote{ctx.tag}_seed{seed}"))
        main = ctx.work / "runs" / f"segmote{ctx.tag}_seed{seed}" / "done.json"
        if main.exists():  # the main table's model saw tuberculosis images in training: the control
            checkpoint = json.loads(main.read_text())["checkpoint"]
            main_results.add("segmote", seed, ctx.evaluate(
                load_model(checkpoint), {k: tests[k] for k in ("normal_heldout", "tb_test")},
                f"shift_main_segmote{ctx.tag}_seed{seed}"))
    rows = [("SegMoTE, X-ray training split: normal images only", results),
            ("SegMoTE, the main table's (X-ray training split: normal and tuberculosis)", main_results),
            ("zero-shot (the frozen backbone)", zs)]
    lines = ["| model | test images | cases | " + " | ".join(SETTING_NAMES[s] for s in ("box_tight", "box_jitter_0.1",
                                                                                        "prompt_free")) + " |",
             "|---|---|---:|---:|---:|---:|"]
    for title, res in rows:
        model = "zero_shot" if res is zs else "segmote"
        for key in tests:
            entries = [res.dataset(model, key, s) for s in ("box_tight", "box_jitter_0.1", "prompt_free")]
            if entries[0] is None:
                continue
            lines.append(f"| {title} | {titles[key]} | {entries[0]['cases']} | "
                         + " | ".join(cell(e, ci=True) for e in entries) + " |")
    inside = results.dataset("segmote", "normal_heldout", "prompt_free")
    outside = results.dataset("segmote", "tb_all", "prompt_free")
    gap = outside["mean"] - inside["mean"]
    body = f"""## Prompt-free on another kind of image: chest X-rays with tuberculosis

{provenance()}
- seeds: {', '.join(map(str, seeds))}; SegMoTE trained by the bundle on the five training splits as in the main
  table ({ctx.budget.text()}), except that the chest X-ray's holds only its
  {len(parts['trained'].sections['training'])} normal images (suffix `_0`; its tuberculosis images, `_1`, are left out)
- the shared data's X-rays all come from one hospital (Shenzhen; the Montgomery images are not in it), so the other
  source here is the other population of that hospital: lungs with tuberculosis (opacities, effusions, cavities)
  that the model never saw; the main table's model, which trained on both, is the control for how much harder
  these images are in themselves (it can only be scored on the test split's tuberculosis images)
- mean Dice per image, in brackets the bootstrap 95% interval over images, in parentheses the seeds' range

{chr(10).join(lines)}

Target: prompt-free within 0.05 of its in-domain figure on a set from another source: {inside['mean']:.3f} on the
held-out normal images, {outside['mean']:.3f} on all tuberculosis images ({gap:+.3f}):
**{'met' if gap >= -0.05 else 'missed'}**.
"""
    write_section(args.out, f"shift{ctx.section_tag}", body)
    log(f"shift written to {args.out}")


def run_ablations(ctx: Context) -> None:
    args = ctx.args
    seed = ctx.seeds[0]
    everything = {**ctx.datalists, **ctx.ood}
    results = Results()
    rows = []
    chosen = [r for r in ABLATIONS if args.ablations is None or r.name in args.ablations]
    for recipe in (RECIPES["segmote"], *chosen):
        run = train(recipe, ctx.paths(DATASETS), budget=ctx.budget_for(DATASETS), seed=seed,
                    out_dir=ctx.work / "runs" / f"{recipe.name}{ctx.tag}_seed{seed}",
                    cache_dir=ctx.work / "cache", log=log)
        model = load_model(run["checkpoint"])
        results.add(recipe.name, seed, ctx.evaluate(model, everything, f"{recipe.name}{ctx.tag}_seed{seed}"))
        rows.append((recipe, run, token_cosine(model)))
    header = ("| configuration | " + " | ".join(d.name for d in everything.values())
              + " | in-domain mean tight | ±10% | ACDC myocardium tight / ±10% | prompt-free mean | minutes |")
    lines = [header, "|---|" + "---:|" * (len(everything) + 5)]
    for recipe, run, _ in rows:
        cells, tight, jit, free = [], [], [], []
        for name in everything:
            t, j = (results.dataset(recipe.name, name, s) for s in ("box_tight", "box_jitter_0.1"))
            cells.append(f"{t['mean']:.3f} / {j['mean']:.3f}")
            if name in ctx.datalists:
                tight.append(t["mean"])
                jit.append(j["mean"])
                p = results.dataset(recipe.name, name, "prompt_free")
                if p:
                    free.append(p["mean"])
        myo = [results.classes(recipe.name, "acdc", s).get("myocardium", float("nan"))
               for s in ("box_tight", "box_jitter_0.1")]
        lines.append(f"| {recipe.name}: {recipe.description or 'the default'} | " + " | ".join(cells)
                     + f" | {np.mean(tight):.3f} | {np.mean(jit):.3f} | {myo[0]:.3f} / {myo[1]:.3f} | "
                     + (f"{np.mean(free):.3f}" if free else "-") + f" | {run['seconds'] / 60:.1f} |")
    body = f"""## Ablations: one factor at a time{ctx.heading_notes()}

{provenance()}
- seed {seed}; every configuration trained by the bundle on the five training splits at {
"one budget" if ctx.other_budget else "the main table's budget"}
  ({ctx.budget_for(DATASETS).text()}); per set: mean Dice over cases, tight / ±10% boxes (own-mask scoring)

{chr(10).join(lines)}
"""
    write_section(args.out, f"ablations{ctx.section_tag}", body)
    log(f"ablations written to {args.out}")


def run_speed(ctx: Context) -> None:
    from cache_epoch import measure
    from speed import section

    args = ctx.args
    body = f"""## Speed and memory

{provenance()}
- CPU timings on this machine (absolute times only mean something on the same machine; ratios are from one run)

{section(args.data_root.resolve(), ctx.work / 'speed', quick=args.quick)}
"""
    write_section(args.out, "speed", body)
    run_memory(ctx)
    cache = measure(args.data_root.resolve() / "mri_abdomen_chaos_t2", samples_per_volume=4 if args.quick else 8,
                    max_volumes=2 if args.quick else 6, seed=0)
    write_section(args.out, "cache", cache)
    log(f"speed written to {args.out}")


def run_memory(ctx: Context) -> None:
    from speed import memory_section

    args = ctx.args
    body = f"""## Memory

{provenance()}

{memory_section(args.data_root.resolve(), ctx.work / 'speed', quick=args.quick)}
"""
    write_section(args.out, "memory", body)


def _weight(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    if name not in DATASETS or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=W with NAME one of {', '.join(DATASETS)}, got {text!r}")
    weight = float(value)
    if not weight > 0:
        raise argparse.ArgumentTypeError(f"a dataset weight must be > 0, got {text!r}")
    return name, weight


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("main", "loo", "ablations", "shift", "speed", "memory"))
    parser.add_argument("--quick", action="store_true", help="a few cases and steps; writes BENCHMARKS.quick.md")
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "benchmarks")
    parser.add_argument("--out", type=Path, default=None, help="default BENCHMARKS.md (quick: the work dir's)")
    parser.add_argument("--seeds", type=int, default=None, help="how many training seeds (default 3; quick 1)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the first training seed: seeds first..first+N-1 (default 0)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--samples-per-epoch", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=DEFAULT_LR)
    parser.add_argument("--lambda-ce", type=float, default=Budget.lambda_ce,
                        help="every recipe trained with Dice + this x cross-entropy (default the bundle's; non-zero: "
                             "run folders and BENCHMARKS sections named with _ce<value>, 0: without)")
    parser.add_argument("--recipes", nargs="+", default=list(TRAINED), choices=TRAINED, metavar="NAME",
                        help=f"main, loo: the trained recipes (default all: {', '.join(TRAINED)}; loo trains "
                             "segmote and finetuned_decoder)")
    parser.add_argument("--folds", nargs="+", default=list(LOO_FOLDS), choices=LOO_FOLDS, metavar="NAME",
                        help=f"loo: the datasets left out, one per fold (default all: {', '.join(LOO_FOLDS)})")
    parser.add_argument("--dataset-weights", nargs="+", type=_weight, default=None, metavar="NAME=W",
                        help=f"every subcommand that trains: the bundle's dataset_weights for these datasets "
                             f"({', '.join(DATASETS)}; the others 1); run folders and sections named with "
                             "_w<name><w>")
    parser.add_argument("--overlap", choices=OVERLAP_RULES, default="smaller",
                        help="the label map's rule where two classes' masks overlap (own-mask scores do not change)")
    parser.add_argument("--ablations", nargs="+", default=None, choices=[r.name for r in ABLATIONS],
                        metavar="NAME", help="ablations: only these configurations (default all); trained runs are "
                                             "reused, so a later run with more names adds rows")
    args = parser.parse_args(argv)
    if "segmote" not in args.recipes:
        parser.error("--recipes: the main table is SegMoTE's; give segmote (and finetuned_decoder to compare)")
    if not (args.data_root / "mri_abdomen_chaos_t2").is_dir():
        print(f"error: {args.data_root}: not the shared data folder (no mri_abdomen_chaos_t2/)", file=sys.stderr)
        return 1
    if args.out is None:
        args.out = (args.work_dir / "BENCHMARKS.quick.md") if args.quick else REPO / "BENCHMARKS.md"
    args.out = args.out.resolve()
    start = time.perf_counter()
    ctx = Context(args)
    {"main": run_main, "loo": run_loo, "ablations": run_ablations, "shift": run_shift, "speed": run_speed,
     "memory": run_memory}[args.what](ctx)
    log(f"done in {(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
