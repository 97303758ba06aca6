"""One SegMoTE training iteration on a batch of prompted slices (one prompt per sample).

A batch (after ``list_data_collate``) holds ``image`` [B, 3, S, S] network inputs, the target ``mask``
[B, 1, S, S], its ``class_id`` [B], and the prompt: ``box`` [B, 4] and/or ``points`` [B, P, 2] with
``point_labels`` [B, P]. The frozen encoder's output comes from an :class:`EmbeddingCache` when one is
given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from segmote_monai.data.cache import EmbeddingCache
from segmote_monai.networks.segmote import PromptedForward, SegMoTE, SegMoTEOutput

__all__ = ["PROMPT_MODES", "embed_batch", "prompted_forward", "training_iteration", "unwrap"]

PROMPT_MODES = ("box", "points", "box+points", "none")


def unwrap(network: torch.nn.Module) -> SegMoTE:
    """The SegMoTE inside ``DistributedDataParallel(PromptedForward(...))`` (or the network itself)."""
    network = getattr(network, "module", network)
    return network.model if isinstance(network, PromptedForward) else network


def embed_batch(model: SegMoTE, images: torch.Tensor, cache: EmbeddingCache | None) -> torch.Tensor:
    """[B, 3, S, S] -> [B, D, h, w] frozen-encoder output, from ``cache`` where possible."""
    if cache is None:
        return model.embed_images(images)
    return cache.embed(images, model.embed_images)


def prompted_forward(
    model: torch.nn.Module, batch: Mapping[str, Any], embeddings: torch.Tensor, *, prompt: str = "box",
    use_ppt: bool | None = None,
) -> SegMoTEOutput:
    """Runs ``SegMoTE.predict`` on one prompt per sample (``prompt`` in :data:`PROMPT_MODES`; ``none`` is
    prompt-free, PPT only). PPT carriers come from the sample's ``mask`` and ``class_id``. ``model`` is a
    SegMoTE, or a DDP-wrapped :class:`PromptedForward` (called through DDP so gradients synchronise)."""
    core = unwrap(model)
    predict = core.predict if model is core else model
    if prompt not in PROMPT_MODES:
        raise ValueError(f"prompt must be one of {list(PROMPT_MODES)}, got {prompt!r}")
    device = embeddings.device
    kwargs: dict[str, Any] = {}
    if prompt in ("box", "box+points"):
        kwargs["boxes"] = batch["box"].to(device, torch.float32)
    if prompt in ("points", "box+points"):
        kwargs["points"] = batch["points"].to(device, torch.float32)
        kwargs["point_labels"] = batch["point_labels"].to(device)
    if core.ppt is not None and (use_ppt or prompt == "none"):
        kwargs["carrier_masks"] = batch["mask"].to(device)
        kwargs["carrier_class_ids"] = batch["class_id"].to(device)
    return predict(image_embeddings=embeddings, use_ppt=use_ppt, **kwargs)


def training_iteration(
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    loss_fn: torch.nn.Module,
    batch: Mapping[str, Any],
    *,
    cache: EmbeddingCache | None = None,
    prompt: str = "box",
    use_ppt: bool | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Embeds (or reads) the batch, predicts one mask per sample, and takes one optimiser step."""
    model.train()
    embeddings = embed_batch(unwrap(model), batch["image"].to(device), cache)
    output = prompted_forward(model, batch, embeddings, prompt=prompt, use_ppt=use_ppt)
    loss = loss_fn(output, batch["mask"].to(device, output.masks.dtype))
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return {"loss": loss.detach(), "output": output}
