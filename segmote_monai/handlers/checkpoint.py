"""Saving the trainable part (never SAM) during training: the latest each epoch, the best by a metric."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from segmote_monai.distributed import rank_and_world
from segmote_monai.engines.step import unwrap
from segmote_monai.networks.checkpoint import save_trainable

__all__ = ["TrainableCheckpointSaver"]


class TrainableCheckpointSaver:
    """Attached to the trainer, writes ``<save_dir>/segmote_latest.pt`` after every epoch; attached to the
    validation evaluator as well, ``segmote_best.pt`` whenever ``key_metric`` improves. Only rank 0 writes."""

    def __init__(self, save_dir: str | os.PathLike, network: Any, *, key_metric: str = "val_mean_dice",
                 half: bool = False, metadata: dict | None = None) -> None:
        self.save_dir = Path(save_dir)
        self.metadata = metadata
        self.network = network
        self.key_metric = key_metric
        self.half = half
        self.best: float | None = None

    def attach(self, engine: Engine) -> None:
        from monai.engines import Evaluator

        handler = self.save_best if isinstance(engine, Evaluator) else self.save_latest
        engine.add_event_handler(Events.EPOCH_COMPLETED, handler)

    def save_latest(self, engine: Engine) -> None:
        if rank_and_world()[0] == 0:
            save_trainable(unwrap(self.network), self.save_dir / "segmote_latest.pt", half=self.half,
                           metadata=self.metadata)

    def save_best(self, evaluator: Engine) -> None:
        value = evaluator.state.metrics.get(self.key_metric)
        if value is None or (self.best is not None and value <= self.best):
            return
        self.best = float(value)
        if rank_and_world()[0] == 0:
            save_trainable(unwrap(self.network), self.save_dir / "segmote_best.pt", half=self.half,
                           metadata=self.metadata)
