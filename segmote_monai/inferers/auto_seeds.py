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
least ``min_area_fraction`` of its largest area in the volume, two candidates: the one where the model's own quality
estimate (predicted IoU), averaged over the slice and its two neighbours, is highest (a run of slices the model is
sure of, not one lucky slice), and the one where that average times the mask's share of the largest area is highest
(where the model is about as unsure everywhere, the larger slice: an organ at the volume's edge, or a kidney near
its pole). Where they differ, each is walked, and the walk whose volume agrees best (Dice) with the class's
prompt-free masks wins: a seed on the wrong structure walks that structure, away from where the model finds the
class. The seed's box is the box of the key slice's largest connected part, widened by ``seed_margin`` of its size
on each side: a prompt-free mask that stops short of the organ's edge gives a box that cuts the organ, the key
slice's mask is then cut the same way, and every next box is taken from the mask before.

Chosen on CHAOS patients 01, 02, 03, 05 (02: validation; the others trained on), with two checkpoints of
``configs/train_class_prompts.json`` (seeds 0 and 1), mean 3D Dice of the four organs, in an exploratory script
that is not kept (the key slice and box rules swapped into this function):

- the rule before 0.6.1 (the highest mean probability inside the mask, overlapping masks kept, the box
  unwidened): 0.613 / 0.582;
- masks made exclusive and the neighbourhood's predicted IoU, box unwidened: 0.686 / 0.634;
- the same with the box widened by 0.1: 0.711 / 0.688 (by 0.2: 0.655 for seed 0); the rule of 0.6.1.

0.6.1's rule failed on ten slices of held-out patient 21 (the MONAI Label test's crop: its spleen, on the last
three slices, was seeded on another structure) and on held-out patient 10's right kidney (seeded near its pole).
The second candidate and the walks that decide between the two (0.6.2) were then chosen on the same tuning patients,
whole and cropped to their middle ten slices as that test crops them (eight volumes per checkpoint): 0.737 -> 0.772
(seed 0) and 0.678 -> 0.701 (seed 1), never lower on any of the sixteen, against 0.754 / 0.649 for the weighted
candidate alone, 0.730 / 0.687 for a stricter area rule (0.75), and 0.660 / 0.613 for the mean probability. Scored
afterwards on held-out patient 10: 0.817 -> 0.918 (seed 0), 0.808 -> 0.903 (seed 1); cropped, 0.826 -> 0.887 and
0.785 -> 0.853. Patient 21's crop is unchanged (0.653 / 0.866): its spleen's prompt-free masks lie on the other
structure on eight slices, so the walk on it agrees best. The price: two more walks for a class whose candidates
differ (decoder only; each slice is still encoded once).

A second opinion for the walks (0.6.3, :func:`propagate_auto`'s ``agreement``): a walk stops where a slice's mask
overlaps the previous slice's less than ``min_overlap`` (0.6), and walks stop early (with 0.6.2, 8 of patient 10's
21 liver slices unreached); there the walk goes on if the class's prompt-free mask on that slice agrees with the new
mask (IoU at least ``agreement``). Chosen on the same sixteen tuning volumes, on top of 0.6.2's seeds: 0.772 ->
0.793 (seed 0, 0.3; 0.778 with 0.5) and 0.700 -> 0.709 (seed 1, 0.3 and 0.5), lower on none. Held out afterwards
(patients 10 and 21, whole and cropped): 0.836 -> 0.839 and 0.872 -> 0.883, lower on one of eight (21 cropped,
seed 1: 0.866 -> 0.864).

Where it still fails (validation patient 02, shipped weights, 0.6.8's propagation: 0.690; a trace, exploratory, its
script not kept): the left kidney (0.320) is seeded on slice 6, near one pole, and its walk reaches slices 5-9 of
3-16; on slices 9-12 its prompt-free masks all but vanish (39-65 pixels, where the kidney has 1503-1776), and with every
stopping rule off the walk runs through the volume and still scores 0.329: its boxes leave the kidney while a tight box
on every slice gives it 0.951. The growth rule is not the cause (max_growth None or 0.3: the same Dice on patients 01
and 02, whole and cropped).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from segmote_monai.data.slicing import volume_to_slices
from segmote_monai.inferers.components import largest_component
from segmote_monai.inferers.prompt_free import decode_prompt_free
from segmote_monai.inferers.propagation import _next_box, propagate
from segmote_monai.inferers.slices import SliceSegmenter, check_options
from segmote_monai.transforms.array import box_of_mask
from segmote_monai.transforms.prompts import PropagationSeed

__all__ = ["auto_seeds", "propagate_auto"]


def _agreement(walked: torch.Tensor, prompt_free: torch.Tensor) -> float:
    """Dice of two [S, H, W] bool volumes (0 where both are empty)."""
    both = int(walked.sum()) + int(prompt_free.sum())
    return 2 * int((walked & prompt_free).sum()) / both if both else 0.0


@torch.no_grad()
def auto_seeds(segmenter: SliceSegmenter, image: torch.Tensor, classes: Sequence[int], *,
               min_area_fraction: float = 0.5, seed_margin: float = 0.1, class_offset: int = 0,
               embeddings: dict[int, torch.Tensor] | None = None, propagation: Mapping[str, Any] | None = None,
               masks: dict[int, torch.Tensor] | None = None) -> list[PropagationSeed]:
    """One :class:`PropagationSeed` per class of ``classes`` that the class-conditioned prompt-free masks find
    anywhere in ``image`` ([C, H, W, S], oriented, in [0, 1]); none for a class they find nowhere.

    ``seed_margin``: the seed's box is its mask's largest part's box widened by this fraction of its size on each
    side. ``embeddings``: slice index -> [1, D, h, w] encoder output; filled here so that ``propagate`` can reuse it
    (each slice is encoded once; the price is memory: 4 MB per slice for a 256 x 64 x 64 float32 embedding, 1.2 GB
    for a 300-slice CT); ``class_offset`` as :class:`SliceSegmenter`'s. ``propagation``: keyword arguments of
    :func:`~segmote_monai.inferers.propagation.propagate` for the walks that decide between two key slices (those
    the seeds will be propagated with). The prompt-free masks are kept while the seeds are chosen: one byte per
    pixel, class and slice (315 MB for four classes of a 300-slice 512 x 512 CT); ``masks``, where given, keeps
    them: class -> [S, H, W] bool, a second opinion for :func:`~segmote_monai.inferers.propagation.propagate`.
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
    # given boxes are not part of an automatic walk: the walks are compared with the prompt-free masks alone
    walk_options = {k: v for k, v in (propagation or {}).items() if k != "prompts"}

    prompt_free = torch.zeros(len(classes), len(slices), *hw, dtype=torch.bool)
    quality = torch.zeros(len(classes), len(slices))
    for z in range(len(slices)):
        embedding = segmenter.slice_embedding(slices, z, embeddings)
        prompt_free[:, z], quality[:, z] = decode_prompt_free(segmenter, embedding, class_ids, hw)
    if masks is not None:
        masks.update({int(c): prompt_free[k] for k, c in enumerate(classes)})
    area = prompt_free.flatten(2).sum(2).float()
    # the mean over each slice and its neighbours: a run of slices the model is sure of, not one lucky slice
    quality = F.avg_pool1d(quality[:, None], 3, stride=1, padding=1, count_include_pad=False)[:, 0]
    limits = (0.0, 0.0, hw[1] - 1.0, hw[0] - 1.0)
    seeds = []
    for k, c in enumerate(classes):
        if area[k].max() == 0:
            continue
        eligible = area[k] >= min_area_fraction * area[k].max()
        # the surest run of slices, and the surest weighted by the mask's share of the largest: where the model is
        # as unsure everywhere (an organ at the volume's edge), the larger slice of the organ
        key_slices = dict.fromkeys(int(torch.where(eligible, score, -1.0).argmax())
                                   for score in (quality[k], quality[k] * area[k] / area[k].max()))
        candidates = []
        for z in key_slices:
            box = _next_box(box_of_mask(largest_component(prompt_free[k, z])).tolist(), seed_margin, limits)
            candidates.append(PropagationSeed(int(c), z, tuple(float(v) for v in box)))
        if len(candidates) > 1:
            # the walk that lies where the model finds the class with no prompt: a seed on another structure walks
            # that structure, away from the class's prompt-free masks
            agreement = [_agreement(volume_to_slices(propagate(segmenter, image, [seed], embeddings=embeddings,
                                                               **walk_options)[0])[:, 0] == c, prompt_free[k])
                         for seed in candidates]
            candidates = [candidates[int(agreement[1] > agreement[0])]]
        seeds.append(candidates[0])
    return seeds


def propagate_auto(segmenter: SliceSegmenter, image: torch.Tensor, classes: Sequence[int], *,
                   min_area_fraction: float = 0.5, seed_margin: float = 0.1, agreement: float | None = 0.3,
                   class_offset: int = 0, **propagation: Any) -> tuple[torch.Tensor, dict[int, list[int]]]:
    """Automatic label map [1, H, W, S] of ``image`` and, per class, the slices its propagation reached:
    :func:`auto_seeds`, then :func:`~segmote_monai.inferers.propagation.propagate` (keyword arguments
    ``propagation``) on the same encoder outputs, so that each slice is encoded once. ``agreement``: where a walk
    would stop because a slice's mask overlaps the previous one's too little, it goes on if the class's prompt-free
    mask there agrees with it (IoU at least this); None: the walk alone decides."""
    check_options(agreement=agreement)
    embeddings: dict[int, torch.Tensor] = {}
    masks: dict[int, torch.Tensor] = {}
    seeds = auto_seeds(segmenter, image, classes, min_area_fraction=min_area_fraction, seed_margin=seed_margin,
                       class_offset=class_offset, embeddings=embeddings, propagation=propagation, masks=masks)
    second_opinion = {} if agreement is None else {"agree": masks, "min_agreement": agreement}
    return propagate(segmenter, image, seeds, embeddings=embeddings, **propagation, **second_opinion)
