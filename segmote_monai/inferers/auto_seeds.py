"""Automatic segmentation of a volume: one seed per class from the class-conditioned prompt-free masks, propagated.

Asked for a class on every slice, a model trained with ``class_prompts`` finds the structure on the slices that have
it but also puts a mask for it on nearly every slice that has not (BENCHMARKS.md, section ``automatic``: 0.647 mean
3D Dice on CHAOS patients 10 and 21, most of the loss on those slices). Where the model is surest, its mask is on
the right structure, so automatic segmentation of a volume keeps one key slice per class from the prompt-free
masks and the box of that mask's largest connected part, and :func:`~segmote_monai.inferers.propagation.propagate`
walks from there as from a user's key-slice box: its stopping rule, not the prompt-free masks, decides where the
structure ends.

The key slice of a class: each pixel that several classes' masks claim goes to the class with the highest logit
there (a kidney's mask lying on the liver is the liver's); among the slices where the class's mask then covers at
least ``min_area_fraction`` of its largest area in the volume, the one where the model's own quality estimate
(predicted IoU), averaged over the slice and its two neighbours, is highest: a run of slices the model is sure of,
not one lucky slice. The seed's box is the box of the key slice's largest connected part, widened by
``seed_margin`` of its size on each side: a prompt-free mask that stops short of the organ's edge gives a box that
cuts the organ, the key slice's mask is then cut the same way, and every next box is taken from the mask before.

Chosen on CHAOS patients 01, 02, 03, 05 (02: validation; the others trained on), with two checkpoints of
``configs/train_class_prompts.json`` (seeds 0 and 1), mean 3D Dice of the four organs, in an exploratory script
that is not kept (the key slice and box rules swapped into this function):

- the previous rule (the highest mean probability inside the mask, overlapping masks kept, the box unwidened):
  0.613 / 0.582;
- masks made exclusive and the neighbourhood's predicted IoU, box unwidened: 0.686 / 0.634;
- the same with the box widened by 0.1: 0.711 / 0.688 (by 0.2: 0.655 for seed 0); this is the rule.

The previous rule had been chosen on patient 02 alone among six (the highest mean probability; the largest area x
mean probability; the highest predicted IoU of the slice alone; the largest slice of the largest 3D connected part;
the agreement between the mask and its own box's mask, alone or times the mean probability). The held-out
patients 10 and 21, scored after the choice (BENCHMARKS.md, section ``automatic_seed_rule``), do not confirm the
gain: 21 0.878 -> 0.888, but 10 0.911 -> 0.817 (its right kidney seeded near its end, where the walk stops after
half of it); with seed 1 0.881 -> 0.885 and 0.850 -> 0.808.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from segmote_monai.data.slicing import volume_to_slices
from segmote_monai.inferers.propagation import _next_box, propagate
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
               min_area_fraction: float = 0.5, seed_margin: float = 0.1, class_offset: int = 0,
               embeddings: dict[int, torch.Tensor] | None = None) -> list[PropagationSeed]:
    """One :class:`PropagationSeed` per class of ``classes`` that the class-conditioned prompt-free masks find
    anywhere in ``image`` ([C, H, W, S], oriented, in [0, 1]); none for a class they find nowhere.

    ``seed_margin``: the seed's box is its mask's largest part's box widened by this fraction of its size on each
    side. ``embeddings``: slice index -> [1, D, h, w] encoder output; filled here so that ``propagate`` can reuse it
    (each slice is encoded once; the price is memory: 4 MB per slice for a 256 x 64 x 64 float32 embedding, 1.2 GB
    for a 300-slice CT); ``class_offset`` as :class:`SliceSegmenter`'s.
    """
    if not classes:
        raise ValueError("auto_seeds needs at least one class")
    check_options(min_area_fraction=min_area_fraction, seed_margin=seed_margin)
    model = segmenter.model.eval()
    if not getattr(model, "class_conditioned", False):
        raise ValueError("auto_seeds needs a class-conditioned model (trained with class_prompts)")
    slices = volume_to_slices(torch.as_tensor(image))
    hw = tuple(slices.shape[-2:])
    embeddings = {} if embeddings is None else embeddings
    device = next(model.decoder.parameters()).device
    class_ids = torch.tensor([int(c) + class_offset for c in classes], device=device)

    def masks(z: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each class's prompt-free mask on slice ``z``, [K, H, W] bool, where a pixel that several classes claim
        goes to the one with the highest logit; and each class's predicted IoU, [K]."""
        if z not in embeddings:
            embeddings[z] = segmenter.embed(segmenter.preprocess(slices[z])[None]).to(device)
        out = model.predict(image_embeddings=embeddings[z], image_index=torch.zeros_like(class_ids),
                            class_ids=class_ids)
        logits = segmenter._unresize(out.masks.cpu(), hw)[:, 0]
        winner = logits.argmax(0)
        return (logits > 0) & (winner == torch.arange(len(logits))[:, None, None]), out.iou_predictions[:, 0].cpu()

    area = torch.zeros(len(classes), len(slices))
    quality = torch.zeros(len(classes), len(slices))
    for z in range(len(slices)):
        positive, quality[:, z] = masks(z)
        area[:, z] = positive.flatten(1).sum(1).float()
    # the mean over each slice and its neighbours: a run of slices the model is sure of, not one lucky slice
    quality = F.avg_pool1d(quality[:, None], 3, stride=1, padding=1, count_include_pad=False)[:, 0]
    limits = (0.0, 0.0, hw[1] - 1.0, hw[0] - 1.0)
    seeds = []
    for k, c in enumerate(classes):
        if area[k].max() == 0:
            continue
        eligible = area[k] >= min_area_fraction * area[k].max()
        z = int(torch.where(eligible, quality[k], -1.0).argmax())
        part = largest_component(masks(z)[0][k])
        box = _next_box(box_of_mask(part).tolist(), seed_margin, limits)
        seeds.append(PropagationSeed(int(c), z, tuple(float(v) for v in box)))
    return seeds


def propagate_auto(segmenter: SliceSegmenter, image: torch.Tensor, classes: Sequence[int], *,
                   min_area_fraction: float = 0.5, seed_margin: float = 0.1, class_offset: int = 0,
                   **propagation: Any
                   ) -> tuple[torch.Tensor, dict[int, list[int]]]:
    """Automatic label map [1, H, W, S] of ``image`` and, per class, the slices its propagation reached:
    :func:`auto_seeds`, then :func:`~segmote_monai.inferers.propagation.propagate` (keyword arguments
    ``propagation``) on the same encoder outputs, so that each slice is encoded once."""
    embeddings: dict[int, torch.Tensor] = {}
    seeds = auto_seeds(segmenter, image, classes, min_area_fraction=min_area_fraction, seed_margin=seed_margin,
                       class_offset=class_offset, embeddings=embeddings)
    return propagate(segmenter, image, seeds, embeddings=embeddings, **propagation)
