"""Expert use per modality over each training epoch: which experts the router picks for CT, MR, X-ray..."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["RoutingStatistics"]


class RoutingStatistics:
    """Accumulates, over a training epoch, each sample's ``expert_use`` (gates of the last MoTE block summed
    over its tokens) by its ``modality``, and the batches' ``balance_loss``. At the end of the epoch puts the
    shares in ``engine.state.metrics`` as ``expert_use_<modality>_<e>``, the mean balance loss as
    ``balance_loss`` (what StatsHandler and MLflow log), and the table in ``engine.state.expert_use``."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(0))
        self._balance: list[float] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def _reset(self, engine: Engine) -> None:
        self._sums.clear()
        self._balance.clear()

    def _accumulate(self, engine: Engine) -> None:
        samples: Any = engine.state.output
        if not isinstance(samples, list) or not samples or not isinstance(samples[0], dict):
            return
        self._balance.append(float(samples[0].get("balance_loss", 0.0)))
        for sample in samples:
            usage = sample.get("expert_use")
            if usage is None:
                continue
            modality = str(sample.get("modality", "all"))
            total = self._sums[modality]
            self._sums[modality] = usage.clone() if total.numel() == 0 else total + usage

    def _publish(self, engine: Engine) -> None:
        table = {}
        for modality, total in sorted(self._sums.items()):
            shares = (total / total.sum().clamp(min=1e-12)).tolist()
            table[modality] = shares
            for e, share in enumerate(shares):
                engine.state.metrics[f"expert_use_{modality}_{e}"] = share
        engine.state.expert_use = table
        if self._balance:
            engine.state.metrics["balance_loss"] = sum(self._balance) / len(self._balance)
