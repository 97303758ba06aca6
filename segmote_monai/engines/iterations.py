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
from segmote_monai.options import as_bool
from segmote_monai.routing import expert_use, mean_pairwise_cosine, token_weight_entropy

__all__ = ["PromptedTrainIteration", "VolumeEvalIteration"]


class PromptedTrainIteration:
    """``SupervisedTrainer(iteration_update=...)``; see :mod:`segmote_monai.engines.step` for the rows it
    decodes per sample (``prompt``, ``prompt_free_share``, ``class_prompt_share``, and the model's
    ``ppt_beside_prompts`` and class conditioning).

    Returns one dict per decoded row, as MONAI's default iteration leaves ``engine.state.output`` a list (so
    ``from_engine(["loss"], first=True)`` works in StatsHandler and MLflow): the batch ``loss`` and
    ``balance_loss``, and the row's ``dataset``, ``modality``, ``row_kind`` and routing (``expert_use``
    [blocks, E], ``token_entropy``, ``token_cosine``; see :mod:`segmote_monai.routing`)."""

    def __init__(self, *, cache: EmbeddingCache | None = None, prompt: str = "box", prompt_free_share: float = 0.0,
                 class_prompt_share: float = 0.5, amp: bool = False) -> None:
        if prompt not in PROMPT_MODES:
            raise ValueError(f"prompt must be one of {list(PROMPT_MODES)}, got {prompt!r}")
        if not 0.0 <= prompt_free_share <= 1.0:
            raise ValueError(f"prompt_free_share must be in [0, 1], got {prompt_free_share}")
        if not 0.0 <= class_prompt_share <= 1.0:
            raise ValueError(f"class_prompt_share must be in [0, 1], got {class_prompt_share}")
        self.class_prompt_share = float(class_prompt_share)
        self.cache = cache
        self.prompt = prompt
        self.prompt_free_share = float(prompt_free_share)
        self.amp = as_bool(amp, "amp")

    def __call__(self, engine: Any, batch: dict) -> list[dict[str, Any]]:
        device = engine.state.device
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=self.amp):
            out = training_iteration(engine.network, engine.optimizer, engine.loss_function, batch,
                                     cache=self.cache, prompt=self.prompt, prompt_free_share=self.prompt_free_share,
                                     class_prompt_share=self.class_prompt_share, device=device)
        output, loss = out["output"], out["loss"].item()
        rows = [(i, g.kind) for g in out["groups"] for i in g.rows]
        n = len(rows)
        names = batch.get("dataset_name") or batch.get("modality") or ["all"] * len(batch["mask"])
        modalities = batch.get("modality") or ["all"] * len(batch["mask"])
        records = [{"loss": loss, "dataset": names[i], "modality": modalities[i], "row_kind": kind} for i, kind in rows]
        if not output.routing:
            return [{**r, "balance_loss": 0.0} for r in records]
        with torch.no_grad():
            balance = load_balance_loss(output.routing).item()
            use = expert_use(output.routing).cpu()
            entropy = token_weight_entropy(output.routing[-1].token_weights).cpu()
            cosine = mean_pairwise_cosine(output.expert_tokens).cpu() if output.expert_tokens is not None else None
        for j in range(n):
            records[j].update(balance_loss=balance, expert_use=use[j], token_entropy=float(entropy[j]),
                              token_cosine=float(cosine[j]) if cosine is not None else float("nan"))
        return records


class VolumeEvalIteration:
    """``SupervisedEvaluator(iteration_update=...)`` on batches of one volume: returns one-hot ``pred`` and
    ``label`` [1, C+1, ...] for MONAI's Dice metrics, and ``dice`` (class -> Dice of the classes present)."""

    def __init__(self, *, backbone: str, classes: Sequence[int], jitter: float = 0.0, seed: int = 0,
                 cache: EmbeddingCache | None = None, batch_size: int = 8, overlap: str = "smaller") -> None:
        self.backbone = backbone
        self.classes = [int(c) for c in classes]
        self.jitter = jitter
        self.seed = seed
        self.cache = cache
        self.batch_size = batch_size
        self.overlap = overlap

    def __call__(self, engine: Any, batch: dict) -> dict[str, torch.Tensor]:
        image, label = batch["image"][0], batch["label"][0]
        model = unwrap(engine.network)
        prompts = prompts_from_label(label, self.classes, jitter=self.jitter, seed=self.seed)
        pred = SliceSegmenter(model, backbone=self.backbone, cache=self.cache, batch_size=self.batch_size,
                              overlap=self.overlap)(
            image, prompts)
        num = max(self.classes) + 1
        label = label.long().cpu()
        return {"pred": one_hot(pred[None], num, dim=1), "label": one_hot(label[None], num, dim=1),
                "dice": dice_per_class(pred, label, self.classes)}
