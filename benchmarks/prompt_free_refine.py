"""Binary prompt-free (PPT) masks as they are, or each large-enough part re-decoded with its own tight box.

    python benchmarks/prompt_free_refine.py [--runs segmote_ce1_20x300_wacdc3_seed0 segmote_ce1_20x300_wacdc3_seed1]
        [--fractions 0 0.1 0.25 0.5 1] [--sections validation training test] [--sets ph2 kvasir xray_lung]
        [--write [--section NAME --heading TEXT]]
    python benchmarks/prompt_free_refine.py --alone ph2 --seeds 3 --sets ph2

The checkpoints are the last epochs of runs under ``<work-dir>/runs/<run>/models/``: by default ``benchmarks/run.py
main``'s, trained on the five sets' training splits, one per seed. ``--alone SET`` trains (or reuses) instead the
binary model a team with one set would train: SegMoTE by the bundle on SET's training split alone, at the benchmarks'
budget (``training.Budget``), one run per seed, ``segmote_ce<lambda_ce>_<SET>_only_seed<n>``.

On each binary set (PH2, Kvasir-SEG, the chest X-rays) and split, every image is segmented with no prompt by
:class:`~segmote_monai.inferers.SliceSegmenter`, with ``prompt_free_refine`` off and at each fraction (the parts of
the prompt-free mask with at least that fraction of the largest part's area, each decoded again with its tight box,
their union kept). Dice per image, mean per set, split and run. The fraction is chosen on the validation and
training splits; the test split is reported beside them. The decoder time with a cached encoder output, per image,
is printed with and without the refine at the chosen fraction, against the encoder's time on a few images. Prints a
Markdown section (machine, commit, command); ``--write`` puts it in BENCHMARKS.md.
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
from training import RECIPES, Budget, train

from segmote_monai.data.datalist import Datalist
from segmote_monai.inferers import SliceSegmenter

BINARY = ("ph2", "kvasir", "xray_lung")
TITLES = {"ph2": "PH2 dermoscopy", "kvasir": "Kvasir-SEG", "xray_lung": "Chest X-ray (Shenzhen)"}


def dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    return 2 * (pred & target).sum().item() / max(pred.sum().item() + target.sum().item(), 1)


def fraction_name(fraction: float | None) -> str:
    return "off" if fraction is None else f"{fraction:g}"


def train_alone(name: str, datalist: Datalist, seeds: int, work: Path) -> list[str]:
    """Trains SegMoTE by the bundle on set ``name``'s training split (of ``datalist``) alone, seeds 0..N-1 (a
    finished run is reused); returns the run names."""
    budget, runs = Budget(), []
    for seed in range(seeds):
        runs.append(f"segmote_ce{budget.lambda_ce:g}_{name}_only_seed{seed}")
        train(RECIPES["segmote"], [datalist.path], budget=budget, seed=seed, out_dir=work / "runs" / runs[-1],
              cache_dir=work / "cache", log=log)
    return runs


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    runs = parser.add_mutually_exclusive_group()
    runs.add_argument("--runs", nargs="+",
                      default=["segmote_ce1_20x300_wacdc3_seed0", "segmote_ce1_20x300_wacdc3_seed1"])
    runs.add_argument("--alone", choices=BINARY, default=None,
                      help="train (or reuse) SegMoTE on this set's training split alone, one run per seed, "
                           "and score those runs instead of --runs")
    parser.add_argument("--seeds", type=int, default=3, help="--alone: seeds 0..N-1")
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.0, 0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--sections", nargs="+", default=["validation", "training", "test"])
    parser.add_argument("--sets", nargs="+", choices=BINARY, default=list(BINARY))
    parser.add_argument("--section", default="prompt_free_refine", help="the BENCHMARKS.md section --write fills")
    parser.add_argument("--heading", default="Prompt-free masks re-decoded with their own boxes (issue 11, automatic "
                                             "on binary sets)")
    parser.add_argument("--timed", type=float, default=0.5, help="the fraction whose decoder time is printed")
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "benchmarks")
    parser.add_argument("--write", action="store_true", help="put the section in BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    work = args.work_dir.resolve()
    # the set trained --alone need not be among the scored --sets
    needed = args.sets + ([args.alone] if args.alone is not None and args.alone not in args.sets else [])
    datalists = load_splits(args.data_root.resolve(), work, needed)
    cache = shared_cache(work, zero_shot_model())
    if args.alone is not None:
        args.runs = train_alone(args.alone, datalists[args.alone], args.seeds, work)
    settings: list[float | None] = [None, *args.fractions]
    scores: dict[tuple[str, str, str, str], list[float]] = {}  # (run, set, split, setting) -> Dice per image
    times: dict[str, list[float]] = {"off": [], "refined": []}
    for run in args.runs:
        model = load_model(work / "runs" / run / "models" / "segmote_latest.pt")
        segmenter = SliceSegmenter(model, backbone="lite_medsam", cache=cache)
        for name in args.sets:
            datalist = datalists[name]
            load, label = volume_loader(datalist), datalist.classes[0]
            for section in args.sections:
                for item in datalist.items(section):
                    case = load(item)
                    truth = case["label"] == label
                    segmenter(case["image"], None)  # the encoder's output cached: the times below are the decoder's
                    for setting in settings:
                        start = time.perf_counter()
                        pred = segmenter(case["image"], None, prompt_free_class=label, prompt_free_refine=setting)
                        elapsed = time.perf_counter() - start
                        if setting is None or setting == args.timed:
                            times["off" if setting is None else "refined"].append(elapsed)
                        scores.setdefault((run, name, section, fraction_name(setting)), []).append(
                            dice(pred == label, truth))
                log(f"{run} {name} {section}: done")
    # the encoder's own time on three images, uncached, for scale
    model = load_model(work / "runs" / args.runs[0] / "models" / "segmote_latest.pt")
    plain = SliceSegmenter(model, backbone="lite_medsam")
    first = datalists[args.sets[0]]
    image = volume_loader(first)(first.items("test")[0])["image"]
    encoder = []
    for _ in range(3):
        start = time.perf_counter()
        plain.embed(plain.preprocess(image)[None])
        encoder.append(time.perf_counter() - start)

    header = ["set", "split", "images", "prompt-free mask"] + [f"refined, parts >= {f:g} of the largest"
                                                                for f in args.fractions]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---:|" + "---:|" * (len(header) - 3)]
    for name in args.sets:
        for section in args.sections:
            cells = [TITLES[name], section, str(len(scores[(args.runs[0], name, section, "off")]))]
            for setting in settings:
                per_run = [statistics.fmean(scores[(run, name, section, fraction_name(setting))]) for run in args.runs]
                spread = f" ({', '.join(f'{v:.3f}' for v in per_run)})" if len(per_run) > 1 else ""
                cells.append(f"{statistics.fmean(per_run):.3f}{spread}")
            lines.append("| " + " | ".join(cells) + " |")
    body = (
        f"## {args.heading}\n\n"
        + provenance()
        + "\n- runs: " + ", ".join(f"`{r}`" for r in args.runs) + " (last epoch)\n\n"
        "Mean Dice per image over the runs, in parentheses each run's; every image of each split, no prompt. "
        "`prompt-free mask`: PPT's mask as it is (the main table's prompt-free column); `refined`: each 4-connected "
        "part of it with at least that fraction of the largest part's area decoded again with its own tight box, "
        "the union kept (`prompt_free_refine`).\n\n"
        + "\n".join(lines)
        + f"\n\nDecoder time per image with the encoder's output cached (median over {len(times['off'])} calls): "
        f"{statistics.median(times['off']) * 1000:.0f} ms prompt-free, "
        f"{statistics.median(times['refined']) * 1000:.0f} ms refined at {args.timed:g}; "
        f"the encoder {statistics.median(encoder) * 1000:.0f} ms per image (median of 3)."
    )
    print(body)
    if args.write:
        write_section(REPO / "BENCHMARKS.md", args.section, body)
    return body


if __name__ == "__main__":
    main()
