"""MONAI's ``inferer(inputs, network)`` for SegMoTE, with the prompts that travel in the image's meta dictionary.

MONAI Label, MONAI Deploy and MONAI's evaluators pass an inferer nothing but the image and the network, so
:class:`~segmote_monai.transforms.AttachPromptsd` stores the request's prompts in the image's meta: boxes per slice
(:data:`~segmote_monai.transforms.prompts.PROMPTS_META_KEY`; None for prompt-free PPT use) and seeds to propagate
through the volume (:data:`~segmote_monai.transforms.prompts.PROPAGATION_META_KEY`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import Inferer

from segmote_monai.data.cache import EmbeddingCache
from segmote_monai.errors import RequestError
from segmote_monai.inferers.auto_seeds import propagate_auto
from segmote_monai.inferers.prompt_free import second_opinion
from segmote_monai.inferers.propagation import propagate
from segmote_monai.inferers.slices import SliceSegmenter, automatic_refine, check_options
from segmote_monai.networks.segmote import SegMoTE
from segmote_monai.transforms.prompts import PROMPTS_META_KEY, PROPAGATION_META_KEY

__all__ = ["PromptedSliceInferer"]


class PromptedSliceInferer(Inferer):
    """One image's label map from the prompts in its meta dictionary.

    Args:
        backbone, batch_size, cache, overlap: as :class:`~segmote_monai.inferers.SliceSegmenter`.
        prompt_free_class: the label value of a prompt-free (PPT) foreground.
        auto_classes: the classes a class-conditioned model segments prompt-free (automatic multi-class
            segmentation); None or empty: one prompt-free foreground, ``prompt_free_class``.
        auto_presence: with ``auto_classes``, empty a class's mask on the slices where the model's presence head
            finds it absent (models with a presence head; per-slice automatic segmentation only).
        auto_propagate: with ``auto_classes``, segment a volume (more than one slice) from one automatic seed per
            class, propagated (:func:`~segmote_monai.inferers.auto_seeds.auto_seeds`), rather than from every
            slice's prompt-free masks.
        auto_min_area_fraction: with ``auto_propagate``, the key slice's mask covers at least this fraction of the
            class's largest mask (:func:`~segmote_monai.inferers.auto_seeds.auto_seeds`).
        auto_seed_margin: with ``auto_propagate``, each seed's box is its mask's box widened by this fraction of
            its size on each side (:func:`~segmote_monai.inferers.auto_seeds.auto_seeds`).
        prompt_free_agreement: class-conditioned models (``auto_classes``): a walk, from automatic seeds or from a
            user's propagated box, goes on past a slice its mask changes too much on where the class's prompt-free
            mask agrees with it (IoU at least this; None: never; :class:`~segmote_monai.inferers.prompt_free.
            PromptFreeMasks`, decoded only on those slices for a user's box).
        prompt_free_rebox: class-conditioned models (``auto_classes``): where a walk from a user's propagated box
            (3D, or on a key slice unless ``propagation`` sets ``rebox_key_slices`` false) gets a mask whose
            predicted IoU is below this, the box of the class's prompt-free mask near the previous mask is tried too
            and the mask with the higher predicted IoU kept (``rebox_below`` of
            :func:`~segmote_monai.inferers.propagation.propagate`, which says why; None: never).
        prompt_free_refine: no prompt, a binary model, or ``auto_classes`` on a 2D image: each part of a slice's
            prompt-free mask (of each class's) with at least this fraction of the largest part's area is decoded
            again with its own tight box (and its class), the union kept (None: the prompt-free mask as it is;
            :meth:`~segmote_monai.inferers.SliceSegmenter._rebox_parts` says why).
        class_boxes: tell a class-conditioned model each box's class (class-aware prompts).
        ppt_beside_boxes: add the PPT tokens beside each box (a binary model trained so).
        propagation: keyword arguments of :func:`~segmote_monai.inferers.propagation.propagate` (its stopping
            rule) for seeded structures; None: its defaults.

    After each call, :attr:`last_reached` holds, per propagated class, the oriented slices its propagation
    reached (empty without seeds).
    """

    def __init__(self, *, backbone: str, batch_size: int = 8, cache: EmbeddingCache | None = None,
                 overlap: str = "smaller", prompt_free_class: int = 1, auto_classes: Sequence[int] | None = None,
                 auto_presence: bool = True, auto_propagate: bool = True, auto_min_area_fraction: float = 0.5,
                 auto_seed_margin: float = 0.1, prompt_free_agreement: float | None = 0.3,
                 prompt_free_rebox: float | None = 0.9, prompt_free_refine: float | None = 0.5,
                 class_boxes: bool = False, ppt_beside_boxes: bool = False,
                 propagation: dict[str, Any] | None = None) -> None:
        super().__init__()
        check_options(batch_size=batch_size, overlap=overlap, min_area_fraction=auto_min_area_fraction,
                      seed_margin=auto_seed_margin, agreement=prompt_free_agreement, rebox=prompt_free_rebox,
                      refine=prompt_free_refine)
        self.backbone = backbone
        self.batch_size = batch_size
        self.cache = cache
        self.overlap = overlap
        self.prompt_free_class = prompt_free_class
        self.auto_classes = [int(c) for c in auto_classes or []]
        self.auto_presence = bool(auto_presence)
        self.auto_propagate = bool(auto_propagate)
        self.auto_min_area_fraction = auto_min_area_fraction
        self.auto_seed_margin = auto_seed_margin
        self.prompt_free_agreement = prompt_free_agreement
        self.prompt_free_rebox = prompt_free_rebox
        self.prompt_free_refine = prompt_free_refine
        self.class_boxes = bool(class_boxes)
        self.ppt_beside_boxes = ppt_beside_boxes
        self.propagation = dict(propagation or {})
        self.last_reached: dict[int, list[int]] = {}

    def __call__(self, inputs: torch.Tensor, network: SegMoTE, *args: Any, **kwargs: Any) -> torch.Tensor:
        """[1, C, H, W, S] (or [1, C, H, W]) oriented image in [0, 1] carrying ``meta[PROMPTS_META_KEY]`` ->
        [1, 1, H, W, S] (or [1, 1, H, W]) label map on the same grid."""
        if inputs.ndim not in (4, 5) or inputs.shape[0] != 1:
            raise ValueError(f"expected one image [1, C, H, W(, S)], got shape {tuple(inputs.shape)}")
        meta = getattr(inputs, "meta", {})
        if PROMPTS_META_KEY not in meta:
            raise RequestError(f"the image carries no prompts (meta '{PROMPTS_META_KEY}'): put AttachPromptsd in "
                               "the pre-processing")
        prompts, seeds = meta[PROMPTS_META_KEY], meta.get(PROPAGATION_META_KEY) or []
        model = getattr(network, "module", network)  # DistributedDataParallel
        if prompts is None and model.ppt is None:
            raise RequestError("prompt-free use needs a model trained with PPT (a binary task); give boxes or a ROI")
        segmenter = SliceSegmenter(model, backbone=self.backbone, batch_size=self.batch_size, cache=self.cache,
                                   overlap=self.overlap)
        image = torch.as_tensor(inputs[0]).cpu()
        self.last_reached = {}
        if seeds:
            if self.ppt_beside_boxes:
                raise RequestError("propagated boxes are not supported for a binary model that adds PPT beside boxes")
            # a class-conditioned model's prompt-free masks are the walks' second opinion, decoded where asked
            embeddings: dict[int, torch.Tensor] = {}
            opinion = second_opinion(segmenter, image, self.auto_classes, embeddings=embeddings,
                                     agreement=self.prompt_free_agreement, rebox=self.prompt_free_rebox)
            labels, self.last_reached = propagate(segmenter, image, seeds, prompts=prompts, embeddings=embeddings,
                                                  **self.propagation, **opinion)
        elif prompts is None and self.auto_classes and self.auto_propagate and image.ndim == 4 and image.shape[-1] > 1:
            labels, self.last_reached = propagate_auto(segmenter, image, self.auto_classes,
                                                       min_area_fraction=self.auto_min_area_fraction,
                                                       seed_margin=self.auto_seed_margin,
                                                       agreement=self.prompt_free_agreement,
                                                       **self.propagation)
        elif prompts is None and self.auto_classes:
            labels = segmenter(image, None, auto_classes=self.auto_classes, auto_presence=self.auto_presence,
                               prompt_free_refine=automatic_refine(image, self.prompt_free_refine))
        else:
            labels = segmenter(image, prompts, prompt_free_class=self.prompt_free_class,
                               prompt_free_refine=self.prompt_free_refine,
                               class_boxes=self.class_boxes and prompts is not None,
                               ppt_beside_boxes=self.ppt_beside_boxes and prompts is not None)
        return labels[None].to(inputs.device)
