"""What the router does, per training epoch and per dataset: the numbers that say whether the mixture mixes.

Logged into ``engine.state.metrics`` (what StatsHandler prints and MLflow records) after every epoch:

- ``expert_use_<dataset>_b<block>e<expert>``: each dataset's share of clean top-k gate mass per block;
- ``routing_jsd_mean`` / ``routing_jsd_min``: Jensen-Shannon divergence (bits) between datasets' expert use,
  mean and smallest over pairs (averaged over blocks); see :mod:`segmote_monai.routing`;
- ``token_weight_entropy`` (and ``_<dataset>``): the entropy of the token weights G per prompt over log T
  (1: the routed token is a plain average);
- ``expert_token_cosine``: mean pairwise cosine of the learned expert tokens; ``expert_output_cosine``: of
  the expert tokens a prompt ends with;
- ``balance_loss``: the batches' mean load-balance loss.

With ``save_dir`` the heatmap of expert use goes to ``<save_dir>/routing_epoch_<n>.png`` (rank 0).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from segmote_monai.distributed import rank_and_world
from segmote_monai.engines.step import unwrap
from segmote_monai.routing import mean_pairwise_cosine, pairwise_divergence
from segmote_monai.visualize import routing_heatmap

__all__ = ["RoutingStatistics"]


class RoutingStatistics:
    """Accumulates the per-row routing records of :class:`~segmote_monai.engines.PromptedTrainIteration` over a
    training epoch and publishes the measures of the module docstring. Under DDP each rank reports its own
    rows. The table of shares is also left in ``engine.state.expert_use`` (dataset -> [blocks, E])."""

    def __init__(self, save_dir: str | os.PathLike | None = None) -> None:
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self._use: dict[str, torch.Tensor] = {}
        self._entropy: dict[str, list[float]] = defaultdict(list)
        self._cosine: list[float] = []
        self._balance: list[float] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def _reset(self, engine: Engine) -> None:
        self._use.clear()
        self._entropy.clear()
        self._cosine.clear()
        self._balance.clear()

    def _accumulate(self, engine: Engine) -> None:
        rows: Any = engine.state.output
        if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict):
            return
        self._balance.append(float(rows[0].get("balance_loss", 0.0)))
        for row in rows:
            use = row.get("expert_use")
            if use is None:
                continue
            name = str(row.get("dataset", "all"))
            self._use[name] = use.clone() if name not in self._use else self._use[name] + use
            self._entropy[name].append(float(row["token_entropy"]))
            if not math.isnan(row.get("token_cosine", float("nan"))):
                self._cosine.append(float(row["token_cosine"]))

    def _publish(self, engine: Engine) -> None:
        metrics = engine.state.metrics
        if self._balance:
            metrics["balance_loss"] = float(np.mean(self._balance))
        model = unwrap(engine.network)
        if model.decoder.expert_tokens is not None:
            metrics["expert_token_cosine"] = float(mean_pairwise_cosine(model.decoder.expert_tokens.weight))
        if not self._use:
            return
        table = {name: (total / total.sum(dim=-1, keepdim=True).clamp(min=1e-12)).numpy()
                 for name, total in sorted(self._use.items())}
        for name, shares in table.items():
            for b, block in enumerate(shares):
                for e, share in enumerate(block):
                    metrics[f"expert_use_{name}_b{b + 1}e{e + 1}"] = float(share)
            metrics[f"token_weight_entropy_{name}"] = float(np.mean(self._entropy[name]))
        metrics["token_weight_entropy"] = float(np.mean([v for values in self._entropy.values() for v in values]))
        if self._cosine:
            metrics["expert_output_cosine"] = float(np.mean(self._cosine))
        divergences = list(pairwise_divergence(table).values())
        if divergences:
            metrics["routing_jsd_mean"] = float(np.mean(divergences))
            metrics["routing_jsd_min"] = float(np.min(divergences))
        engine.state.expert_use = table
        if self.save_dir is not None and rank_and_world()[0] == 0:
            routing_heatmap(table, self.save_dir / f"routing_epoch_{engine.state.epoch:03d}.png",
                            title=f"expert use per dataset, training epoch {engine.state.epoch}")
