"""Does a box that carries its class tell the myocardium (a ring) from the left ventricle (the disc inside it)?
ACDC alone, the same budget for every recipe, several seeds (issue 10's myocardium target, issue 11 item 1).

Recipes, each trained by the bundle on ACDC's training split:

- ``boxes``: Dice loss (``lambda_ce`` 0, the bundle's default before 0.5.0); boxes without a class;
- ``boxes_ce``: the same with the cross-entropy term (``lambda_ce`` 1, the default since 0.5.0), the control for
  the next one, which needs it for its prompt-free rows;
- ``class_prompts``: the variant config ``train_class_prompts.json``'s recipe (``class_prompts``, with
  ``lambda_ce`` 1): half of the box rows carry their class, and every sample is decoded once more with no
  prompt, asked for one class;
- ``class_prompts_augment``: the same with the cache-friendly augmentation (``augment_variants`` 8), the one
  factor changed.

Each is scored on ACDC's test split (own mask and label map, tight and ±10% boxes); the class-conditioned ones
(``class_prompts``, ``class_prompts_augment``) also with each box's class and with no prompt at all (every class
asked for on every image, each class's parts re-decoded with their own boxes as the bundle's evaluation does).

    python benchmarks/class_boxes.py [--seeds 2] [--recipes ...] [--training-patients N] [--section NAME] [--write]

``--training-patients N`` trains on the first N patients of the training split (by patient id) at the same budget,
and scores on the same test split: how much the result depends on the number of patients trained on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from accuracy import load_model, shared_cache, volume_loader, zero_shot_model
from benchmark_data import first_patients, load_splits
from common import REPO, log, provenance, write_section
from training import EVAL_REFINE, Budget, Recipe, train

from segmote_monai.apps.evaluation import BundleEvaluation

RECIPES = (
    Recipe("boxes", {"lambda_ce": 0.0}, "Dice loss (the default before 0.5.0), boxes without a class"),
    Recipe("boxes_ce", {"lambda_ce": 1.0}, "the same with the cross-entropy term (lambda_ce 1)"),
    Recipe("class_prompts", {"class_prompts": True, "lambda_ce": 1.0},
           "train_class_prompts.json: class_prompts, lambda_ce 1 (half of the box rows with their class, plus one "
           "class-conditioned prompt-free row per sample)"),
    Recipe("class_prompts_augment", {"class_prompts": True, "lambda_ce": 1.0, "augment_variants": 8},
           "the same with augment_variants 8: half of the samples get one of 8 fixed variants (rotation up to "
           "20 degrees, zoom 0.8-1.25, gamma 0.7-1.4), each image encoded at most 9 times"),
)
SETTINGS = (("own_mask", "box_tight"), ("own_mask", "box_jitter_0.1"), ("label_map", "box_tight"),
            ("label_map", "box_jitter_0.1"))
SETTING_TITLES = {"box_tight": "tight", "box_jitter_0.1": "±10%", "prompt_free": "no prompt"}


def per_class(summary: dict, scoring: str, setting: str, model: str = "segmote") -> dict[str, float]:
    return {r["class"]: r["mean_dice"] for r in summary["results"]
            if r["scoring"] == scoring and r["setting"] == setting and r["model"] == model}


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    text = f"{np.mean(values):.3f}"
    return text + (f" ({min(values):.3f}-{max(values):.3f})" if len(values) > 1 else "")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "benchmarks")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples-per-epoch", type=int, default=150)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--recipes", nargs="+", default=[r.name for r in RECIPES],
                        choices=[r.name for r in RECIPES])
    parser.add_argument("--training-patients", type=int, default=None,
                        help="train on the first N patients of the training split only (default: all)")
    parser.add_argument("--prompt-free-refine", type=float, default=EVAL_REFINE,
                        help="no prompt: each class's parts re-decoded with their own boxes (evaluate.json's "
                             "eval_prompt_free_refine; a negative value: the prompt-free masks as they are)")
    parser.add_argument("--section", default="acdc_class_boxes", help="the BENCHMARKS.md section --write fills")
    parser.add_argument("--heading", default="ACDC: boxes that carry their class (issues 10 and 11)")
    parser.add_argument("--write", action="store_true", help="put the section in BENCHMARKS.md")
    args = parser.parse_args(argv)
    refine = args.prompt_free_refine if args.prompt_free_refine >= 0 else None
    work = args.work_dir.resolve()
    acdc = load_splits(args.data_root.resolve(), work, ("acdc",))["acdc"]
    trained_on = acdc if args.training_patients is None else first_patients(acdc, args.training_patients, work)
    suffix = "" if args.training_patients is None else f"_{args.training_patients}patients"
    cache = shared_cache(work, zero_shot_model())
    budget = Budget(epochs=args.epochs, samples_per_epoch=args.samples_per_epoch, learning_rate=args.learning_rate,
                    lr_milestones=(round(args.epochs * 0.6), round(args.epochs * 0.9)))
    evals = work / "eval_class_boxes"

    def evaluate(model, name: str, **kwargs) -> dict:
        return BundleEvaluation(network=model, datalist=acdc, load=volume_loader(acdc), backbone="lite_medsam",
                                output_dir=evals / name, section="test", seed=0, cache=cache,
                                prompt_free_refine=refine, **kwargs).run()

    log("zero-shot")
    rows: dict[str, list[dict]] = {"zero-shot": [evaluate(zero_shot_model(), "zero_shot", baselines={})]}
    minutes: dict[str, list[float]] = {}
    recipes = [r for r in RECIPES if r.name in args.recipes]
    for recipe in recipes:
        for seed in range(args.seeds):
            run = train(recipe, [trained_on.path], budget=budget, seed=seed, out_dir=work / "runs" /
                        f"acdc_{recipe.name}{suffix}_seed{seed}", cache_dir=work / "cache", log=log)
            minutes.setdefault(recipe.name, []).append(run["seconds"] / 60)
            model = load_model(run["checkpoint"])
            log(f"evaluating {recipe.name} seed {seed}")
            rows.setdefault(recipe.name, []).append(evaluate(model, f"{recipe.name}_seed{seed}", baselines={}))
            if model.class_conditioned:
                rows.setdefault(f"{recipe.name}, boxes with their class", []).append(
                    evaluate(model, f"{recipe.name}_class_seed{seed}", baselines={}, class_boxes=True,
                             prompt_free=False))

    classes = [acdc.labels[c] for c in acdc.classes]
    header = "| recipe | scoring | boxes | " + " | ".join(classes) + " | mean |"
    lines = [header, "|---|---|---|" + "---:|" * (len(classes) + 1)]
    for name, summaries in rows.items():
        settings = list(SETTINGS) + ([("label_map", "prompt_free")] if "prompt_free" in {
            r["setting"] for r in summaries[0]["results"]} else [])
        for scoring, setting in settings:
            values = [per_class(s, scoring, setting) for s in summaries]
            means = [float(np.mean([v[c] for c in classes if c in v])) for v in values]
            lines.append(f"| {name} | {scoring.replace('_', ' ')} | {SETTING_TITLES[setting]} | " + " | ".join(
                cell([v[c] for v in values if c in v]) for c in classes) + f" | {cell(means)} |")
    refine_text = (f", each class's parts re-decoded with their own boxes and the class (prompt_free_refine "
                   f"{refine:g})" if refine is not None else ", the prompt-free masks as they are")
    time_text = ", ".join(f"{n} {np.mean(m):.1f} min" for n, m in minutes.items())
    recipe_text = "; ".join(f"**{r.name}**: {r.description}" for r in recipes)
    body = f"""## {args.heading}

{provenance()}
- seeds: {', '.join(map(str, range(args.seeds)))} (training; the jittered boxes use seed 0)
- training, the same for every recipe, by the bundle on ACDC's training split alone ({len(trained_on.items('training'))}
  images of {len({i['patient'] for i in trained_on.items('training')})} patients): {budget.text()}
- recipes: {recipe_text}
- mean training time per run (a first run also encodes what the shared embedding cache lacks): {time_text}
- evaluation: ACDC's test split ({len(acdc.items('test'))} images), Dice per image and class, mean over images, then
  over seeds (in parentheses the range of the seeds); "own mask" scores each class on its own box's mask (the
  paper's protocol), "label map" on the merged map (the smaller mask wins where two overlap); "no prompt": every
  class asked for on every image (class-conditioned PPT){refine_text}

{chr(10).join(lines)}
"""
    print(body)
    if args.write:
        write_section(REPO / "BENCHMARKS.md", args.section, body)
    return body


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
