"""Expert use per modality over each training epoch: which experts the router picks for CT, MR, X-ray..."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["RoutingStatistics"]


class RoutingStatistics:
    """Accumulates the trainer output's ``expert_use`` ([B, E] gates of the last MoTE block, summed over
    tokens) by each sample's ``modality``; at the end of the epoch puts the shares in
    ``engine.state.metrics`` as ``expert_use_<modality>_<e>`` (what StatsHandler and MLflow log) and the
    table in ``engine.state.expert_use``."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(0))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def _reset(self, engine: Engine) -> None:
        self._sums.clear()

    def _accumulate(self, engine: Engine) -> None:
        output: Any = engine.state.output
        usage = output.get("expert_use") if isinstance(output, dict) else None
        if usage is None:
            return
        modalities = output.get("modality") or ["all"] * len(usage)
        for modality, row in zip(modalities, usage):
            total = self._sums[str(modality)]
            self._sums[str(modality)] = row.clone() if total.numel() == 0 else total + row

    def _publish(self, engine: Engine) -> None:
        table = {}
        for modality, total in sorted(self._sums.items()):
            shares = (total / total.sum().clamp(min=1e-12)).tolist()
            table[modality] = shares
            for e, share in enumerate(shares):
                engine.state.metrics[f"expert_use_{modality}_{e}"] = share
        engine.state.expert_use = table
