"""Automatic segmentation of a volume: one seed per class from the class-conditioned prompt-free masks, propagated.

Asked for a class on every slice, a model trained with ``class_prompts`` finds the structure on the slices that have
it but also puts a mask for it on nearly every slice that has not (BENCHMARKS.md, section ``automatic``: 0.647 mean
3D Dice on CHAOS patients 10 and 21, most of the loss on those slices). Where the model is surest, its mask is on
the right structure, so automatic segmentation of a volume keeps one key slice per class from the prompt-free
masks and the box of that mask's largest connected part, and :func:`~segmote_monai.inferers.propagation.propagate`
walks from there as from a user's key-slice box: its stopping rule, not the prompt-free masks, decides where the
structure ends.

The key slice of a class: among the slices whose mask covers at least ``min_area_fraction`` of the class's largest
mask in the volume, the one with the highest mean probability inside its mask. The best of six rules on CHAOS
validation patient 02 (the others: the largest area x mean probability; the highest predicted IoU; the largest
slice of the largest 3D connected part; the best agreement between the mask and its own box's mask, alone or times
the mean probability), with a checkpoint trained with ``configs/train_class_prompts.json``; the held-out patients'
figures were printed in the same exploratory run. BENCHMARKS.md, section ``automatic_propagated``, has them and
how they were chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from segmote_monai.data.slicing import volume_to_slices
from segmote_monai.inferers.propagation import propagate
from segmote_monai.inferers.slices import SliceSegmenter, check_options
from segmote_monai.transforms.array import box_of_mask
from segmote_monai.transforms.prompts import PropagationSeed

__all__ = ["auto_seeds", "largest_component", "propagate_auto"]


def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """[H, W] bool -> its largest 4-connected component (of two as large, the one whose last pixel comes first in
    raster order)."""
    if not bool(mask.any()):
        return mask.clone()
    h, w = mask.shape
    # each pixel takes the largest index among itself and its four neighbours until nothing changes: every component
    # ends up labelled by its own largest index (int64: exact for any image size)
    labels = torch.arange(1, h * w + 1).view(h, w) * mask
    while True:
        padded = F.pad(labels, (1, 1, 1, 1))
        grown = torch.stack([labels, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
                            ).amax(0) * mask
        if torch.equal(grown, labels):
            break
        labels = grown
    values, counts = torch.unique(labels[mask], return_counts=True)
    return labels == values[counts.argmax()]


@torch.no_grad()
def auto_seeds(segmenter: SliceSegmenter, image: torch.Tensor, classes: Sequence[int], *,
               min_area_fraction: float = 0.5, class_offset: int = 0,
               embeddings: dict[int, torch.Tensor] | None = None) -> list[PropagationSeed]:
    """One :class:`PropagationSeed` per class of ``classes`` that the class-conditioned prompt-free masks find
    anywhere in ``image`` ([C, H, W, S], oriented, in [0, 1]); none for a class they find nowhere.

    ``embeddings``: slice index -> [1, D, h, w] encoder output; filled here so that ``propagate`` can reuse it
    (each slice is encoded once; the price is memory: 4 MB per slice for a 256 x 64 x 64 float32 embedding, 1.2 GB
    for a 300-slice CT); ``class_offset`` as :class:`SliceSegmenter`'s.
    """
    if not classes:
        raise ValueError("auto_seeds needs at least one class")
    check_options(min_area_fraction=min_area_fraction)
    model = segmenter.model.eval()
    if not getattr(model, "class_conditioned", False):
        raise ValueError("auto_seeds needs a class-conditioned model (trained with class_prompts)")
    slices = volume_to_slices(torch.as_tensor(image))
    hw = tuple(slices.shape[-2:])
    embeddings = {} if embeddings is None else embeddings
    device = next(model.decoder.parameters()).device
    class_ids = torch.tensor([int(c) + class_offset for c in classes], device=device)

    def masks(z: int) -> torch.Tensor:
        """[K, H, W] prompt-free mask logits of every class on slice ``z``."""
        if z not in embeddings:
            embeddings[z] = segmenter.embed(segmenter.preprocess(slices[z])[None]).to(device)
        out = model.predict(image_embeddings=embeddings[z], image_index=torch.zeros_like(class_ids),
                            class_ids=class_ids)
        return segmenter._unresize(out.masks.cpu(), hw)[:, 0]

    area = torch.zeros(len(classes), len(slices))
    confidence = torch.zeros(len(classes), len(slices))
    for z in range(len(slices)):
        logits = masks(z)
        positive = logits > 0
        area[:, z] = positive.flatten(1).sum(1).float()
        inside = (torch.sigmoid(logits) * positive).flatten(1).sum(1)
        confidence[:, z] = inside / area[:, z].clamp(min=1)
    seeds = []
    for k, c in enumerate(classes):
        if area[k].max() == 0:
            continue
        eligible = area[k] >= min_area_fraction * area[k].max()
        z = int(torch.where(eligible, confidence[k], -1.0).argmax())
        part = largest_component(masks(z)[k] > 0)
        seeds.append(PropagationSeed(int(c), z, tuple(float(v) for v in box_of_mask(part).tolist())))
    return seeds


def propagate_auto(segmenter: SliceSegmenter, image: torch.Tensor, classes: Sequence[int], *,
                   min_area_fraction: float = 0.5, class_offset: int = 0, **propagation: Any
                   ) -> tuple[torch.Tensor, dict[int, list[int]]]:
    """Automatic label map [1, H, W, S] of ``image`` and, per class, the slices its propagation reached:
    :func:`auto_seeds`, then :func:`~segmote_monai.inferers.propagation.propagate` (keyword arguments
    ``propagation``) on the same encoder outputs, so that each slice is encoded once."""
    embeddings: dict[int, torch.Tensor] = {}
    seeds = auto_seeds(segmenter, image, classes, min_area_fraction=min_area_fraction, class_offset=class_offset,
                       embeddings=embeddings)
    return propagate(segmenter, image, seeds, embeddings=embeddings, **propagation)
