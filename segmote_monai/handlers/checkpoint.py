"""Saving the trainable part (never SAM) during training: the latest each epoch, the best by a metric."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from segmote_monai.distributed import rank_and_world
from segmote_monai.engines.step import unwrap
from segmote_monai.networks.checkpoint import save_trainable

__all__ = ["BEST_METRIC_STATE", "TrainableCheckpointSaver"]

#: The trainer's ``state`` attribute holding the best validation metric so far (:class:`TrainingResume` keeps it).
BEST_METRIC_STATE = "segmote_best_metric"


class TrainableCheckpointSaver:
    """Attached to the trainer: writes ``<save_dir>/segmote_latest.pt`` after every epoch and, after each run of
    ``evaluator``, ``segmote_best.pt`` whenever ``key_metric`` improves. Only rank 0 writes.

    ``model_path`` (the bundle's ``models/model.pt``, which inference and MONAI Label load) gets the best weights
    too, or, when no validation ran (MONAI Label with no validation split), the final ones when training ends.
    The best value so far lives in the trainer's ``state.<BEST_METRIC_STATE>``, so that a resumed run keeps it.
    """

    def __init__(self, save_dir: str | os.PathLike, network: Any, *, evaluator: Engine | None = None,
                 key_metric: str = "val_mean_dice", half: bool = False, metadata: dict | None = None,
                 model_path: str | os.PathLike | None = None) -> None:
        self.save_dir = Path(save_dir)
        self.model_path = Path(model_path) if model_path else None
        self.metadata = metadata
        self.network = network
        self.evaluator = evaluator
        self.key_metric = key_metric
        self.half = half
        self.trainer: Engine | None = None

    @property
    def best(self) -> float | None:
        return getattr(self.trainer.state, BEST_METRIC_STATE, None) if self.trainer is not None else None

    def attach(self, engine: Engine) -> None:
        self.trainer = engine
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save_latest)
        engine.add_event_handler(Events.COMPLETED, self.save_final)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self.save_best)

    def _save(self, path: Path) -> None:
        save_trainable(unwrap(self.network), path, half=self.half, metadata=self.metadata)

    def save_latest(self, engine: Engine) -> None:
        if rank_and_world()[0] == 0:
            self._save(self.save_dir / "segmote_latest.pt")

    def save_final(self, engine: Engine) -> None:
        if self.model_path is not None and self.best is None and rank_and_world()[0] == 0:
            self._save(self.model_path)

    def save_best(self, evaluator: Engine) -> None:
        value = evaluator.state.metrics.get(self.key_metric)
        if value is None or (self.best is not None and value <= self.best):
            return
        setattr(self.trainer.state, BEST_METRIC_STATE, float(value))
        if rank_and_world()[0] == 0:
            self._save(self.save_dir / "segmote_best.pt")
            if self.model_path is not None:
                self._save(self.model_path)
