"""``iteration_update`` callables for MONAI's ``SupervisedTrainer`` and ``SupervisedEvaluator``.

Training: one prompt per sample, frozen-encoder output through the embedding cache
(:func:`~segmote_monai.engines.step.training_iteration`). Validation: one whole volume (or 2D image) per
iteration, one box per structure and slice from its label, Dice on the reassembled label map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.utils import one_hot

from segmote_monai.data.cache import EmbeddingCache
from segmote_monai.engines.step import PROMPT_MODES, training_iteration, unwrap
from segmote_monai.inferers.slices import SliceSegmenter, prompts_from_label
from segmote_monai.losses.balance import load_balance_loss
from segmote_monai.metrics import dice_per_class

__all__ = ["PromptedTrainIteration", "VolumeEvalIteration"]


class PromptedTrainIteration:
    """``SupervisedTrainer(iteration_update=...)``.

    Returns the batch decollated, one dict per sample, as MONAI's default iteration leaves
    ``engine.state.output`` (so ``from_engine(["loss"], first=True)`` works in StatsHandler and MLflow): the
    batch ``loss``, ``balance_loss``, and the sample's ``expert_use`` [E] and ``modality``."""

    def __init__(self, *, cache: EmbeddingCache | None = None, prompt: str = "box", use_ppt: bool | None = None,
                 amp: bool = False) -> None:
        if prompt not in PROMPT_MODES:
            raise ValueError(f"prompt must be one of {list(PROMPT_MODES)}, got {prompt!r}")
        self.cache = cache
        self.prompt = prompt
        self.use_ppt = use_ppt
        self.amp = amp

    def __call__(self, engine: Any, batch: dict) -> list[dict[str, Any]]:
        device = engine.state.device
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=self.amp):
            out = training_iteration(engine.network, engine.optimizer, engine.loss_function, batch,
                                     cache=self.cache, prompt=self.prompt, use_ppt=self.use_ppt, device=device)
        routing = out["output"].routing
        loss = out["loss"].item()
        n = len(batch["image"])
        with torch.no_grad():
            balance = load_balance_loss(routing).item() if routing else 0.0
            # per sample: how much each expert of the last block was used, summed over the expert tokens
            usage = routing[-1].gates.detach().float().sum(dim=1).cpu() if routing else [None] * n
        modalities = batch.get("modality") or ["all"] * n
        return [{"loss": loss, "balance_loss": balance, "expert_use": usage[i], "modality": modalities[i]}
                for i in range(n)]


class VolumeEvalIteration:
    """``SupervisedEvaluator(iteration_update=...)`` on batches of one volume: returns one-hot ``pred`` and
    ``label`` [1, C+1, ...] for MONAI's Dice metrics, and ``dice`` (class -> Dice of the classes present)."""

    def __init__(self, *, backbone: str, classes: Sequence[int], jitter: float = 0.0, seed: int = 0,
                 cache: EmbeddingCache | None = None, batch_size: int = 8) -> None:
        self.backbone = backbone
        self.classes = [int(c) for c in classes]
        self.jitter = jitter
        self.seed = seed
        self.cache = cache
        self.batch_size = batch_size

    def __call__(self, engine: Any, batch: dict) -> dict[str, torch.Tensor]:
        image, label = batch["image"][0], batch["label"][0]
        model = unwrap(engine.network)
        prompts = prompts_from_label(label, self.classes, jitter=self.jitter, seed=self.seed)
        pred = SliceSegmenter(model, backbone=self.backbone, cache=self.cache, batch_size=self.batch_size)(
            image, prompts)
        num = max(self.classes) + 1
        label = label.long().cpu()
        return {"pred": one_hot(pred[None], num, dim=1), "label": one_hot(label[None], num, dim=1),
                "dice": dice_per_class(pred, label, self.classes)}
