"""One SegMoTE training iteration on a batch of prompted slices.

A batch (after ``list_data_collate``) holds ``image`` [B, 3, S, S] network inputs, the target ``mask``
[B, 1, S, S], its ``class_id`` [B], the prompt (``box`` [B, 4] and/or ``points`` [B, P, 2] with
``point_labels`` [B, P]) and, from a :class:`~segmote_monai.data.joint.JointDatalist`, each sample's ``task``
(``binary`` or ``multi-class``). The frozen encoder's output comes from an :class:`EmbeddingCache` when one
is given.

Rows decoded per sample (:func:`plan_rows`):

- every sample once with its prompt (``prompt``); binary-task samples with the PPT tokens beside it when the
  model's ``ppt_beside_prompts`` is set (the paper puts them next to the human prompt on binary tasks);
- binary-task samples a second time, prompt-free (PPT only), with probability ``prompt_free_share``: these
  rows come on top of the prompted ones, so every recipe sees the same number of prompted samples.

A model with class-conditioned PPT (``num_condition_classes > 0``) and a batch with ``auto_class_id`` /
``auto_mask`` (:class:`~segmote_monai.transforms.RandClassTargetd`) also gets:

- every sample once more, prompt-free with PPT conditioned on ``auto_class_id`` and ``auto_mask`` as target
  (``class_auto``: automatic multi-class segmentation, a class absent from the slice included);
- of the plain prompted rows, a share ``class_prompt_share`` with the PPT tokens of their own ``class_id``
  beside the prompt (``+class``: class-aware prompts), the others as before (a prompt without a class).

Those samples drawn as empty slices (an empty ``mask``) are decoded only in the ``class_auto`` rows: a box
needs an object.

``prompt="none"`` decodes every sample prompt-free only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from segmote_monai.data.cache import EmbeddingCache
from segmote_monai.networks.segmote import PromptedForward, SegMoTE, SegMoTEOutput

__all__ = ["PROMPT_MODES", "RowGroup", "decode_rows", "embed_batch", "plan_rows", "training_iteration", "unwrap"]

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


@dataclass
class RowGroup:
    """Batch rows decoded together in one way."""

    rows: list[int]  # the samples, by batch index
    kind: str  # "box", "points", "box+points" (+ "+ppt" / "+class" for PPT tokens beside), "prompt_free", "class_auto"
    prompt: str  # the prompt mode (``none`` for prompt-free)
    use_ppt: bool
    class_key: str | None = None  # the batch key of the class each row's PPT tokens are conditioned on
    target_key: str = "mask"  # the batch key of the rows' targets


def _binary_rows(batch: Mapping[str, Any], n: int) -> list[bool]:
    tasks = batch.get("task")
    return [t == "binary" for t in tasks] if tasks is not None else [False] * n


def plan_rows(model: SegMoTE, batch: Mapping[str, Any], *, prompt: str = "box", prompt_free_share: float = 0.0,
              class_prompt_share: float = 0.5, generator: torch.Generator | None = None) -> list[RowGroup]:
    """The row groups of one step (see the module docstring); empty groups are left out."""
    if prompt not in PROMPT_MODES:
        raise ValueError(f"prompt must be one of {list(PROMPT_MODES)}, got {prompt!r}")
    for name, value in (("prompt_free_share", prompt_free_share), ("class_prompt_share", class_prompt_share)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    n = len(batch["mask"])
    if prompt == "none":
        if model.ppt is None:
            raise ValueError("prompt 'none' (prompt-free training) needs a model with PPT")
        return [RowGroup(list(range(n)), "prompt_free", "none", True)]
    has_ppt = model.ppt is not None
    auto = model.class_conditioned and "auto_class_id" in batch
    objects = [not auto or bool(batch["mask"][i].any()) for i in range(n)]
    binary = _binary_rows(batch, n)
    beside = [i for i in range(n) if has_ppt and model.ppt_beside_prompts and binary[i] and objects[i]]
    draws = torch.rand(n, generator=generator).tolist()
    plain = [i for i in range(n) if i not in beside and objects[i]]
    if auto:  # drawn only here, so that other recipes keep their random sequence
        class_draws = torch.rand(n, generator=generator).tolist()
        with_class = [i for i in plain if class_draws[i] < class_prompt_share]
        plain = [i for i in plain if i not in with_class]
    else:
        with_class = []
    free = [i for i in range(n) if has_ppt and binary[i] and draws[i] < prompt_free_share]
    groups = [RowGroup(plain, prompt, prompt, False), RowGroup(beside, prompt + "+ppt", prompt, True),
              RowGroup(with_class, prompt + "+class", prompt, True, class_key="class_id"),
              RowGroup(free, "prompt_free", "none", True),
              RowGroup(list(range(n)) if auto else [], "class_auto", "none", True, class_key="auto_class_id",
                       target_key="auto_mask")]
    return [g for g in groups if g.rows]


def _call(model: SegMoTE, batch: Mapping[str, Any], embeddings: torch.Tensor, group: RowGroup) -> dict[str, Any]:
    device = embeddings.device
    rows = torch.as_tensor(group.rows, device=device)
    call: dict[str, Any] = {"image_embeddings": embeddings, "image_index": rows, "use_ppt": group.use_ppt}
    if group.prompt in ("box", "box+points"):
        call["boxes"] = batch["box"][group.rows].to(device, torch.float32)
    if group.prompt in ("points", "box+points"):
        call["points"] = batch["points"][group.rows].to(device, torch.float32)
        call["point_labels"] = batch["point_labels"][group.rows].to(device)
    if group.class_key is not None:
        call["class_ids"] = torch.as_tensor(batch[group.class_key])[group.rows].to(device)
    elif group.use_ppt:
        call["carrier_masks"] = batch["mask"][group.rows].to(device)
        call["carrier_class_ids"] = batch["class_id"][group.rows].to(device)
    return call


def decode_rows(model: torch.nn.Module, batch: Mapping[str, Any], embeddings: torch.Tensor,
                groups: Sequence[RowGroup]) -> SegMoTEOutput:
    """Decodes every group (one call of ``model``'s forward when it is a DDP-wrapped
    :class:`PromptedForward`) and returns the outputs one group after the other."""
    core = unwrap(model)
    calls = [_call(core, batch, embeddings, g) for g in groups]
    outputs = model(*calls) if model is not core else [core.predict(**c) for c in calls]
    return SegMoTEOutput.cat(outputs)


def training_iteration(
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    loss_fn: torch.nn.Module,
    batch: Mapping[str, Any],
    *,
    cache: EmbeddingCache | None = None,
    prompt: str = "box",
    prompt_free_share: float = 0.0,
    class_prompt_share: float = 0.5,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Embeds (or reads) the batch, decodes its rows (:func:`plan_rows`) and takes one optimiser step.

    Returns the ``loss``, the concatenated ``output`` and the ``groups`` (output rows follow their order).
    """
    model.train()
    core = unwrap(model)
    groups = plan_rows(core, batch, prompt=prompt, prompt_free_share=prompt_free_share,
                       class_prompt_share=class_prompt_share)
    embeddings = embed_batch(core, batch["image"].to(device), cache)
    output = decode_rows(model, batch, embeddings, groups)
    targets = torch.cat([batch[g.target_key][g.rows] for g in groups]).to(device, output.masks.dtype)
    loss = loss_fn(output, targets)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return {"loss": loss.detach(), "output": output, "groups": list(groups)}
