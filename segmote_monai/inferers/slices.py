"""Prompted slice-by-slice segmentation of a volume or a 2D image into a label map on its own grid.

Input: an image as :class:`~segmote_monai.transforms.LoadPaird` and ``ScaleIntensityByModalityd`` give it
(oriented for slicing, intensities in [0, 1]) and, per slice, the prompts (boxes in that slice's pixels, one
class id each) or none for prompt-free (PPT) use: one foreground class, or with a class-conditioned model one
row per class on every slice (automatic multi-class segmentation). Slices are pre-processed (RGB, longest-side
resize + pad, backbone normalisation), embedded (through the cache when given), decoded in batches, and the mask logits
resized back to the slice. Where two classes' masks overlap, ``overlap`` decides (:func:`merge_masks`). Memory
grows with the batch, not with the number of slices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from segmote_monai.data.cache import EmbeddingCache
from segmote_monai.data.slicing import slices_to_volume, volume_to_slices
from segmote_monai.errors import RequestError
from segmote_monai.inferers.components import component_boxes
from segmote_monai.networks.segmote import SegMoTE
from segmote_monai.transforms.array import (
    ResizeLongestSidePad,
    ToRGB,
    backbone_normalization,
    box_of_mask,
    scale_boxes,
)
from segmote_monai.transforms.prompts import prompts_from_label

__all__ = ["OVERLAP_RULES", "SlicePrompts", "SliceSegmenter", "automatic_refine", "check_options", "merge_masks",
           "prompts_from_label"]

#: Per slice: (boxes [K, 4] in the slice's pixels, class ids [K]); empty K for no prompt on that slice.
SlicePrompts = Sequence[tuple[torch.Tensor, torch.Tensor]]

OVERLAP_RULES = ("smaller", "logit")
#: the mask logit of a class the presence head finds absent (any negative value is background)
ABSENT_LOGIT = -100.0


def merge_masks(logits: torch.Tensor, classes: torch.Tensor, *, rule: str = "smaller") -> torch.Tensor:
    """One slice's prompted masks -> its label map, where more than one mask claims a pixel.

    ``"smaller"``: the mask with the fewest positive pixels on the slice wins. Nested structures need it: the
    box of an inner structure (the left-ventricle cavity; the gallbladder against the liver) lies inside the
    outer one's box, whose mask often covers the inner structure with a higher logit than the inner mask has,
    while an inner mask rarely spills over the outer one. Measured on the benchmarks' test splits (3 seeds):
    SegMoTE's ACDC left ventricle 0.000 on the label map under ``"logit"``, 0.939 under ``"smaller"`` (its own
    mask: 0.939); no set lost more than 0.002. A tumour implanted in a real kidney (``benchmarks/nesting.py``)
    keeps its own mask's Dice, 0.88-0.96, against 0.00-0.61 under ``"logit"``. ``"logit"``: the highest logit wins.

    Args:
        logits: [K, H, W] mask logits, one per prompt.
        classes: [K] the prompts' class ids.
        rule: one of :data:`OVERLAP_RULES`.

    Returns:
        [H, W] int64 label map (0 where no logit is above 0).
    """
    if rule not in OVERLAP_RULES:
        raise ValueError(f"overlap rule must be one of {list(OVERLAP_RULES)}, got {rule!r}")
    if logits.ndim != 3 or len(classes) != len(logits):
        raise ValueError(f"expected logits [K, H, W] and K class ids, got {tuple(logits.shape)} and {len(classes)}")
    positive = logits > 0
    if rule == "logit":
        score = logits
    else:
        area = positive.flatten(1).sum(1).to(logits.dtype)
        score = torch.where(positive, -area[:, None, None], torch.finfo(logits.dtype).min)
    winner = score.argmax(dim=0)
    return torch.where(positive.any(dim=0), torch.as_tensor(classes).long()[winner], 0)


def automatic_refine(image: torch.Tensor, fraction: float | None) -> float | None:
    """``prompt_free_refine`` as the inference and the evaluation apply it to a class-conditioned model's automatic
    masks of ``image``: ``fraction`` on a 2D image ([C, H, W]), None on a volume, whose per-slice masks stay as the
    model gives them (refined, they lowered held-out CHAOS patients; BENCHMARKS.md, section ``auto_refine_volumes``)."""
    return fraction if image.ndim == 3 else None


def check_options(*, batch_size: int | None = None, overlap: str | None = None,
                  min_area_fraction: float | None = None, seed_margin: float | None = None,
                  agreement: float | None = None, rebox: float | None = None, refine: float | None = None) -> None:
    """Refuses option values a user gave: :class:`RequestError`, one line naming the bundle's config key
    (``auto_min_area_fraction``, ``auto_seed_margin``, ``prompt_free_agreement``, ``prompt_free_rebox``,
    ``prompt_free_refine``; None: not given)."""
    if batch_size is not None and batch_size < 1:
        raise RequestError(f"batch_size must be >= 1, got {batch_size}")
    if overlap is not None and overlap not in OVERLAP_RULES:
        raise RequestError(f"overlap must be one of {list(OVERLAP_RULES)}, got {overlap!r}")
    if min_area_fraction is not None and not 0.0 <= min_area_fraction <= 1.0:
        raise RequestError(f"auto_min_area_fraction must be in [0, 1], got {min_area_fraction}")
    if seed_margin is not None and not 0.0 <= seed_margin <= 1.0:
        raise RequestError(f"auto_seed_margin must be in [0, 1], got {seed_margin}")
    if agreement is not None and not 0.0 <= agreement <= 1.0:
        raise RequestError(f"prompt_free_agreement must be in [0, 1] (or null), got {agreement}")
    if rebox is not None and not 0.0 <= rebox <= 1.0:
        raise RequestError(f"prompt_free_rebox must be in [0, 1] (or null), got {rebox}")
    if refine is not None and not 0.0 <= refine <= 1.0:
        raise RequestError(f"prompt_free_refine must be in [0, 1] (or null), got {refine}")


class SliceSegmenter:
    """Segments every slice of an image with SegMoTE and reassembles a label map on the oriented grid.

    Args:
        model: a :class:`SegMoTE` (put in eval mode here).
        backbone: the backbone's name, for its normalisation.
        batch_size: slices per encoder/decoder batch.
        cache: optional :class:`EmbeddingCache` for the frozen encoder's output.
        overlap: where two classes' masks overlap, which wins (:func:`merge_masks`).
    """

    def __init__(self, model: SegMoTE, *, backbone: str, batch_size: int = 8,
                 cache: EmbeddingCache | None = None, overlap: str = "smaller") -> None:
        check_options(batch_size=batch_size, overlap=overlap)
        self.overlap = overlap
        self.model = model
        self.size = model.img_size
        self.to_rgb = ToRGB()
        self.resize = ResizeLongestSidePad(self.size, mode="bilinear")
        self.normalize = backbone_normalization(backbone)
        self.batch_size = batch_size
        self.cache = cache

    def preprocess(self, image_slice: torch.Tensor) -> torch.Tensor:
        """[C, H, W] in [0, 1] -> [3, S, S] network input."""
        return torch.as_tensor(self.normalize(self.resize(self.to_rgb(image_slice))), dtype=torch.float32)

    def _encode(self, inputs: torch.Tensor) -> torch.Tensor:
        device = next(self.model.decoder.parameters()).device
        inputs = inputs.to(device)
        if device.type == "cpu":
            # one slice at a time: LiteMedSAM's encoder takes 1.3 s per slice alone but 1.9 s in a batch of 8 on
            # a 2-core CPU (its attention outgrows the caches); GPUs gain from the batch
            return torch.cat([self.model.embed_images(inputs[i: i + 1]) for i in range(len(inputs))])
        return self.model.embed_images(inputs)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] network inputs -> [B, D, h, w] frozen-encoder output, through the cache when given."""
        if self.cache is None:
            return self._encode(inputs)
        device = next(self.model.decoder.parameters()).device
        return self.cache.embed(inputs, self._encode).to(device)

    def slice_embedding(self, slices: torch.Tensor, z: int, embeddings: dict[int, torch.Tensor]) -> torch.Tensor:
        """[1, D, h, w] encoder output of ``slices[z]`` (``slices``: [S, C, H, W] in [0, 1]): ``embeddings[z]``, or
        encoded now (through the cache when given) and kept there, so that callers sharing ``embeddings`` (seeds,
        walks, prompt-free second opinions) encode each slice once."""
        if z not in embeddings:
            embeddings[z] = self.embed(self.preprocess(slices[z])[None])
        return embeddings[z]

    def _unresize(self, logits: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
        """[N, 1, S, S] logits -> [N, 1, H, W]: crop the padding, resize back (as MONAI's Resize rounds)."""
        scale = self.size / max(hw)
        valid = [round(d * scale) for d in hw]
        return F.interpolate(logits[..., : valid[0], : valid[1]], size=tuple(hw), mode="bilinear",
                             align_corners=False)

    def _batches(self, count: int, prompts: SlicePrompts | None) -> Iterable[list[int]]:
        todo = [i for i in range(count) if prompts is None or len(prompts[i][0])]
        for start in range(0, len(todo), self.batch_size):
            yield todo[start: start + self.batch_size]

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, prompts: SlicePrompts | None = None, *, prompt_free_class: int = 1,
                 auto_classes: Sequence[int] | None = None, auto_refine: bool = False, auto_presence: bool = True,
                 class_boxes: bool = False, class_masks: bool = False, expert_scale: float = 1.0,
                 ppt_beside_boxes: bool = False, class_offset: int = 0, prompt_free_refine: float | None = None
                 ) -> torch.Tensor | tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Label map [1, ...] on ``image``'s grid: uint8 (int32 for label values past 255), so that a
        512 x 512 x 300 map takes 79 MB, not 630.

        Args:
            image: [C, H, W, S] oriented volume or [C, H, W] 2D image, intensities in [0, 1].
            prompts: per slice ``(boxes, class_ids)``; None for prompt-free (PPT) segmentation, where the
                foreground gets ``prompt_free_class``, or with ``auto_classes`` each of those classes.
            auto_classes: prompt-free with a class-conditioned model: every class asked for on every slice (its
                mask empty where the model finds it absent), merged by the ``overlap`` rule.
            auto_refine: with ``auto_classes``, decode each non-empty prompt-free mask once more with its tight box
                (and its class when ``class_boxes``) on the same encoder output: the box path's precision where the
                prompt-free path found the organ.
            auto_presence: with ``auto_classes`` and a model with a presence head, a class whose presence logit on a
                slice is below 0 gets no mask there (:class:`~segmote_monai.networks.PresenceHead`).
            class_boxes: tell a class-conditioned model each box's class (class-aware prompts).
            class_masks: also return, per class, the bool mask [1, ...] its own prompts gave before the label
                map's overlap rule (the paper scores each class on its own mask); for evaluation (one byte per
                voxel and class).
            expert_scale: passed to :meth:`SegMoTE.predict` (0: the frozen backbone's own prediction).
            ppt_beside_boxes: add the PPT tokens beside each box (a binary task of a model trained so).
            class_offset: added to the class ids the model is told (``class_boxes``, ``auto_classes``): a model
                trained on several datalists numbers each one's classes from that datalist's offset
                (:func:`~segmote_monai.data.joint.class_offset`); the label map keeps the given values.
            prompt_free_refine: prompt-free use (no ``prompts``): each 4-connected part of a slice's prompt-free mask
                (with ``auto_classes``, of each class's) with at least this fraction of its largest part's area is
                decoded again with its own tight box (with ``auto_classes``, and with its class), and the mask is the
                union of those masks (None: the prompt-free mask as it is). See :meth:`_rebox_parts`.
        """
        check_options(refine=prompt_free_refine)
        self.model.eval()
        if prompts is None and auto_classes is not None:
            return self._auto(image, [int(c) for c in auto_classes], refine=auto_refine, presence=auto_presence,
                              class_boxes=class_boxes, class_masks=class_masks, expert_scale=expert_scale,
                              class_offset=class_offset, refine_parts=prompt_free_refine)
        scale = {} if expert_scale == 1.0 else {"expert_scale": expert_scale}
        beside = {"use_ppt": True} if ppt_beside_boxes else {}
        slices = volume_to_slices(torch.as_tensor(image))
        if prompts is not None and len(prompts) != len(slices):
            raise ValueError(f"prompts for {len(prompts)} slices, the image has {len(slices)}")
        hw = tuple(slices.shape[-2:])
        largest = max([prompt_free_class] + [int(c.max()) for _, c in prompts or [] if len(c)])
        labels = torch.zeros(len(slices), 1, *hw, dtype=torch.uint8 if largest < 256 else torch.int32)
        present = sorted({int(c) for _, ids in prompts or [] for c in torch.as_tensor(ids).tolist()}
                         ) if prompts is not None else [prompt_free_class]
        own = {c: torch.zeros(len(slices), 1, *hw, dtype=torch.bool) for c in present} if class_masks else {}
        for batch in self._batches(len(slices), prompts):
            embeddings = self.embed(torch.stack([self.preprocess(slices[i]) for i in batch]))
            if prompts is None:
                masks = self.model.predict(image_embeddings=embeddings, **scale).masks
                if prompt_free_refine is not None:
                    masks = self._rebox_parts(embeddings, masks, prompt_free_refine, scale)
                foreground = self._unresize(masks.cpu(), hw) > 0
                labels[batch] = foreground.to(labels.dtype) * prompt_free_class
                if class_masks:
                    own[prompt_free_class][batch] = foreground
                continue
            boxes = torch.cat([scale_boxes(prompts[i][0], hw, self.size) for i in batch])
            classes = torch.cat([torch.as_tensor(prompts[i][1]).long() for i in batch])
            index = torch.cat([torch.full((len(prompts[i][0]),), j) for j, i in enumerate(batch)])
            with_class = {"class_ids": (classes + class_offset).to(embeddings.device)} if class_boxes else {}
            out = self.model.predict(image_embeddings=embeddings, boxes=boxes.to(embeddings.device),
                                     image_index=index.to(embeddings.device), **scale, **beside, **with_class)
            logits = self._unresize(out.masks.cpu(), hw)[:, 0]  # [N, H, W]
            for j, i in enumerate(batch):
                rows = index == j
                labels[i, 0] = merge_masks(logits[rows], classes[rows], rule=self.overlap).to(labels.dtype)
                for c, mask in zip(classes[rows].tolist(), logits[rows] > 0):
                    if class_masks:
                        own[c][i, 0] |= mask
        return self._volumes(labels, own, image.ndim == 3, class_masks)

    @staticmethod
    def _volumes(labels: torch.Tensor, own: dict[int, torch.Tensor], is_2d: bool, class_masks: bool
                 ) -> torch.Tensor | tuple[torch.Tensor, dict[int, torch.Tensor]]:
        volume = slices_to_volume(labels, is_2d=is_2d)
        if not class_masks:
            return volume
        return volume, {c: slices_to_volume(m, is_2d=is_2d) for c, m in own.items()}

    def _rebox_parts(self, embeddings: torch.Tensor, masks: torch.Tensor, min_fraction: float, scale: dict, *,
                     index: torch.Tensor | None = None, class_ids: torch.Tensor | None = None) -> torch.Tensor:
        """[N, 1, S, S] prompt-free logits -> the same, where a row found something: the elementwise maximum of the
        box-prompted logits of each of its 4-connected parts with at least ``min_fraction`` of its largest part's
        area, each decoded with its own tight box (in network-input pixels); empty rows stay as they are.
        ``index`` [N]: each row's image in ``embeddings`` [B, D, h, w] (None: row i is image i, one binary row per
        image); ``class_ids`` [N]: each row's class id, given to the model with its boxes (None: plain boxes).

        Why: the prompt-free (PPT) path finds the object but draws its edge less well than a box does (the box path
        is what the model trained on most), and a box around the whole mask would also span its stray blobs. The
        fraction keeps both lungs of a chest X-ray (two parts of about one size) and drops a polyp mask's specks.
        Chosen on the validation and training splits of PH2, Kvasir-SEG and the chest X-rays (BENCHMARKS.md, section
        ``prompt_free_refine``); for a class-conditioned model's automatic masks, on ACDC's (section ``auto_refine``).
        """
        boxes, rows = [], []
        for row, mask in enumerate(masks[:, 0] > 0):
            found = component_boxes(mask.cpu(), min_fraction)
            boxes.append(found)
            rows += [row] * len(found)
        if not rows:
            return masks
        rows_t = torch.tensor(rows, device=masks.device)
        images = rows_t if index is None else index.to(masks.device)[rows_t]
        with_class = {} if class_ids is None else {"class_ids": class_ids.to(masks.device)[rows_t]}
        boxed = self.model.predict(image_embeddings=embeddings, boxes=torch.cat(boxes).to(masks.device),
                                   image_index=images, **scale, **with_class).masks
        out = masks.clone()
        for row in sorted(set(rows)):
            out[row] = boxed[rows_t == row].amax(dim=0)
        return out

    def _refine(self, embeddings: torch.Tensor, masks: torch.Tensor, index: torch.Tensor, class_ids: torch.Tensor,
                class_boxes: bool, scale: dict) -> torch.Tensor:
        """[N, 1, S, S] prompt-free logits -> the same, where a row found something decoded again with the tight
        box of what it found (in network-input pixels); empty rows stay empty."""
        found = (masks > 0).flatten(1).any(dim=1)
        if not bool(found.any()):
            return masks
        rows = torch.nonzero(found).flatten()
        boxes = torch.stack([box_of_mask(masks[r, 0] > 0) for r in rows.tolist()]).to(masks.device)
        with_class = {"class_ids": class_ids[rows]} if class_boxes else {}
        boxed = self.model.predict(image_embeddings=embeddings, boxes=boxes, image_index=index[rows], **scale,
                                   **with_class).masks
        out = masks.clone()
        out[rows] = boxed
        return out

    def _auto(self, image: torch.Tensor, classes: list[int], *, refine: bool, presence: bool, class_boxes: bool,
              class_masks: bool, expert_scale: float, class_offset: int = 0, refine_parts: float | None = None
              ) -> torch.Tensor | tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Automatic multi-class segmentation: one class-conditioned prompt-free row per class and slice."""
        if not classes:
            raise ValueError("auto_classes must name at least one class")
        slices = volume_to_slices(torch.as_tensor(image))
        hw = tuple(slices.shape[-2:])
        labels = torch.zeros(len(slices), 1, *hw, dtype=torch.uint8 if max(classes) < 256 else torch.int32)
        own = {c: torch.zeros(len(slices), 1, *hw, dtype=torch.bool) for c in classes} if class_masks else {}
        scale = {} if expert_scale == 1.0 else {"expert_scale": expert_scale}
        k = len(classes)
        for batch in self._batches(len(slices), None):
            embeddings = self.embed(torch.stack([self.preprocess(slices[i]) for i in batch]))
            device = embeddings.device
            index = torch.arange(len(batch), device=device).repeat_interleave(k)
            class_ids = (torch.tensor(classes, device=device) + class_offset).repeat(len(batch))
            out = self.model.predict(image_embeddings=embeddings, image_index=index, class_ids=class_ids, **scale)
            masks = out.masks
            if presence and out.presence_logits is not None:
                masks = masks.masked_fill(out.presence_logits.view(-1, 1, 1, 1) < 0, ABSENT_LOGIT)
            if refine:
                masks = self._refine(embeddings, masks, index, class_ids, class_boxes, scale)
            if refine_parts is not None:
                # with the class beside each box: on ACDC's validation and training splits the class-aware boxes
                # scored higher than plain ones for both seeds (BENCHMARKS.md, section auto_refine)
                masks = self._rebox_parts(embeddings, masks, refine_parts, scale, index=index, class_ids=class_ids)
            logits = self._unresize(masks.cpu(), hw)[:, 0].reshape(len(batch), k, *hw)
            for j, i in enumerate(batch):
                labels[i, 0] = merge_masks(logits[j], torch.tensor(classes), rule=self.overlap).to(labels.dtype)
                for c, mask in zip(classes, logits[j] > 0):
                    if class_masks:
                        own[c][i, 0] = mask
        return self._volumes(labels, own, image.ndim == 3, class_masks)
