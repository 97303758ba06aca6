"""Array transforms of the SPEC's pre-processing contract and prompt generation.

Order for a slice: :class:`ScaleIntensityByModality` (to [0, 1]) -> :class:`ToRGB` ->
:class:`ResizeLongestSidePad` (invertible) -> :func:`backbone_normalization`; prompts come from the label
after the same resize (:class:`LabelToPrompts`, :class:`RandPrompt`). Boxes are ``x0, y0, x1, y1`` in
pixels, x along columns (the last axis), y along rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, NormalizeIntensity, Randomizable, Resize, SpatialPad, Transform

from segmote_monai.modalities import MODALITIES
from segmote_monai.networks.backbones import BACKBONE_INPUT

__all__ = [
    "MODALITIES",
    "LabelToPrompts",
    "RandClassTarget",
    "RandPrompt",
    "ResizeLongestSidePad",
    "ScaleIntensityByModality",
    "ToRGB",
    "backbone_normalization",
    "box_of_mask",
    "jitter_box",
    "scale_boxes",
]

class ScaleIntensityByModality(Transform):
    """Brings intensities to [0, 1] by modality: CT through a HU window, MR through per-volume percentiles,
    X-ray and RGB photographs by bit depth (8-bit divided by 255; 16-bit and float through percentiles).

    A constant image becomes all zeros. The input's dtype (or ``meta["original_dtype"]``) tells the bit depth.
    """

    def __init__(
        self,
        modality: str,
        *,
        ct_window: Sequence[float] = (-160.0, 240.0),
        percentiles: Sequence[float] = (0.5, 99.5),
    ) -> None:
        modality = modality.upper()
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {list(MODALITIES)}, got {modality!r}")
        if len(ct_window) != 2 or ct_window[0] >= ct_window[1]:
            raise ValueError(f"ct_window must be (low, high) with low < high, got {tuple(ct_window)}")
        if len(percentiles) != 2 or not 0 <= percentiles[0] < percentiles[1] <= 100:
            raise ValueError(f"percentiles must be (low, high) with 0 <= low < high <= 100, got {tuple(percentiles)}")
        self.modality = modality
        self.ct_window = (float(ct_window[0]), float(ct_window[1]))
        self.percentiles = (float(percentiles[0]), float(percentiles[1]))

    def _range(self, img: torch.Tensor, source_dtype: str) -> tuple[float, float]:
        if self.modality == "CT":
            return self.ct_window
        if self.modality in ("XR", "RGB") and source_dtype == "uint8":
            return 0.0, 255.0
        values = torch.as_tensor(img).reshape(-1)
        if values.numel() > 1_000_000:  # percentiles of a large volume from a fixed-stride subsample
            values = values[:: values.numel() // 1_000_000 + 1]
        low, high = torch.quantile(values.float(), torch.tensor(self.percentiles) / 100.0).tolist()
        return low, high

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        source_dtype = str(getattr(img, "meta", {}).get("original_dtype", str(img.dtype).replace("torch.", "")))
        low, high = self._range(img, source_dtype)
        out = img.to(torch.float32, copy=True)  # one copy, then in place: a 512 x 512 x 300 CT is 300 MB a copy
        if high <= low:
            return out.zero_()
        return out.sub_(low).div_(high - low).clamp_(0.0, 1.0)


class ToRGB(Transform):
    """[1, H, W] grey -> [3, H, W] by repetition; [3, H, W] passes; [4, H, W] (RGBA) drops alpha."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        channels = img.shape[0]
        if channels == 1:
            return img.repeat(3, *([1] * (img.ndim - 1)))
        if channels in (3, 4):
            return img[:3]
        raise ValueError(f"expected 1 (grey), 3 (RGB) or 4 (RGBA) channels, got {channels}")


class ResizeLongestSidePad(Compose):
    """Resizes [C, H, W] so that the longest side is ``size`` (aspect kept), then pads the bottom and right
    to ``size x size``, as SAM expects. ``inverse`` crops the padding and resizes back exactly to (H, W).

    Use ``mode="nearest-exact"`` for label maps (pixel-centred: upscaling and back is lossless), ``"bilinear"``
    for images and logits.
    """

    def __init__(self, size: int, mode: str = "bilinear") -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        super().__init__([
            # Anti-aliasing (MONAI applies it only when shrinking) for images, never for label maps.
            Resize(spatial_size=size, size_mode="longest", mode=mode, anti_aliasing=not mode.startswith("nearest")),
            SpatialPad(spatial_size=(size, size), method="end"),
        ])
        self.size = size


def scale_boxes(boxes: torch.Tensor, original_hw: Sequence[int], size: int, *, inverse: bool = False) -> torch.Tensor:
    """Maps [N, 4] boxes between an (H, W) image and its :class:`ResizeLongestSidePad` version.

    Pixel centres map as in the resize: ``x' = (x + 0.5) * s - 0.5`` with ``s = size / max(H, W)``.
    """
    s = size / max(original_hw)
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    if inverse:
        return (boxes + 0.5) / s - 0.5
    return (boxes + 0.5) * s - 0.5


def backbone_normalization(backbone: str) -> NormalizeIntensity:
    """The backbone's own normalisation of [0, 1] RGB images (LiteMedSAM: none; SAM: ImageNet mean/std)."""
    if backbone not in BACKBONE_INPUT:
        raise ValueError(f"backbone must be one of {list(BACKBONE_INPUT)}, got {backbone!r}")
    _, mean, std = BACKBONE_INPUT[backbone]
    return NormalizeIntensity(subtrahend=mean, divisor=std, channel_wise=True)


def box_of_mask(mask: torch.Tensor) -> torch.Tensor:
    """Tight box [4] of a non-empty [H, W] mask (inclusive pixel indices)."""
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    if rows.numel() == 0:
        raise ValueError("box_of_mask needs a non-empty mask")
    return torch.tensor([cols[0], rows[0], cols[-1], rows[-1]], dtype=torch.float32)


def jitter_box(box: torch.Tensor, fraction: float, hw: Sequence[int], rng: np.random.RandomState) -> torch.Tensor:
    """Moves each side by up to ``fraction`` x the box's size along that side (uniform), clipped to the image."""
    if fraction == 0:
        return box.clone()
    width, height = float(box[2] - box[0] + 1), float(box[3] - box[1] + 1)
    shift = torch.as_tensor(rng.uniform(-fraction, fraction, 4), dtype=torch.float32)
    out = box + shift * torch.tensor([width, height, width, height])
    h, w = hw
    return torch.minimum(out.clamp(min=0.0), torch.tensor([w - 1, h - 1, w - 1, h - 1], dtype=torch.float32))


def _points(mask: torch.Tensor, box: torch.Tensor, n_pos: int, n_neg: int, rng: np.random.RandomState):
    """Positive points inside the mask, negative points inside the box but outside the mask."""
    coords, labels = [], []
    for count, region, value in ((n_pos, mask, 1), (n_neg, ~mask, 0)):
        if count == 0:
            continue
        if value == 0:  # negatives where a user would click them: near the object, inside its box
            inside_box = torch.zeros_like(mask)
            x0, y0, x1, y1 = box.round().long().tolist()
            inside_box[y0:y1 + 1, x0:x1 + 1] = True
            region = region & inside_box if (region & inside_box).any() else region
        ys, xs = torch.nonzero(region, as_tuple=True)
        if ys.numel() == 0:  # an all-background slice has no positive: pad with "not a point" (-1)
            coords += [[0.0, 0.0]] * count
            labels += [-1] * count
            continue
        pick = torch.as_tensor(rng.randint(0, ys.numel(), count))
        coords += torch.stack([xs[pick], ys[pick]], dim=1).float().tolist()
        labels += [value] * count
    return torch.tensor(coords, dtype=torch.float32).reshape(-1, 2), torch.tensor(labels, dtype=torch.long)


class LabelToPrompts(Randomizable, Transform):
    """A 2D label map [1, H, W] -> one prompt per present class: ``boxes`` [K, 4], ``class_ids`` [K] and, when
    asked, ``points`` [K, P, 2] with ``point_labels`` [K, P] (1 inside the object, 0 outside it in its box).

    ``jitter`` moves each box side by up to that fraction of the box size (0: tight boxes); seeded through
    MONAI's ``set_random_state``.
    """

    def __init__(self, classes: Sequence[int], *, jitter: float = 0.0, num_positive: int = 0,
                 num_negative: int = 0) -> None:
        if not classes or any(int(c) <= 0 for c in classes):
            raise ValueError(f"classes must be a non-empty list of label values > 0, got {list(classes)}")
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        if num_positive < 0 or num_negative < 0:
            raise ValueError(f"point counts must be >= 0, got {num_positive} and {num_negative}")
        self.classes = [int(c) for c in classes]
        self.jitter = float(jitter)
        self.num_positive = int(num_positive)
        self.num_negative = int(num_negative)

    def randomize(self, data=None) -> None:  # draws happen per object in __call__, from self.R
        pass

    def prompt_for(self, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Prompts for one binary [H, W] mask; an empty mask gets the whole-image box."""
        h, w = mask.shape
        if mask.any():
            box = jitter_box(box_of_mask(mask), self.jitter, (h, w), self.R)
        else:
            box = torch.tensor([0.0, 0.0, w - 1.0, h - 1.0])
        out = {"box": box}
        if self.num_positive or self.num_negative:
            out["points"], out["point_labels"] = _points(mask, box, self.num_positive, self.num_negative, self.R)
        return out

    def __call__(self, label: torch.Tensor) -> dict[str, torch.Tensor]:
        label = torch.as_tensor(label)[0]
        present = [c for c in self.classes if bool((label == c).any())]
        prompts = [self.prompt_for(label == c) for c in present]
        out = {
            "boxes": torch.stack([p["box"] for p in prompts]) if prompts else torch.zeros(0, 4),
            "class_ids": torch.tensor(present, dtype=torch.long),
        }
        if self.num_positive or self.num_negative:
            p = self.num_positive + self.num_negative
            out["points"] = torch.stack([q["points"] for q in prompts]) if prompts else torch.zeros(0, p, 2)
            out["point_labels"] = (torch.stack([q["point_labels"] for q in prompts]) if prompts
                                   else torch.zeros(0, p, dtype=torch.long))
        return out


class RandPrompt(LabelToPrompts):
    """One training prompt per sample: picks one class present in the [1, H, W] label (uniformly; an absent
    class when none is present), and returns its binary ``mask`` [1, H, W] (the target and PPT's mask
    carrier), ``class_id``, ``box`` [4] and optionally ``points`` [P, 2] / ``point_labels`` [P].

    ``neighbour_share``: the share of samples whose box is the class's tight box on a neighbouring slice
    (``neighbours`` [N, H, W], e.g. the slices above and below from :class:`RandSliceSamplerd`), one where the
    class is present, chosen uniformly; the mask stays this slice's. That is the box a propagation walk hands
    the next slice (:func:`~segmote_monai.inferers.propagation.propagate`, margin 0). Measured with the shipped
    recipe at 0.5 (``benchmarks/neighbour_boxes.py``, two seeds): the slice Dice with such boxes rises a little
    (0.878 -> 0.881) and the walks fall (key slice 0.882 -> 0.872, 3D box 0.884 -> 0.870), so the bundle's
    default is 0. Samples with no such neighbour keep their own box; 0 draws nothing more from the random state.
    """

    def __init__(self, classes: Sequence[int], *, neighbour_share: float = 0.0, **kwargs: Any) -> None:
        super().__init__(classes, **kwargs)
        if not 0.0 <= neighbour_share <= 1.0:
            raise ValueError(f"neighbour_share must be in [0, 1], got {neighbour_share}")
        self.neighbour_share = float(neighbour_share)

    def randomize(self, data: torch.Tensor) -> None:
        present = [c for c in self.classes if bool((data == c).any())]
        self._class = int(self.R.choice(present or self.classes))

    def __call__(self, label: torch.Tensor, randomize: bool = True,
                 neighbours: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        label = torch.as_tensor(label)[0]
        if randomize:
            self.randomize(label)
        mask = label == self._class
        out = {"mask": mask[None].float(), "class_id": torch.tensor(self._class), **self.prompt_for(mask)}
        if self.neighbour_share and neighbours is not None and mask.any() \
                and self.R.rand() < self.neighbour_share:
            around = [n == self._class for n in torch.as_tensor(neighbours)]
            around = [n for n in around if n.any()]
            if around:
                out["box"] = box_of_mask(around[self.R.randint(len(around))])
        return out


class RandClassTarget(Randomizable, Transform):
    """The class-conditioned prompt-free target of one training sample (automatic multi-class segmentation):
    one class of ``classes``, present on the [1, H, W] label with probability ``present_share`` and absent
    otherwise (when the slice has both kinds), with its binary mask, empty for an absent class. Absent classes
    teach the class-conditioned PPT to answer "not on this slice", which a Dice loss on present classes alone
    never asks of it.

    Returns ``auto_class_id`` (a 0-d long tensor) and ``auto_mask`` [1, H, W] float.
    """

    def __init__(self, classes: Sequence[int], *, present_share: float = 0.5) -> None:
        if not classes or any(int(c) <= 0 for c in classes):
            raise ValueError(f"classes must be a non-empty list of label values > 0, got {list(classes)}")
        if not 0.0 <= present_share <= 1.0:
            raise ValueError(f"present_share must be in [0, 1], got {present_share}")
        self.classes = [int(c) for c in classes]
        self.present_share = float(present_share)

    def randomize(self, data: torch.Tensor) -> None:
        present = [c for c in self.classes if bool((data == c).any())]
        absent = [c for c in self.classes if c not in present]
        use_present = bool(present) and (not absent or self.R.rand() < self.present_share)
        self._class = int(self.R.choice(present if use_present else absent))

    def __call__(self, label: torch.Tensor, randomize: bool = True) -> dict[str, torch.Tensor]:
        label = torch.as_tensor(label)[0]
        if randomize:
            self.randomize(label)
        return {"auto_class_id": torch.tensor(self._class), "auto_mask": (label == self._class)[None].float()}
