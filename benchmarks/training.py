"""Training for the benchmarks, through the bundle's own trainer: ``python -m monai.bundle run training`` with
``train.json``, several datalists at once, and the recipe's options as command-line overrides. There is no
second training loop: what is measured is what users run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import REPO

CONFIGS = REPO / "bundle" / "configs"
#: the bundle's default weight of the cross-entropy term (0 is the paper's Dice alone), read, not repeated
BUNDLE_LAMBDA_CE = float(json.loads((CONFIGS / "train.json").read_text())["lambda_ce"])
#: the evaluation's own default for automatic masks (``prompt_free_refine``), read, not repeated
EVAL_REFINE = float(json.loads((CONFIGS / "evaluate.json").read_text())["eval_prompt_free_refine"])


@dataclass(frozen=True)
class Recipe:
    """A configuration to train: bundle config keys and their values."""

    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


RECIPES = {r.name: r for r in (
    Recipe("segmote", {}, "SegMoTE as the bundle trains it by default: 4 read-only expert tokens, 4 experts top-2, "
                          "residual mask head, PPT on binary sets (extra prompt-free rows for half of their samples)"),
    Recipe("tokens_no_mote", {"num_experts": 0}, "the same without MoTE: expert tokens, equal-weight routed token, "
                                                 "hypernetwork, PPT"),
    Recipe("finetuned_decoder", {"num_expert_tokens": 0, "num_ppt_queries": 0, "train_decoder": True},
           "SAM's mask decoder fine-tuned (the MedSAM recipe), no experts, no PPT"),
)}


@dataclass(frozen=True)
class Budget:
    """The same for every recipe: epochs x samples per epoch box-prompted samples, batch and schedule."""

    epochs: int = 10
    samples_per_epoch: int = 300
    batch_size: int = 10
    learning_rate: float = 5e-4
    lr_milestones: tuple[int, ...] = (6, 9)
    box_jitter: float = 0.1
    dataset_sampling: str = "uniform"
    lambda_ce: float = BUNDLE_LAMBDA_CE
    #: the bundle's dataset_weights, one per datalist in the order they are given (empty: none)
    dataset_weights: tuple[float, ...] = ()
    #: how the text names the weights that are not 1, e.g. "ACDC x 3"
    weights_text: str = ""

    @property
    def samples(self) -> int:
        return self.epochs * self.samples_per_epoch

    def text(self) -> str:
        return (f"{self.epochs} epochs x {self.samples_per_epoch} box-prompted samples (batch {self.batch_size}; "
                f"{self.samples} in all), Adam lr {self.learning_rate:g} halved at epochs "
                f"{', '.join(map(str, self.lr_milestones))}, boxes jittered by up to {self.box_jitter:.0%} per side, "
                f"datasets drawn {self.dataset_sampling}ly"
                + (f" with the weights {self.weights_text}" if self.weights_text else "") + ", loss "
                + (f"Dice + {self.lambda_ce:g} x cross-entropy" if self.lambda_ce else "Dice") + " (+ load balance)")

    def overrides(self) -> dict[str, Any]:
        return {"max_epochs": self.epochs, "samples_per_epoch": self.samples_per_epoch, "batch_size": self.batch_size,
                "learning_rate": self.learning_rate, "lr_milestones": list(self.lr_milestones),
                "box_jitter": self.box_jitter, "dataset_sampling": self.dataset_sampling,
                "lambda_ce": self.lambda_ce, **({"dataset_weights": list(self.dataset_weights)}
                                                if self.dataset_weights else {})}


def _arg(value: Any) -> str:
    """A value as python-fire reads it back (lists and bools as Python literals)."""
    return repr([str(v) if isinstance(v, Path) else v for v in value]) if isinstance(value, (list, tuple)) else \
        str(value)


def train(recipe: Recipe, datalists: Sequence[Path], *, budget: Budget, seed: int, out_dir: Path, cache_dir: Path,
          extra: Mapping[str, Any] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the bundle's training; returns the checkpoint, the wall time and the last epoch's losses.

    A run whose ``models/segmote_latest.pt`` and ``done.json`` exist is not run again (the benchmark can be
    resumed after an interruption).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    done = out_dir / "done.json"
    if done.exists():
        log(f"  {recipe.name} seed {seed}: already trained ({out_dir})")
        return json.loads(done.read_text())
    overrides = {**budget.overrides(), "seed": seed, "val_interval": budget.epochs, "resume": False,
                 **recipe.overrides, **(extra or {})}
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json"),
               "--logging_file", str(CONFIGS / "logging.conf"), "--datalists", _arg(list(datalists)),
               "--output_dir", str(out_dir), "--cache_dir", str(cache_dir), "--bundle_root", str(REPO / "bundle"),
               "--model_path", str(out_dir / "models" / "model.pt")]
    for key, value in overrides.items():
        command += [f"--{key}", _arg(value)]
    log(f"  training {recipe.name} seed {seed}: {' '.join(command[3:5])} ... ({len(overrides)} overrides)")
    start = time.perf_counter()
    with open(out_dir / "train.log", "w") as stream:
        result = subprocess.run(command, cwd=REPO, stdout=stream, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    text = (out_dir / "train.log").read_text()
    if result.returncode != 0:
        raise RuntimeError(f"training {recipe.name} seed {seed} failed ({out_dir / 'train.log'}):\n{text[-3000:]}")
    losses = [float(v) for v in re.findall(r"train_loss: ([0-9.]+)", text)]
    epoch_metrics = re.findall(r"Epoch\[\d+\] Metrics -- (.*balance_loss.*)", text)
    stats = {"checkpoint": str(out_dir / "models" / "segmote_latest.pt"), "seconds": seconds,
             "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])), "command": command[1:],
             "last_epoch_metrics": epoch_metrics[-1] if epoch_metrics else ""}
    done.write_text(json.dumps(stats, indent=1))
    log(f"  {recipe.name} seed {seed}: {seconds / 60:.1f} min, final loss {stats['final_loss']:.3f}")
    return stats
