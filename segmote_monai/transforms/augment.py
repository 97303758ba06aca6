"""Augmentation the embedding cache can hold: a fixed set of variants per image.

The encoder is frozen and its output cached by the content of its input (:mod:`segmote_monai.data.cache`), so a
random rotation drawn afresh each epoch would miss the cache every time (LiteMedSAM's encoder is ~90% of a CPU
training step). Here the randomness is split in two: ``variants`` parameter sets (rotation, isotropic zoom,
intensity gamma) are drawn once, from their own ``seed``; each training sample then draws which one to use. An
image is thus encoded at most ``variants + 1`` times over a whole training, however many epochs it runs.

Order in a training slice pipeline: ``ToRGBd -> RandFixedVariantd -> ResizeLongestSidePadd -> BackboneNormalized``
(intensities in [0, 1], labels on the image's own grid).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform

__all__ = ["AffineVariant", "FixedAffine", "RandFixedVariantd", "affine_variants"]


@dataclass(frozen=True)
class AffineVariant:
    """One variant: rotation (degrees, counter-clockwise about the image centre), isotropic zoom (> 1 enlarges
    the content) and gamma (applied to [0, 1] intensities; 1 leaves them)."""

    angle: float = 0.0
    zoom: float = 1.0
    gamma: float = 1.0


def _pair(name: str, value: Sequence[float], low: float) -> tuple[float, float]:
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or not low < pair[0] <= pair[1]:
        raise ValueError(f"{name} must be (low, high) with {low:g} < low <= high, got {tuple(value)}")
    return pair  # type: ignore[return-value]


def affine_variants(count: int, *, rotate: float = 20.0, zoom: Sequence[float] = (0.8, 1.25),
                    gamma: Sequence[float] = (0.7, 1.4), seed: int = 0) -> list[AffineVariant]:
    """``count`` variants drawn uniformly (angle in [-rotate, rotate], zoom and gamma log-uniform in their
    ranges) from their own random state: the same ``seed`` gives the same variants in every run and process,
    which is what lets the cache hold them."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if not 0.0 <= rotate <= 180.0:
        raise ValueError(f"rotate must be in [0, 180] degrees, got {rotate}")
    zoom, gamma = _pair("zoom", zoom, 0.0), _pair("gamma", gamma, 0.0)
    rng = np.random.RandomState(seed)
    return [AffineVariant(angle=float(rng.uniform(-rotate, rotate)),
                          zoom=float(math.exp(rng.uniform(math.log(zoom[0]), math.log(zoom[1])))),
                          gamma=float(math.exp(rng.uniform(math.log(gamma[0]), math.log(gamma[1])))))
            for _ in range(count)]


class FixedAffine(Transform):
    """Applies one :class:`AffineVariant` to a [C, H, W] image (bilinear, gamma) or label map (nearest, values
    kept), returned as a plain tensor (a training-only transform: nothing inverts it). What leaves the frame is
    lost; what enters it is 0, like the resize's padding.

    Rotation and zoom act in pixel units, so a non-square image is rotated, not sheared.
    """

    def __init__(self, variant: AffineVariant, *, mode: str = "bilinear") -> None:
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear' (images) or 'nearest' (labels), got {mode!r}")
        self.variant = variant
        self.mode = mode

    def theta(self, height: int, width: int) -> torch.Tensor:
        """The [2, 3] matrix of :func:`torch.nn.functional.affine_grid`: output pixel offsets from the centre
        mapped back to input offsets, in normalised coordinates (``align_corners=False``)."""
        a = math.radians(self.variant.angle)
        # output offset (pixels, y down) -> input offset: the inverse rotation, divided by the zoom
        inverse = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]],
                               dtype=torch.float64) / self.variant.zoom
        half = torch.tensor([width / 2.0, height / 2.0], dtype=torch.float64)
        linear = inverse * half[None, :] / half[:, None]
        return torch.cat([linear, torch.zeros(2, 1, dtype=torch.float64)], dim=1).float()

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        # a plain tensor: a MetaTensor's affine would no longer describe the moved grid
        data = img.as_tensor() if hasattr(img, "as_tensor") else torch.as_tensor(img)
        if data.ndim != 3:
            raise ValueError(f"expected a [C, H, W] image, got shape {tuple(data.shape)}")
        out = data.float()
        v = self.variant
        if v.angle != 0.0 or v.zoom != 1.0:
            grid = F.affine_grid(self.theta(*out.shape[1:])[None], [1, *out.shape], align_corners=False)
            out = F.grid_sample(out[None], grid, mode=self.mode, padding_mode="zeros", align_corners=False)[0]
        if self.mode == "bilinear" and v.gamma != 1.0:
            out = out.clamp(0.0, 1.0).pow(v.gamma)
        return out.to(data.dtype)


class RandFixedVariantd(Randomizable, MapTransform):
    """Gives a training sample, with probability ``share``, one of ``variants`` fixed augmentations
    (:func:`affine_variants`) chosen uniformly, applied to the image (bilinear, gamma) and to every label key
    (nearest); otherwise the sample passes unchanged. ``variants=0`` or ``share=0`` turns it off.

    A variant that would cost a class present on the label half of its expected area (pushed out of the frame)
    is not used for that image: the sample passes unchanged, the same way every time, so the cache still holds
    at most ``variants + 1`` inputs per image.

    Args:
        keys: the image key first, then label keys (e.g. ``label`` and ``label_neighbours``).
        variants: how many fixed variants (the bundle's ``augment_variants``).
        share: the probability of an augmented sample (``augment_share``).
        rotate, zoom, gamma, seed: see :func:`affine_variants` (``augment_rotate``, ``augment_zoom``,
            ``augment_gamma``, ``augment_seed``).
        label_key: the label whose classes are checked.
    """

    def __init__(self, keys: KeysCollection = ("image", "label"), *, variants: int = 8, share: float = 0.5,
                 rotate: float = 20.0, zoom: Sequence[float] = (0.8, 1.25), gamma: Sequence[float] = (0.7, 1.4),
                 seed: int = 0, label_key: str = "label", allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share}")
        self.variants = affine_variants(variants, rotate=rotate, zoom=zoom, gamma=gamma, seed=seed)
        self.share = float(share)
        self.label_key = label_key
        self._variant: AffineVariant | None = None

    def randomize(self, data: Any = None) -> None:
        use = bool(self.variants) and self.share > 0 and self.R.rand() < self.share
        self._variant = self.variants[self.R.randint(len(self.variants))] if use else None

    def _keeps_classes(self, label: torch.Tensor, moved: torch.Tensor, zoom: float) -> bool:
        for value in torch.unique(label):
            if value == 0:
                continue
            if float((moved == value).sum()) < 0.5 * zoom**2 * float((label == value).sum()):
                return False
        return True

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if self._variant is None:
            return d
        out = {key: FixedAffine(self._variant, mode="bilinear" if key == self.keys[0] else "nearest")(d[key])
               for key in self.key_iterator(d)}
        if self.label_key in out and not self._keeps_classes(torch.as_tensor(d[self.label_key]),
                                                             torch.as_tensor(out[self.label_key]),
                                                             self._variant.zoom):
            return d
        d.update(out)
        return d
