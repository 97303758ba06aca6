"""One box per structure on one key slice (or one 3D box), propagated through the volume.

The key slice is segmented with the given box; then, slice by slice in both directions, the next slice's box is
the previous mask's bounding box widened by ``margin`` of its size on each side (at least one pixel), kept inside
the seed's slice range and the image (and, for a 3D box, inside the box's own extent). Where the walk's last step
shrank the mask (area ``a1`` after ``a0``), that box is narrowed about its centre by ``sqrt(a1 / a0)``, at least
``taper``: the organ is expected to go on tapering as it did, and a box sized for the previous slice is filled by
the model with whatever lies in it. A direction stops at the first slice whose mask

- overlaps the previous slice's mask by less than ``min_overlap`` (IoU in the slice plane): a box where the
  structure has ended still gets a mask, of whatever lies in it, and that mask jumps;
- is more than ``1 + max_growth`` times the previous mask's area once the walk's masks have started to shrink
  (past the organ's largest slice, a mask that grows again has usually spilled into a neighbour; a reboxed mask,
  below, that is smaller than the last does not count as shrinking); key-slice
  seeds only: a 3D box bounds its walk already, and there the rule cost Dice (below);
- has a mean intensity more than ``max_shift`` standard deviations (of the key slice's mask) from the key
  slice's mask's mean: a mask on another tissue;
- is smaller than ``min_pixels``, or has a predicted IoU below ``min_iou`` (the model's own quality estimate; 0,
  the default, disables it: on CHAOS patient 02 it stayed at 0.7-0.95 on slices past an organ's end, so it
  cannot tell; an exploratory run, its script not kept);

or at the end of the range. Every slice is encoded at most once, whatever the number of structures and of boxes
given per slice beside the seeds. Where two structures' masks overlap, the segmenter's ``overlap`` rule decides,
as for per-slice boxes (:func:`~segmote_monai.inferers.slices.merge_masks`).

How the defaults were chosen (shipped checkpoint, seed: each organ's largest slice and its tight box): ``margin=0``
and ``min_overlap=0.7`` (since lowered, below) on CHAOS patient 10 (wider margins let the boxes grow from slice to
slice; without the overlap rule every organ ran through all 36 slices); ``max_growth=0.1`` and ``max_shift=2`` on
patients 02, 01, 03 and 05 (key-slice seeds: mean 3D Dice 0.825 against 0.781 without them; 3D boxes: 0.785 against
0.786, and 0.757 had the growth rule applied to them, an exploratory run whose script was not kept; BENCHMARKS.md,
section ``propagation_tuning``). Held-out figures: section ``propagation``. The remaining loss is where an organ
tapers: the previous mask's box is then too large for the next slice and the model fills it. Re-prompting each slice
with its own mask's box (once or twice) did not tighten it: 0.771 and 0.758 on the tuning patients against 0.806
(exploratory runs of an option since removed; not reproducible from the repository). Narrowing the box where the
organ tapers did: ``taper=0.7`` with ``min_overlap=0.6``, chosen on the same four patients among min_overlap 0.3-0.7
and narrowing by the square root of the area ratio or by the ratio itself (the latter cut organs short: 0.761, an
exploratory run whose script was not kept),
gives key-slice seeds 0.857 against 0.825 and 3D boxes 0.833 against 0.785 (the previous defaults); BENCHMARKS.md,
section ``propagation_taper``. The floor rarely binds (0.7 and 0.85 scored the same) and min_overlap 0.6 is a narrow
optimum on four patients (0.5: 0.839, 0.7: 0.836 with the narrowing). Two further exploratory runs (scripts not
kept): narrowing to the box of the previous mask's core, eroded by the same amount (thin parts end first), scored
0.834 key-slice / 0.826 3D on the four patients, worse; several candidate boxes per slice decoded at once and chosen
by the predicted IoU, tried on patient 02 alone, scored 0.838 (the narrowed box's four corners; 3D 0.799) and 0.739
(its four sides) against 0.816 (3D 0.816), at three to five times the decoder's work, beyond the 1.15x time budget.

``follow`` (off by default) moves each edge of the next box on by ``follow`` times the step its mask's edge took
the slice before, in place of the narrowing about the centre (each side kept at least ``taper`` of its length):
the box follows an organ that ends on one side. On the four patients (BENCHMARKS.md, section
``propagation_follow``): follow 1 0.863 key-slice / 0.837 3D against 0.857 / 0.833 off, follow 0.5 0.818 / 0.826;
the liver gained on every patient and one spleen lost 0.218, so the gain is not established and the default stays
off (on the held-out patients 10 and 21, measured afterwards: 0.894 / 0.881 against 0.899 / 0.890, section
``propagation_follow_heldout``). Where the walks stop on the four tuning patients (exploratory, a printing copy of
this function, not kept): 21 of 32 walks end on a slice the organ is still on, and the in-plane overlap of a wider
box's mask there (0.34-0.79) is no different from that where the organ has ended (0.38-0.75).

A second opinion (``agree``, ``min_agreement``): where a slice's mask overlaps the previous one's less than
``min_overlap``, the walk goes on if another source's mask of the class on that slice, the class-conditioned model's
prompt-free mask (:class:`~segmote_monai.inferers.prompt_free.PromptFreeMasks`, decoded only on those slices, or
the masks :func:`~segmote_monai.inferers.auto_seeds.auto_seeds` decoded everywhere), agrees with the new mask (IoU
at least ``min_agreement``): the overlap cannot tell an organ that changes shape from one slice to the next from a
mask that jumped, the model asked with no prompt can. With the shipped (class-conditioned) weights on the four
tuning patients (BENCHMARKS.md, section ``propagation_second_opinion``): key-slice seeds 0.840 -> 0.868 with
``min_agreement`` 0.3 (0.848 with 0.5), 3D boxes 0.843 -> 0.859 (0.847), lower on none of the eight.

What still costs Dice is not where walks stop but the masks they bring back: with no overlap rule at all
(``min_overlap=0``) the livers are reached on 18-28 of their slices instead of 11-17 and the mean falls (key-slice
0.868 -> 0.862, 3D 0.859 -> 0.851; so did the intersection over the smaller mask in place of the IoU, an option
since removed: 0.862 / 0.854). A slice-by-slice trace of the livers (exploratory, its script not kept) showed why:
once a mask falls short of the organ (or fills a box too large for it) the next box is cut from it and the error
compounds, down to 0.06-0.60 Dice on slices where the organ's tight box gives 0.91-0.97; there the model's own
predicted IoU falls (0.59-0.80 against 0.88-0.96 on good slices), while the box of the liver's prompt-free mask
gives masks it rates 0.84-0.97. Hence ``rebox_below``: where the walk's mask is rated below it, the box of the
second opinion's mask inside the previous mask's box widened by ``rebox_window`` (0.25 of its size per side) is
decoded too, and the mask with the higher predicted IoU is kept. Chosen on the same four patients with
``min_agreement`` 0.3 (BENCHMARKS.md, section ``propagation_rebox``): 0.9 gives key-slice 0.868 -> 0.893 and 3D
boxes 0.859 -> 0.880, lower on none of the eight (0.8: 0.876 / 0.876; 0.85: 0.880 / 0.876; 0.95 and always: 0.890 /
0.882: a flat optimum, 0.9 the cheaper). Checked on eight more training patients (section
``propagation_rebox_check``): 3D boxes 0.862 -> 0.886, higher on all eight; key-slice seeds 0.861 -> 0.864, lower on
two (a left kidney 0.932 -> 0.733, its walk stopping at 11 of its 20 slices, the cause not traced; held-out patient
10, measured before this restriction, lost a left kidney too, 0.951 -> 0.725). A 3D box keeps the
prompt-free box inside the user's box; a key-slice walk has no such bound. So 3D-box seeds only, until 0.6.7
(``rebox_key_slices``, below). It costs a prompt-free decode of the walk's class (once per slice and class; the masks
are decoded per class, not made exclusive, since 0.6.6: :func:`~segmote_monai.inferers.prompt_free.second_opinion`)
and one box decode on the slices where the walk doubts its mask.

``rebox_touching`` (on): the rebox box is taken only from the parts (4-connected) of the prompt-free mask that touch
the previous mask; a blob apart from it, a false positive or a neighbour's tissue, would stretch the box over the gap.
With per-class masks, on the four tuning patients (section ``propagation_touching``): 3D boxes 0.881 -> 0.889, higher
on all four, key-slice seeds (reboxed) 0.893 -> 0.898; on the eight check patients (section
``propagation_touching_check``): 3D boxes 0.885 -> 0.888 (0.862 without the rebox), lower on one by 0.001;
key-slice seeds reboxed 0.863 -> 0.880 against 0.861 unreboxed, lower than unreboxed on two patients (15: 0.835 ->
0.825, its spleen 0.670 -> 0.556; 32: 0.885 -> 0.877, its liver 0.847 -> 0.811), where the left kidney that the
unbounded rebox lost is kept (0.932). Requiring instead that the reboxed mask overlap the previous one by
``min_overlap`` lowered the tuning patients' 3D boxes to 0.871 (an exploratory run of an option since removed).
Held out, measured afterwards (section ``propagation_touching_heldout``): 3D boxes 10 / 21 0.937 / 0.900 (0.6.5:
0.936 / 0.893); key-slice seeds reboxed 0.881 / 0.901 against 0.924 / 0.887 unreboxed, patient 10's left kidney
again 0.951 -> 0.725 (its walk stops at 8 of its 14 slices, the cause not traced): key-slice seeds stay unreboxed.

Why patient 10's left kidney failed (a slice-by-slice trace, exploratory, its script not kept): on the slice below
the key slice the rebox kept a smaller mask (1125 pixels after 1405; rated 0.909 against the walk's 0.899), which
set the growth rule's "past the widest slice"; on the next slice the rebox gave 1258 pixels (IoU with the organ
0.917), 12% more, and the growth rule stopped the walk. A reboxed mask's area comes from another box than the walk's,
so since 0.6.7 it no longer marks the organ as shrinking (the growth rule itself stays: exempting reboxed masks from
it lowered the tuning patients' reboxed key-slice seeds 0.898 -> 0.876, and patient 21's liver walked into another
structure; keeping the reboxed mask only where it is rated 0.02 or 0.05 above the walk's lowered 3D boxes on patient
03, 0.877 -> 0.848 / 0.859; exploratory runs, not kept). That changes no Dice on the twelve tuning and check patients
and restores patient 10's left kidney (0.725 -> 0.951; section ``propagation_key_rebox``), so key-slice seeds are
reboxed too since 0.6.7 (``rebox_key_slices``, on): tuning 0.868 -> 0.898, check 0.861 -> 0.880, held out 10 / 21
0.924 / 0.887 -> 0.937 / 0.901 (sections ``propagation_key_rebox_tuning``, ``propagation_key_rebox_check``,
``propagation_key_rebox``), lower on two of the twelve (check patients 15 and 32, above).
Not for the automatic mode's walks, whose seeds come from the same
prompt-free masks: there it lowered two of the four tuning patients (``benchmarks/auto.py --reboxes 0.9``: 02 0.690
-> 0.643, 03 0.777 -> 0.775; mean 0.789 -> 0.793).

``anchor`` (off by default) narrows a tapering box from the edges that receded in the walk's last step, the cut shared
in proportion to how far each moved in (about the centre where none did), in place of about its centre: a trace of
held-out patient 21's liver (exploratory, its script not kept) showed its tip receding from one side while the box
narrowed about its centre, the model filling the box (masks 1.5-6 times the label's area, rated 0.78-0.87). On the four
tuning patients (BENCHMARKS.md, section ``propagation_anchor``): key-slice seeds 0.899 against 0.898, 3D boxes 0.888
against 0.889; the liver gained on 02 (key slice 0.842 -> 0.869, 3D 0.788 -> 0.836) and 05 and lost on 03 (key slice
0.871 -> 0.812, its walk stopping at 10 of 19 slices): not established, so the default stays off. Cutting the walk's
masks down to the class's prompt-free mask (dilated by 0-8 pixels; on every slice reached, or only where the prompt-free
mask covers less than 2/3 of the walk's) lowered the same patients to 0.777-0.879 key-slice and 0.779-0.874 3D
(exploratory, its script not kept): at the organs' ends the prompt-free masks are no better. On patient 02 the 3D box's
liver walk loses most between its middle slice and its first, where six masks lie on the wrong part of the slice (Dice
0.15-0.40; a tight box there 0.73-0.94) and the prompt-free masks with them (0.25-0.45).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from segmote_monai.data.slicing import slices_to_volume, volume_to_slices
from segmote_monai.inferers.components import touching_components
from segmote_monai.inferers.slices import SlicePrompts, SliceSegmenter, merge_masks
from segmote_monai.transforms.array import box_of_mask, scale_boxes
from segmote_monai.transforms.prompts import PropagationSeed

__all__ = ["PropagationSeed", "propagate"]


def _clipped(box: Sequence[float], limits: Sequence[float]) -> tuple[float, float, float, float]:
    """``box`` kept inside ``limits`` (both ``x0, y0, x1, y1``)."""
    return max(limits[0], box[0]), max(limits[1], box[1]), min(limits[2], box[2]), min(limits[3], box[3])


def _next_box(mask_box: Sequence[float], margin: float, limits: Sequence[float]) -> tuple[float, float, float, float]:
    """The previous mask's box ``mask_box`` widened by ``margin`` of its size (at least a pixel), inside ``limits``."""
    x0, y0, x1, y1 = mask_box
    dx, dy = max(1.0, margin * (x1 - x0 + 1)), max(1.0, margin * (y1 - y0 + 1))
    return _clipped((x0 - dx, y0 - dy, x1 + dx, y1 + dy), limits)


def _followed(box: Sequence[float], last: Sequence[float], before: Sequence[float], follow: float,
              floor: float) -> tuple[float, float, float, float]:
    """``box`` with each edge moved on by ``follow`` times the step its mask's edge took from ``before`` to
    ``last`` (the previous two masks' boxes), each side kept at least ``floor`` of its length."""
    x0, y0, x1, y1 = (b + follow * (a - p) for b, a, p in zip(box, last, before))
    out = []
    for lo, hi, length in ((x0, x1, box[2] - box[0]), (y0, y1, box[3] - box[1])):
        if hi - lo < floor * length:
            centre = (lo + hi) / 2
            lo, hi = centre - floor * length / 2, centre + floor * length / 2
        out.append((lo, hi))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def _receded(box: Sequence[float], scale: float, last: Sequence[float],
             before: Sequence[float]) -> tuple[float, float, float, float]:
    """``box`` shortened on each axis by ``1 - scale`` of its length, the cut shared between its two edges in
    proportion to how far each edge of the mask's box moved inwards from ``before`` to ``last`` (about the centre
    where neither did)."""
    out = []
    for lo, hi, inward_lo, inward_hi in ((box[0], box[2], last[0] - before[0], before[2] - last[2]),
                                         (box[1], box[3], last[1] - before[1], before[3] - last[3])):
        cut, inward_lo, inward_hi = (1 - scale) * (hi - lo), max(0.0, inward_lo), max(0.0, inward_hi)
        share = inward_lo / (inward_lo + inward_hi) if inward_lo + inward_hi > 0 else 0.5
        out.append((lo + cut * share, hi - cut * (1 - share)))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """IoU of two bool masks (0 where both are empty)."""
    return (a & b).sum().item() / max((a | b).sum().item(), 1)


def _narrowed(box: Sequence[float], scale: float) -> tuple[float, float, float, float]:
    """``box`` scaled about its centre by ``scale`` in both directions."""
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, scale * (x1 - x0) / 2, scale * (y1 - y0) / 2
    return cx - rx, cy - ry, cx + rx, cy + ry


@torch.no_grad()
def propagate(segmenter: SliceSegmenter, image: torch.Tensor, seeds: Sequence[PropagationSeed], *,
              margin: float = 0.0, min_overlap: float = 0.6, min_pixels: int = 1, min_iou: float = 0.0,
              max_growth: float | None = 0.1, max_shift: float | None = 2.0, taper: float | None = 0.7,
              follow: float | None = None, prompts: SlicePrompts | None = None,
              embeddings: dict[int, torch.Tensor] | None = None, agree: Mapping[int, torch.Tensor] | None = None,
              min_agreement: float | None = 0.3, rebox_below: float | None = None,
              rebox_window: float = 0.25, rebox_key_slices: bool = True,
              rebox_touching: bool = True, anchor: bool = False) -> tuple[torch.Tensor, dict[int, list[int]]]:
    """Label map [1, H, W, S] of ``image`` ([C, H, W, S], oriented, in [0, 1]) from one seed per structure, and,
    per seeded class, the slices its propagation reached (sorted; empty where the key slice's mask was).

    ``prompts``: boxes given per slice (``(boxes [K, 4], class_ids [K])`` per slice, as :class:`SliceSegmenter`
    takes them) for structures that are not propagated; segmented on their slices and merged with the rest.
    ``embeddings``: slice index -> [1, D, h, w] encoder outputs already computed (by
    :func:`~segmote_monai.inferers.auto_seeds.auto_seeds`); used, and filled with the slices encoded here.
    ``agree``: class id -> [S, H, W] bool, a second opinion (the class's prompt-free masks): a walk goes on past a
    slice whose mask overlaps the previous one's less than ``min_overlap`` where the second opinion's mask on that
    slice and the new mask overlap (IoU) at least ``min_agreement`` (None: never). ``rebox_below``: where a walk's
    mask has a predicted IoU below this, the box of the second opinion's mask within the previous mask's box widened
    by ``rebox_window`` of its size is decoded too, and the mask with the higher predicted IoU kept (None: never);
    key-slice seeds too unless ``rebox_key_slices`` is false; ``rebox_touching``: that box only from the
    second opinion's parts that touch the previous mask. ``anchor``: a tapering box narrowed from the edges that
    receded in the last step rather than about its centre.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if min_pixels < 1:
        raise ValueError(f"min_pixels must be >= 1, got {min_pixels}")
    if not 0.0 <= min_overlap <= 1.0:
        raise ValueError(f"min_overlap must be in [0, 1], got {min_overlap}")
    if max_growth is not None and max_growth < 0:
        raise ValueError(f"max_growth must be >= 0 (or None), got {max_growth}")
    if max_shift is not None and max_shift <= 0:
        raise ValueError(f"max_shift must be > 0 (or None), got {max_shift}")
    if taper is not None and not 0.0 < taper <= 1.0:
        raise ValueError(f"taper must be in (0, 1] (or None), got {taper}")
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"min_agreement must be in [0, 1] (or None), got {min_agreement}")
    if rebox_below is not None and not 0.0 <= rebox_below <= 1.0:
        raise ValueError(f"rebox_below must be in [0, 1] (or None), got {rebox_below}")
    if rebox_window < 0:
        raise ValueError(f"rebox_window must be >= 0, got {rebox_window}")
    if follow is not None and not 0.0 <= follow <= 1.0:
        raise ValueError(f"follow must be in [0, 1] (or None), got {follow}")
    slices = volume_to_slices(torch.as_tensor(image))
    count, hw = len(slices), tuple(slices.shape[-2:])
    model = segmenter.model.eval()
    device = next(model.decoder.parameters()).device
    embeddings = {} if embeddings is None else embeddings

    if prompts is not None and len(prompts) != count:
        raise ValueError(f"prompts for {len(prompts)} slices, the image has {count}")

    def decode(z: int, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[K, H, W] mask logits and [K] predicted IoUs of boxes [K, 4] on slice ``z``."""
        scaled = scale_boxes(boxes.float(), hw, segmenter.size).to(device)
        embedding = segmenter.slice_embedding(slices, z, embeddings)
        out = model.predict(image_embeddings=embedding, boxes=scaled)  # one image: every box on it
        return segmenter._unresize(out.masks.cpu(), hw)[:, 0], out.iou_predictions[:, 0].cpu()

    def segment(z: int, box: Sequence[float]) -> tuple[torch.Tensor, float]:
        masks, quality = decode(z, torch.tensor([list(box)]))
        return masks[0], float(quality[0])

    logits: dict[int, dict[int, torch.Tensor]] = {}
    propagated: dict[int, set[int]] = {}
    for z, (boxes, classes) in enumerate(prompts or []):
        if len(boxes):
            for c, current in zip(torch.as_tensor(classes).tolist(), decode(z, torch.as_tensor(boxes))[0]):
                per_slice = logits.setdefault(int(c), {})
                per_slice[z] = current if z not in per_slice else torch.maximum(per_slice[z], current)
    for seed in seeds:
        if not 0 <= seed.slice < count:
            raise ValueError(f"seed slice {seed.slice} of class {seed.class_id} is outside the image ({count} slices)")
        first = max(0, seed.first if seed.first is not None else 0)
        last = min(count - 1, seed.last if seed.last is not None else count - 1)
        opinion = agree.get(int(seed.class_id)) if agree is not None else None
        rebox = opinion is not None and rebox_below is not None and (seed.within_box or rebox_key_slices)
        reached = logits.setdefault(int(seed.class_id), {})
        seen = propagated.setdefault(int(seed.class_id), set())
        key, _ = segment(seed.slice, seed.box)
        if int((key > 0).sum()) < min_pixels:
            continue
        reached[seed.slice] = key if seed.slice not in reached else torch.maximum(reached[seed.slice], key)
        seen.add(seed.slice)
        limits = seed.box if seed.within_box else (0.0, 0.0, hw[1] - 1.0, hw[0] - 1.0)
        key_values = slices[seed.slice].float().mean(0)[key > 0]
        key_mean, key_std = float(key_values.mean()), float(key_values.std()) if len(key_values) > 1 else 0.0
        for step in (-1, 1):
            previous, z, shrinking, before, before_box = key > 0, seed.slice + step, False, None, None
            previous_area, previous_box = int(previous.sum()), box_of_mask(key > 0).tolist()
            while first <= z <= last:
                box = _next_box(previous_box, margin, limits)
                if follow is not None and before_box is not None:
                    followed = _clipped(_followed(box, previous_box, before_box, follow, taper or 0.0), limits)
                    # an edge that moved by more than the box's width leaves it inverted (outside a 3D box) or
                    # under a pixel wide: no prompt for the model, which then keeps the unfollowed box
                    if min(followed[2] - followed[0], followed[3] - followed[1]) >= 1:
                        box = followed
                elif taper is not None and before is not None and previous_area < before:
                    # the organ narrows: expect the next slice to shrink as the last step did (in length, the
                    # square root of the area ratio), or the model fills the previous, too large box
                    scale = max(taper, (previous_area / before) ** 0.5)
                    box = _receded(box, scale, previous_box, before_box) if anchor else _narrowed(box, scale)
                current, quality = segment(z, box)
                reboxed = False
                if rebox and quality < rebox_below:
                    # the walk's box may have drifted (a mask that shrank or filled its box compounds from slice
                    # to slice); the class's prompt-free mask near the previous one gives an independent box
                    near = torch.zeros(hw, dtype=torch.bool)
                    # a user's 3D box may reach past the image; a negative index would wrap round
                    x0, y0, x1, y1 = (max(0, round(v)) for v in _next_box(previous_box, rebox_window, limits))
                    near[y0:y1 + 1, x0:x1 + 1] = True
                    other = opinion[z] & near
                    if rebox_touching and other.any():
                        # a blob of the prompt-free mask apart from the previous mask (a false positive, or the
                        # organ's other lobe) would stretch the box over the gap between them
                        other = touching_components(other, previous)
                    if other.any():
                        alternative, alternative_quality = segment(z, box_of_mask(other).tolist())
                        if alternative_quality > quality:
                            current, quality, reboxed = alternative, alternative_quality, True
                mask = current > 0
                area = int(mask.sum())
                unlike = _iou(mask, previous) < min_overlap
                if unlike and opinion is not None and min_agreement is not None and area:
                    unlike = _iou(mask, opinion[z]) < min_agreement  # the second opinion vouches for the mask
                if area < min_pixels or quality < min_iou or unlike:
                    break
                grew = area > (1 + max_growth) * previous_area if max_growth is not None else False
                if grew and shrinking and not seed.within_box:
                    break
                # a reboxed mask's area comes from another box than the walk's, so its being smaller than the
                # previous mask does not show that the organ has passed its widest slice
                shrinking = shrinking or (area < previous_area and not reboxed)
                if max_shift is not None:
                    mean = float(slices[z].float().mean(0)[mask].mean())
                    if abs(mean - key_mean) > max_shift * max(key_std, 1e-6):
                        break
                reached[z] = current if z not in reached else torch.maximum(reached[z], current)
                seen.add(z)
                before_box, previous_box = previous_box, box_of_mask(mask).tolist()
                before, previous, previous_area, z = previous_area, mask, area, z + step
    labels = torch.zeros(count, 1, *hw, dtype=torch.uint8 if max([0, *logits]) < 256 else torch.int32)
    for z in range(count):
        present = [(c, per_slice[z]) for c, per_slice in logits.items() if z in per_slice]
        if present:
            stacked = torch.stack([lg for _, lg in present])
            classes = torch.tensor([c for c, _ in present])
            labels[z, 0] = merge_masks(stacked, classes, rule=segmenter.overlap).to(labels.dtype)
    return slices_to_volume(labels, is_2d=image.ndim == 3), {c: sorted(s) for c, s in propagated.items()}
