"""The class-conditioned prompt-free masks of a volume's slices: each class asked for with no prompt, either
exclusive (every class decoded, a pixel that several claim given to the one with the highest logit) or per class
(only the class asked about decoded, its mask as the model gives it).

:func:`~segmote_monai.inferers.auto_seeds.auto_seeds` decodes the exclusive masks on every slice to choose its seeds;
:class:`PromptFreeMasks` decodes them only on the slices a walk asks about, the second opinion of
:func:`~segmote_monai.inferers.propagation.propagate` for a user's key-slice or 3D box (a walk that would stop goes
on where the class's prompt-free mask agrees with its new mask; a 3D box's walk that doubts its mask also tries the
box of that prompt-free mask). :func:`second_opinion` gives ``propagate`` both, per class, as the bundle and its
benchmark ask.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from segmote_monai.data.slicing import volume_to_slices
from segmote_monai.inferers.slices import SliceSegmenter

__all__ = ["PromptFreeMasks", "decode_prompt_free", "second_opinion"]


@torch.no_grad()
def decode_prompt_free(segmenter: SliceSegmenter, embedding: torch.Tensor, class_ids: torch.Tensor,
                       hw: tuple[int, int], *, exclusive: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt-free masks [K, H, W] bool and predicted IoUs [K] of the classes ``class_ids`` ([K], the ids the model
    is told) on one slice, from its encoder output ``embedding`` [1, D, h, w]; ``hw``: the slice's size.
    ``exclusive``: a pixel that several classes claim goes to the one with the highest logit."""
    model = segmenter.model
    out = model.predict(image_embeddings=embedding, image_index=torch.zeros_like(class_ids), class_ids=class_ids)
    logits = segmenter._unresize(out.masks.cpu(), hw)[:, 0]
    masks = logits > 0
    if exclusive:
        masks &= logits.argmax(0) == torch.arange(len(logits))[:, None, None]
    return masks, out.iou_predictions[:, 0].cpu()


class _ClassMasks:
    """One class's view of :class:`PromptFreeMasks`: ``[z]`` -> its [H, W] bool mask on slice ``z``."""

    def __init__(self, masks: PromptFreeMasks, index: int) -> None:
        self._masks, self._index = masks, index

    def __getitem__(self, z: int) -> torch.Tensor:
        return self._masks.of_class(z, self._index)


class PromptFreeMasks(Mapping[int, _ClassMasks]):
    """Class id -> per-slice prompt-free masks of ``image`` ([C, H, W, S], oriented, in [0, 1]), decoded the first
    time they are read, from ``embeddings`` (slice index -> [1, D, h, w], shared with
    :func:`~segmote_monai.inferers.propagation.propagate`, so that each slice is encoded once; filled here where a
    slice is not yet encoded). ``class_offset`` as :class:`SliceSegmenter`'s.

    ``exclusive``: a pixel that several classes claim goes to the one with the highest logit, so reading any class's
    mask on a slice decodes every class of ``classes`` there (one decoder call, its cost linear in the classes);
    False: only the class read is decoded, its mask as the model gives it.
    """

    def __init__(self, segmenter: SliceSegmenter, image: torch.Tensor, classes: Sequence[int], *,
                 embeddings: dict[int, torch.Tensor], class_offset: int = 0, exclusive: bool = True) -> None:
        if not classes:
            raise ValueError("PromptFreeMasks needs at least one class")
        if not getattr(segmenter.model, "class_conditioned", False):
            raise ValueError("prompt-free masks per class need a class-conditioned model (trained with class_prompts)")
        self._segmenter = segmenter
        self._slices = volume_to_slices(torch.as_tensor(image))
        self._classes = [int(c) for c in classes]
        self._device = next(segmenter.model.decoder.parameters()).device
        self._ids = torch.tensor([c + class_offset for c in self._classes], device=self._device)
        self._embeddings = embeddings
        self._exclusive = exclusive
        self._masks: dict[tuple[int, int], torch.Tensor] = {}  # (slice, class index) -> [H, W]

    def __getitem__(self, class_id: int) -> _ClassMasks:
        if int(class_id) not in self._classes:
            raise KeyError(class_id)
        return _ClassMasks(self, self._classes.index(int(class_id)))

    def __iter__(self) -> Iterator[int]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    @property
    def decoded(self) -> list[int]:
        """The slices on which any class was decoded so far (sorted)."""
        return sorted({z for z, _ in self._masks})

    def on_slice(self, z: int) -> torch.Tensor:
        """[K, H, W] bool: every class's mask on slice ``z``, in the order of ``classes``."""
        return torch.stack([self.of_class(z, k) for k in range(len(self._classes))])

    def of_class(self, z: int, index: int) -> torch.Tensor:
        """[H, W] bool: the mask on slice ``z`` of the class at ``index`` of ``classes``."""
        if (z, index) not in self._masks:
            indices = range(len(self._classes)) if self._exclusive else [index]
            for k, mask in zip(indices, self._decode(z, self._ids[list(indices)])):
                self._masks[z, k] = mask
        return self._masks[z, index]

    def _decode(self, z: int, ids: torch.Tensor) -> torch.Tensor:
        embedding = self._segmenter.slice_embedding(self._slices, z, self._embeddings)
        return decode_prompt_free(self._segmenter, embedding, ids, tuple(self._slices.shape[-2:]),
                                  exclusive=self._exclusive)[0]


def second_opinion(segmenter: SliceSegmenter, image: torch.Tensor, classes: Sequence[int] | None, *,
                   embeddings: dict[int, torch.Tensor], agreement: float | None,
                   rebox: float | None, exclusive: bool = False) -> dict[str, Any]:
    """:func:`~segmote_monai.inferers.propagation.propagate`'s keyword arguments for a user's seeds on a
    class-conditioned model: the ``classes``' :class:`PromptFreeMasks` (on the shared ``embeddings``) as ``agree``,
    ``min_agreement`` ``agreement`` and ``rebox_below`` ``rebox``; none where there are no classes or both are None.

    The masks are not ``exclusive`` by default: a walk reads one class's mask on a slice, and decoding that class
    alone costs a quarter of decoding CHAOS's four. On the tuning patients 02, 01, 03, 05 (3D boxes, ``rebox`` 0.9)
    the mean 3D Dice was 0.881 against 0.880 exclusive, the key-slice walks' unchanged (0.868); on held-out patient
    21 the walks took 1.12-1.16 of the model's own compute against 1.21-1.25 (BENCHMARKS.md, section
    ``propagation_per_class``)."""
    if not classes or (agreement, rebox) == (None, None):
        return {}
    masks = PromptFreeMasks(segmenter, image, classes, embeddings=embeddings, exclusive=exclusive)
    return {"agree": masks, "min_agreement": agreement, "rebox_below": rebox}
