"""The benchmarks: measured tables for BENCHMARKS.md, each with the machine, commit, command and seed.

    python benchmarks/run.py main        # accuracy, routing, speed and memory (under 2 h on a 2-core CPU)
    python benchmarks/run.py ablations   # no PPT, lambda 0, 1/4/8 experts, top1, unfrozen decoder
    python benchmarks/run.py speed       # the speed, memory and cache sections alone
    python benchmarks/run.py memory      # the peak-memory section alone
    python benchmarks/run.py main --quick  # every step on a few cases, a few minutes (writes elsewhere)

Data: the committed patient-level splits in ``benchmarks/splits/`` over ``--data-root`` (default
``../shared/data`` beside the repository). All configurations share one embedding cache under
``--work-dir`` (default ``runs/benchmarks``), so the frozen encoder runs once per slice across runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from accuracy import (
    ABLATIONS,
    DATASETS,
    Variant,
    budget_for,
    class_rows,
    dataset_means,
    evaluate,
    load_splits,
    main_tables,
    make_model,
    routing_heatmap,
    routing_table,
    shared_cache,
    targets,
)
from common import REPO, provenance, write_section
from joint import SliceBank, TrainingBudget, train_joint

from segmote_monai.apps.evaluation import zero_shot_like
from segmote_monai.networks import build_segmote, save_trainable


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = args.work_dir.resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        limit = 1 if args.quick else None
        self.datalists = load_splits(args.data_root.resolve(), self.work, DATASETS, max_test_cases=limit)
        self.num_classes = 1 + sum(max(d.classes) for d in self.datalists.values())
        # ablations: 8 configurations at a fifth of the main budget each, to fit in about an hour on 2 CPU cores
        default = ({"epochs": 3, "steps_per_epoch": 8} if args.quick else
                   {"epochs": 15, "steps_per_epoch": 10} if args.what == "ablations" else
                   {"epochs": 15, "steps_per_epoch": 50})
        self.budget = TrainingBudget(epochs=args.epochs or default["epochs"],
                                     steps_per_epoch=args.steps_per_epoch or default["steps_per_epoch"])
        self._bank: SliceBank | None = None

    def bank(self, model) -> SliceBank:
        if self._bank is None:
            start = time.perf_counter()
            quick = self.args.quick
            self._bank = SliceBank.build(model, list(self.datalists.values()), backbone="lite_medsam",
                                         cache=shared_cache(self.work, model), max_cases=3 if quick else None,
                                         max_slices_per_case=3 if quick else None)
            counts = {n: self._bank.dataset.count(i) for i, n in enumerate(self.datalists)}
            log(f"training slices {counts} embedded or read in {time.perf_counter() - start:.0f} s")
        return self._bank

    def train(self, variant: Variant, model, budget: TrainingBudget, subdir: str = "models") -> dict:
        log(f"training {variant.name}: {trainable(model):,} trainable parameters, {budget.epochs} epochs x "
            f"{budget.steps_per_epoch} steps x batch {budget.batch_size}")
        stats = train_joint(model, self.bank(model), budget, seed=self.args.seed, log=log)
        path = self.work / subdir / f"{variant.name}.pt"
        metadata = {"datasets": list(self.datalists), "budget": vars(budget) | {"milestones": list(budget.milestones)}}
        save_trainable(model, path, metadata=metadata)
        return stats | {"trainable": trainable(model), "checkpoint": str(path.relative_to(REPO))
                        if path.is_relative_to(REPO) else str(path)}

    def budget_text(self, budget: TrainingBudget) -> str:
        return (f"{budget.epochs} epochs x {budget.steps_per_epoch} steps x batch {budget.batch_size} "
                f"({budget.epochs * budget.steps_per_epoch * budget.batch_size} samples), Adam lr "
                f"{budget.learning_rate:g} halved at {', '.join(f'{m:.0%}' for m in budget.milestones)} of training, "
                f"boxes jittered by up to {budget.box_jitter:.0%} per side, lambda {budget.lambda_balance:g}, "
                f"PPT carrier probability 1 -> 0 over the first {budget.ppt_decay_fraction:.0%}")


def data_text(ctx: Context) -> str:
    rows = ["| dataset | modality | task | training | validation | test (cases) |", "|---|---|---|---:|---:|---:|"]
    for d in ctx.datalists.values():
        rows.append(f"| {d.name} | {d.modality} | {d.task} | {len(d.items('training'))} | "
                    f"{len(d.items('validation'))} | {len(d.items('test'))} "
                    f"({len({i['patient'] for i in d.items('test')})}) |")
    return "\n".join(rows)


def run_main(ctx: Context) -> None:
    args, out = ctx.args, ctx.args.out
    variant = ABLATIONS[0]
    segmote = make_model(variant, ctx.num_classes)
    seg_stats = ctx.train(variant, segmote, ctx.budget)
    finetuned = build_segmote("lite_medsam", num_expert_tokens=0, num_ppt_queries=0, train_decoder=True)
    ft_stats = ctx.train(Variant("finetuned_decoder", {}), finetuned, ctx.budget)
    from accuracy import RoutingRecorder

    recorder = RoutingRecorder(segmote)
    summaries = evaluate(segmote, ctx.datalists, {"zero_shot": zero_shot_like(segmote), "finetuned_decoder": finetuned},
                         shared_cache(ctx.work, segmote), ctx.work / "eval" / "main", seed=args.seed,
                         recorder=recorder, log=log)
    (ctx.work / "eval" / "main" / "summaries.json").write_text(json.dumps(summaries, indent=1))
    shares = recorder.shares()
    png = args.out.parent / "benchmarks" / "figures" / ("routing_quick.png" if args.quick else "routing.png")
    routing_heatmap(shares, ctx.datalists, png)

    body = f"""## Accuracy: SegMoTE against the frozen backbone and a fine-tuned decoder

{provenance(args.seed)}
- data: `../shared/data`, the committed patient-level splits in `benchmarks/splits/` (test cases below){
' (--quick: 1 test case per dataset, 3 training cases x 3 slices)' if args.quick else ''}
- training (each model, jointly on every dataset's training split, one shared embedding cache):
  {ctx.budget_text(ctx.budget)}; a step draws a dataset uniformly, then one of its (slice, class) samples;
  binary datasets are prompt-free (PPT) for half of their samples
- SegMoTE: frozen `lite_medsam` + 4 expert tokens, 4 experts top-2, PPT (2 queries):
  {seg_stats['trainable']:,} trainable parameters, trained in {seg_stats['seconds'] / 60:.1f} min, final loss
  {seg_stats['final_loss']:.3f}
- fine-tuned decoder (the MedSAM recipe): SAM's mask decoder unfrozen, no experts, no PPT, same budget:
  {ft_stats['trainable']:,} trainable parameters, {ft_stats['seconds'] / 60:.1f} min, final loss
  {ft_stats['final_loss']:.3f}
- zero-shot: the frozen backbone alone (its own output token), on the same boxes
- evaluation: every test case, one box per slice and class from its label, tight and with each side moved by up
  to 10% of the box size (seeded), 3D Dice on the reassembled volume (2D sets per image); prompt-free on the
  binary datasets; no model selection (the last step's weights)

{data_text(ctx)}

{main_tables(summaries, ctx.datalists)}

Targets:

{targets(summaries, ctx.datalists)}
"""
    write_section(out, "accuracy", body)
    routing = f"""## Routing: expert use per modality

{provenance(args.seed)}
- the SegMoTE model above on every test prompt (tight, jittered, prompt-free): each two-way block's share of
  the routers' gate mass per expert, summed over prompts and expert tokens

{routing_table(shares, ctx.datalists)}

![expert use per dataset]({png.relative_to(out.parent)})
"""
    write_section(out, "routing", routing)
    log(f"accuracy and routing written to {out}")
    run_speed(ctx)


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
                    max_volumes=2 if args.quick else 6, seed=args.seed)
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


def run_ablations(ctx: Context) -> None:
    args = ctx.args
    rows, summaries = [], {}
    models = {}
    for variant in ABLATIONS:
        model = make_model(variant, ctx.num_classes)
        stats = ctx.train(variant, model, budget_for(variant, ctx.budget), subdir="models/ablations")
        summaries[variant.name] = evaluate(model, ctx.datalists, {}, shared_cache(ctx.work, model),
                                           ctx.work / "eval" / "ablations" / variant.name, seed=args.seed, log=log)
        rows.append((variant, stats))
        models[variant.name] = model
    header = ("| configuration | trainable | " + " | ".join(d.name for d in ctx.datalists.values())
              + " | mean tight | mean ±10% | ACDC myocardium tight | prompt-free mean |")
    lines = [header, "|---|---:|" + "---:|" * (len(ctx.datalists) + 4)]
    for variant, stats in rows:
        s = summaries[variant.name]
        means, classes = dataset_means(s), class_rows(s)
        tight = [means[(n, "box_tight", "segmote")]["mean_dice"] for n in ctx.datalists]
        jit = [means[(n, "box_jitter_0.1", "segmote")]["mean_dice"] for n in ctx.datalists]
        free = [means[(n, "prompt_free", "segmote")]["mean_dice"] for n in ctx.datalists
                if (n, "prompt_free", "segmote") in means]
        myo = classes.get(("acdc", "myocardium", "box_tight", "segmote"))
        lines.append(f"| {variant.name}: {variant.description} | {stats['trainable']:,} | "
                     + " | ".join(f"{t:.3f} / {j:.3f}" for t, j in zip(tight, jit))
                     + f" | {sum(tight) / len(tight):.3f} | {sum(jit) / len(jit):.3f} | "
                     + (f"{myo['mean_dice']:.3f}" if myo else "-") + " | "
                     + (f"{sum(free) / len(free):.3f}" if free else "-") + " |")
    body = f"""## Ablations

{provenance(args.seed)}
- each configuration trained from the same seed on the same data as the main table, at a fifth of its
  budget: {ctx.budget_text(ctx.budget)} (learning rate as named)
- per dataset: mean Dice over cases, tight / ±10% boxes; prompt-free only where the configuration has PPT

{chr(10).join(lines)}
"""
    write_section(args.out, "ablations", body)
    log(f"ablations written to {args.out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("main", "ablations", "speed", "memory"))
    parser.add_argument("--quick", action="store_true", help="a few cases and steps; writes BENCHMARKS.quick.md")
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "benchmarks")
    parser.add_argument("--out", type=Path, default=None, help="default BENCHMARKS.md (quick: the work dir's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    args = parser.parse_args(argv)
    if not (args.data_root / "mri_abdomen_chaos_t2").is_dir():
        print(f"error: {args.data_root}: not the shared data folder (no mri_abdomen_chaos_t2/)", file=sys.stderr)
        return 1
    if args.out is None:
        args.out = (args.work_dir / "BENCHMARKS.quick.md") if args.quick else REPO / "BENCHMARKS.md"
    args.out = args.out.resolve()
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    ctx = Context(args)
    {"main": run_main, "ablations": run_ablations, "speed": run_speed, "memory": run_memory}[args.what](ctx)
    log(f"done in {(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
