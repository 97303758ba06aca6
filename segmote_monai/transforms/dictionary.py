"""Dictionary versions of :mod:`segmote_monai.transforms.array`, plus loading and slicing of data dicts.

A training pipeline, split where the embedding cache sits (see :mod:`segmote_monai.data.cache`)::

    LoadPaird -> ScaleIntensityByModalityd      (per volume, deterministic: CacheDataset-friendly)
    RandSliceSamplerd                           (random slices; 2D images pass)
    ToRGBd -> ResizeLongestSidePadd -> BackboneNormalized   (per slice, deterministic: the cached input)
    RandPromptd                                 (random prompt per sample: after the cache)
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform, Randomizable, Resized, SpatialPadd

from segmote_monai.data.readers import load_image
from segmote_monai.data.slicing import check_pair, orient_for_slicing, restore_grid, volume_to_slices
from segmote_monai.errors import InputFileError
from segmote_monai.transforms.array import (
    LabelToPrompts,
    RandClassTarget,
    RandPrompt,
    ScaleIntensityByModality,
    ToRGB,
    backbone_normalization,
)

__all__ = [
    "BackboneNormalized",
    "LabelToPromptsd",
    "LoadPaird",
    "RandClassTargetd",
    "RandPromptd",
    "RandSliceSamplerd",
    "ResizeLongestSidePadd",
    "RestoreGridd",
    "ScaleIntensityByModalityd",
    "SliceVolumed",
    "ToRGBd",
]


class ItemDefaultsd(MapTransform):
    """Fills the keys an item lacks (or holds as None) from ``defaults``; keys it has are kept. Items from
    MONAI Label's datastore carry only ``image`` and ``label``: this gives them a modality and label encoding.
    """

    def __init__(self, defaults: Mapping[str, Any]) -> None:
        super().__init__(list(defaults), allow_missing_keys=True)
        self.defaults = dict(defaults)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, value in self.defaults.items():
            if d.get(key) is None:
                d[key] = copy.deepcopy(value)
        return d


class LoadPaird(MapTransform):
    """Loads ``image`` (and ``label`` when present) from their paths, reorients both for slicing, checks
    that the label lies on the image's grid and holds only declared values.

    Args:
        keys: (image key, label key).
        slice_axis: ``axial`` (default), ``coronal`` or ``sagittal``.
        label_values: the values a label may hold (with background 0), or
        mask_threshold: binarise masks stored as 0/255 or JPEG (foreground = grey value > threshold).
        require_foreground: refuse a label with no foreground (training, where it would give no prompt).
        encoding_key: an item may carry its own ``{"label_values": [...]}`` or ``{"mask_threshold": t}`` under
            this key (items of a :class:`~segmote_monai.data.joint.JointDatalist`); it wins over the arguments
            above, which may then both be None. The key is removed from the output.
        offset_key: an item's ``class_offset`` under this key is added to its non-zero label values (global
            class ids across datasets); the key stays.

    An image whose every voxel has one value is refused (nothing can be segmented in it).
    """

    def __init__(
        self,
        keys: Sequence[str] = ("image", "label"),
        *,
        slice_axis: str = "axial",
        label_values: Sequence[int] | None = None,
        mask_threshold: float | None = None,
        require_foreground: bool = False,
        allow_missing_keys: bool = True,
        encoding_key: str = "label_encoding",
        offset_key: str = "class_offset",
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 2:
            raise ValueError(f"keys must be (image key, label key), got {self.keys}")
        if label_values is not None and mask_threshold is not None:
            raise ValueError("give exactly one of label_values (a label map) or mask_threshold (0/255 masks)")
        self.slice_axis = slice_axis
        self.encoding = self._encoding(label_values, mask_threshold)
        self.require_foreground = require_foreground
        self.encoding_key = encoding_key
        self.offset_key = offset_key

    @staticmethod
    def _encoding(label_values: Sequence[int] | None, mask_threshold: float | None) -> dict[str, Any] | None:
        if mask_threshold is not None:
            return {"mask_threshold": float(mask_threshold)}
        if label_values is not None:
            return {"label_values": sorted({0, *map(int, label_values)})}
        return None

    def _label(self, path: Any, encoding: dict[str, Any] | None, offset: int) -> torch.Tensor:
        if encoding is None:
            raise ValueError(f"no label encoding for {path}: give label_values or mask_threshold, or an item "
                             f"'{self.encoding_key}'")
        label = load_image(path)
        if encoding["mask_threshold"] is not None:
            grey = label.float().mean(dim=0, keepdim=True) if label.shape[0] > 1 else label.float()
            out = (grey > encoding["mask_threshold"]).to(torch.uint8)
        else:
            values = torch.unique(label).tolist()
            declared = encoding["label_values"]
            extra = sorted(set(values) - set(declared))
            if extra:
                raise InputFileError(path, f"label values {extra[:5]} are not among the declared {declared}")
            out = label.as_tensor()
        largest = int(out.max()) + offset
        out = out.to(torch.uint8 if largest < 256 else torch.int64)
        if offset:
            out = torch.where(out > 0, out + offset, out)
        return MetaTensor(out, meta=label.meta)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image_key, label_key = self.keys
        image = orient_for_slicing(load_image(d[image_key]), self.slice_axis)
        voxels = image.as_tensor().numpy()  # numpy: torch has no min/max for uint16 images
        if voxels.min() == voxels.max():
            raise InputFileError(d[image_key], f"every voxel has the value {voxels.flat[0]:g}: nothing to segment")
        d[image_key] = image
        item_encoding = d.pop(self.encoding_key, None)
        encoding = self.encoding
        if item_encoding is not None:
            encoding = self._encoding(item_encoding.get("label_values"), item_encoding.get("mask_threshold"))
        if label_key in d and d[label_key] is not None:
            label = self._label(d[label_key], encoding and {"mask_threshold": None, **encoding},
                                int(d.get(self.offset_key) or 0))
            label = orient_for_slicing(label, self.slice_axis)
            check_pair(image, label)
            if self.require_foreground and not label.any():
                raise InputFileError(d[label_key], "the label is empty (no foreground voxel): label the case or "
                                     "leave it out of training")
            d[label_key] = label
        elif not self.allow_missing_keys:
            raise KeyError(f"missing key {label_key!r}")
        return d


class ScaleIntensityByModalityd(MapTransform):
    """:class:`ScaleIntensityByModality` with the modality from the data (``modality_key``) or fixed."""

    def __init__(self, keys: KeysCollection = "image", *, modality: str | None = None,
                 modality_key: str = "modality", **kwargs: Any) -> None:
        super().__init__(keys)
        self.modality = modality
        self.modality_key = modality_key
        self.kwargs = kwargs
        self._scalers: dict[str, ScaleIntensityByModality] = {}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        modality = self.modality or d.get(self.modality_key)
        if modality is None:
            raise ValueError(f"no modality: set modality= or give '{self.modality_key}' in each item")
        scaler = self._scalers.setdefault(modality, ScaleIntensityByModality(modality, **self.kwargs))
        for key in self.key_iterator(d):
            d[key] = scaler(d[key])
        return d


class ToRGBd(MapTransform):
    def __init__(self, keys: KeysCollection = "image") -> None:
        super().__init__(keys)
        self.to_rgb = ToRGB()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.to_rgb(d[key])
        return d


class ResizeLongestSidePadd(Compose):
    """Dictionary :class:`~segmote_monai.transforms.array.ResizeLongestSidePad`, invertible by ``Invertd``.

    ``mode`` per key, e.g. ``("bilinear", "nearest-exact")`` for (image, label).
    """

    def __init__(self, keys: KeysCollection, size: int, mode: Sequence[str] | str = "bilinear",
                 allow_missing_keys: bool = True) -> None:
        keys = [keys] if isinstance(keys, str) else list(keys)
        modes = [mode] * len(keys) if isinstance(mode, str) else list(mode)
        super().__init__([
            Resized(keys=keys, spatial_size=size, size_mode="longest", mode=modes,
                    anti_aliasing=[not m.startswith("nearest") for m in modes], allow_missing_keys=allow_missing_keys),
            SpatialPadd(keys=keys, spatial_size=(size, size), method="end", allow_missing_keys=allow_missing_keys),
        ])
        self.size = size


class BackboneNormalized(MapTransform):
    """The backbone's own normalisation (:func:`backbone_normalization`) of [0, 1] RGB images."""

    def __init__(self, keys: KeysCollection = "image", *, backbone: str) -> None:
        super().__init__(keys)
        self.normalize = backbone_normalization(backbone)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalize(d[key])
        return d


class _PromptsFromLabeld(Randomizable, MapTransform):
    """Runs a prompt transform of :mod:`~segmote_monai.transforms.array` on the label under ``label_key`` and
    adds what it returns to the data; seeding reaches the inner transform."""

    prompt_type: type[LabelToPrompts]

    def __init__(self, label_key: str = "label", **kwargs: Any) -> None:
        MapTransform.__init__(self, label_key)
        self.prompts = self.prompt_type(**kwargs)

    def set_random_state(self, seed=None, state=None) -> _PromptsFromLabeld:
        super().set_random_state(seed, state)
        self.prompts.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:  # the inner transform draws
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d.update(self.prompts(d[self.keys[0]]))
        return d


class LabelToPromptsd(_PromptsFromLabeld):
    """Adds ``boxes``, ``class_ids`` (and ``points`` / ``point_labels``) for every class present in the
    2D label under ``label_key``: the evaluation and inference prompts."""

    prompt_type = LabelToPrompts


class RandClassTargetd(_PromptsFromLabeld):
    """Adds ``auto_class_id`` and ``auto_mask``, a class present or absent on the 2D label under ``label_key``
    (see :class:`~segmote_monai.transforms.array.RandClassTarget`): class-conditioned prompt-free training."""

    prompt_type = RandClassTarget


class RandPromptd(_PromptsFromLabeld):
    """Adds one training prompt per sample (see :class:`~segmote_monai.transforms.array.RandPrompt`):
    ``mask``, ``class_id``, ``box`` and optionally ``points`` / ``point_labels``. With ``neighbours_key``
    (where :class:`RandSliceSamplerd` put the neighbouring slices' labels) and ``neighbour_share`` > 0, that
    share of the boxes comes from a neighbouring slice."""

    prompt_type = RandPrompt

    def __init__(self, label_key: str = "label", *, neighbours_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(label_key, **kwargs)
        self.neighbours_key = neighbours_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        neighbours = d.get(self.neighbours_key) if self.neighbours_key is not None else None
        d.update(self.prompts(d[self.keys[0]], neighbours=neighbours))
        return d


def _slice_item(d: dict, keys: Sequence[Hashable], index: int) -> dict:
    item = dict(d)
    for key in keys:
        item[key] = volume_to_slices(d[key])[index]
    item["slice_index"] = index
    return item


class SliceVolumed(MapTransform):
    """A dict holding [C, H, W, S] volumes -> a list of S dicts holding [C, H, W] slices (every slice, in
    order, with ``slice_index``); a 2D item -> a list of itself. For evaluation and inference."""

    def __init__(self, keys: KeysCollection = ("image", "label"), allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        count = volume_to_slices(d[keys[0]]).shape[0]
        return [_slice_item(d, keys, i) for i in range(count)]


class RandSliceSamplerd(Randomizable, MapTransform):
    """Draws ``num_samples`` slices of a volume for training: each is an empty slice (no label value > 0)
    with probability ``empty_share`` (when the volume has one), else a slice with foreground. A 2D item
    gives ``[item]``.

    ``neighbours_key``: also put the labels of the slices before and after each drawn slice there, [2, H, W]
    (zeros past the volume's ends and for 2D items), for :class:`RandPromptd`'s neighbour boxes.
    """

    def __init__(self, keys: KeysCollection = ("image", "label"), *, label_key: str = "label",
                 num_samples: int = 4, empty_share: float = 0.0, neighbours_key: str | None = None) -> None:
        super().__init__(keys)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not 0.0 <= empty_share <= 1.0:
            raise ValueError(f"empty_share must be in [0, 1], got {empty_share}")
        self.label_key = label_key
        self.num_samples = num_samples
        self.empty_share = empty_share
        self.neighbours_key = neighbours_key

    def randomize(self, foreground: np.ndarray) -> None:
        empty = np.flatnonzero(~foreground)
        full = np.flatnonzero(foreground)
        picks = []
        for _ in range(self.num_samples):
            use_empty = (len(empty) and self.R.rand() < self.empty_share) or not len(full)
            picks.append(int(self.R.choice(empty if use_empty else full)))
        self._picks = picks

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        label = d[self.label_key]
        if label.ndim == 3:
            item = {**d, "slice_index": 0}
            if self.neighbours_key is not None:
                item[self.neighbours_key] = torch.zeros((2, *label.shape[1:]), dtype=torch.as_tensor(label).dtype)
            return [item]
        foreground = (torch.as_tensor(label) > 0).flatten(0, 2).any(dim=0).numpy()
        self.randomize(foreground)
        keys = list(self.key_iterator(d))
        items = [_slice_item(d, keys, i) for i in self._picks]
        if self.neighbours_key is not None:
            slices = volume_to_slices(torch.as_tensor(label))[:, 0]
            empty = torch.zeros_like(slices[0])
            for item, i in zip(items, self._picks):
                item[self.neighbours_key] = torch.stack(
                    [slices[i - 1] if i > 0 else empty, slices[i + 1] if i + 1 < len(slices) else empty])
        return items


class RestoreGridd(MapTransform):
    """Puts predictions made on the oriented grid of ``reference_key`` (as :class:`LoadPaird` leaves it) back
    onto the grid the input was read on (:func:`~segmote_monai.data.slicing.restore_grid`)."""

    def __init__(self, keys: KeysCollection = "pred", *, reference_key: str = "image") -> None:
        super().__init__(keys)
        self.reference_key = reference_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = restore_grid(d[key], d[self.reference_key])
        return d
