"""Resuming a killed training run: everything it needs, written atomically after every epoch."""

from __future__ import annotations

import logging
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from segmote_monai.atomic import atomic_path
from segmote_monai.distributed import rank_and_world
from segmote_monai.engines.step import unwrap
from segmote_monai.errors import InputFileError
from segmote_monai.handlers.checkpoint import BEST_METRIC_STATE
from segmote_monai.networks.checkpoint import load_trainable_payload, trainable_payload, upgrade_payload
from segmote_monai.networks.weights_file import load_weights_file
from segmote_monai.options import as_bool

__all__ = ["TrainingResume"]

logger = logging.getLogger(__name__)
FORMAT = "segmote-monai-resume"


def _plain(state: dict[str, Any]) -> dict[str, Any]:
    """A scheduler's state with its Counters (MultiStepLR's milestones) as dicts, which ``weights_only`` reads."""
    return {k: dict(v) if isinstance(v, Counter) else v for k, v in state.items()}


def _rng_state() -> dict[str, Any]:
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["gauss"]))


class TrainingResume:
    """Attached to the trainer. After every epoch (after validation), writes ``<save_dir>/resume_state.pt``:
    the trainable weights with the backbone's identity and options, the optimiser, the LR scheduler, the
    epoch and iteration, the best validation metric so far and the torch / numpy / python RNG states. When
    the run starts and that file exists, it is loaded (``weights_only``) and training continues with the next
    epoch; PPT's carrier probability follows from the epoch. So rerunning a killed command loses at most the
    epoch it was in. A finished run (its last epoch saved) is not resumed: the command trains anew. Only rank 0
    writes; every rank loads. ``enabled=False`` neither loads nor writes.

    The random state of MONAI's own random transforms is not saved: after a resume the slices drawn differ
    from those of an uninterrupted run.
    """

    def __init__(self, save_dir: str | os.PathLike, network: Any, optimizer: torch.optim.Optimizer, *,
                 lr_scheduler: Any = None, enabled: bool = True) -> None:
        self.path = Path(save_dir) / "resume_state.pt"
        self.network = network
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.enabled = as_bool(enabled, "resume")

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.STARTED, self.load)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    def save(self, engine: Engine) -> None:
        if rank_and_world()[0] != 0:
            return
        payload = {
            "format": FORMAT,
            "epoch": engine.state.epoch,
            "iteration": engine.state.iteration,
            "max_epochs": engine.state.max_epochs,
            "model": trainable_payload(unwrap(self.network)),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": _plain(self.lr_scheduler.state_dict()) if self.lr_scheduler is not None else None,
            "best": getattr(engine.state, BEST_METRIC_STATE, None),
            "rng": _rng_state(),
        }
        with atomic_path(self.path) as tmp:
            torch.save(payload, tmp)

    def load(self, engine: Engine) -> None:
        if not self.path.exists():
            return
        payload = load_weights_file(self.path, what="training resume state")
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise InputFileError(self.path, f"not a SegMoTE training resume state (expected format '{FORMAT}')")
        if payload["epoch"] >= engine.state.max_epochs:
            # a finished run: running the command again (or MONAI Label's next /train request) trains anew
            logger.info("the run saved in %s finished (epoch %d of %d): starting a new run", self.path,
                        payload["epoch"], engine.state.max_epochs)
            return
        load_trainable_payload(unwrap(self.network), upgrade_payload(payload["model"]), self.path)
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.lr_scheduler is not None and payload["lr_scheduler"] is not None:
            current = self.lr_scheduler.state_dict()
            self.lr_scheduler.load_state_dict({k: Counter(v) if isinstance(current.get(k), Counter) else v
                                               for k, v in payload["lr_scheduler"].items()})
        setattr(engine.state, BEST_METRIC_STATE, payload["best"])
        _set_rng_state(payload["rng"])
        engine.state.epoch, engine.state.iteration = payload["epoch"], payload["iteration"]
        logger.info("resuming after epoch %d of %d (iteration %d) from the saved training state", payload["epoch"],
                    engine.state.max_epochs, payload["iteration"])
