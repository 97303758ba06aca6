"""Prompts for a whole image as a request gives them, attached to the image for the slice inferer.

MONAI Label, MONAI Deploy and MONAI's evaluators hand an inferer one tensor: ``inferer(inputs, network)``. The
prompts therefore travel in the image's meta dictionary, under :data:`PROMPTS_META_KEY`: per slice of the
oriented image, ``(boxes [K, 4], class_ids [K])`` in that slice's pixels, or None for prompt-free (PPT) use.

Prompt modes (:data:`PROMPT_MODES`):

- ``auto``: no prompt (PPT tokens only); binary models, or models with class-conditioned PPT (every class).
- ``box``: exactly one of

  - ``boxes``: ``{"boxes": [{"label": 1, "box": [...], "space": "voxel"}]}`` (or the list alone, a JSON text,
    or a path to a JSON file), where ``box`` is ``[x0, y0, x1, y1]`` on a 2D image or
    ``[i0, j0, k0, i1, j1, k1]`` on a volume (voxel indices of the file as stored, or ``"space": "world"`` for
    RAS millimetres); a 3D box gives a box on every slice it spans; ``label`` is a value or a name;
    ``"propagate": true`` (volumes) makes the box a seed instead: a box on one slice (``k0 == k1``) is propagated
    through the whole volume, a 3D box from its middle slice within its own slices
    (:func:`~segmote_monai.inferers.propagation.propagate`); seeds travel under :data:`PROPAGATION_META_KEY`;
  - a label/ROI image under ``label_key`` on the image's grid (loaded by
    :class:`~segmote_monai.transforms.LoadPaird`): one box per slice and structure in it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import MapTransform

from segmote_monai.data.slicing import volume_to_slices
from segmote_monai.errors import InputFileError, RequestError
from segmote_monai.transforms.array import LabelToPrompts

__all__ = ["PROMPTS_META_KEY", "PROMPT_MODES", "PROPAGATION_META_KEY", "AttachPromptsd", "PropagationSeed",
           "boxes_to_prompts", "boxes_to_slice_prompts", "prompts_from_label", "read_boxes"]

PROMPTS_META_KEY = "segmote_prompts"
PROPAGATION_META_KEY = "segmote_propagation"
PROMPT_MODES = ("auto", "box")


@dataclass(frozen=True)
class PropagationSeed:
    """Where one structure's propagation starts.

    Args:
        class_id: the structure's label value.
        slice: the key slice (index along the oriented image's last axis).
        box: ``(x0, y0, x1, y1)`` on the key slice, in its pixels (x along columns).
        first, last: the slices it may reach (inclusive; None: the whole volume), e.g. a 3D box's range.
        within_box: keep every propagated box inside ``box`` (a 3D box's extent on each slice).
    """

    class_id: int
    slice: int
    box: tuple[float, float, float, float]
    first: int | None = None
    last: int | None = None
    within_box: bool = False


def prompts_from_label(label: torch.Tensor, classes: Sequence[int], *, jitter: float = 0.0,
                       seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per slice of a [1, H, W, S] (or [1, H, W]) label map: one box per present class, tight or with each
    side moved by up to ``jitter`` x the box size (seeded), as :class:`SliceSegmenter` takes them."""
    make = LabelToPrompts(classes, jitter=jitter).set_random_state(seed)
    out = []
    for label_slice in volume_to_slices(torch.as_tensor(label)):
        prompts = make(label_slice)
        out.append((prompts["boxes"], prompts["class_ids"]))
    return out


def _label_value(label: Any, names: Mapping[str, int]) -> int:
    if isinstance(label, str) and label.strip().lower() in names:
        return names[label.strip().lower()]
    if isinstance(label, bool):
        raise TypeError(f"label {label!r} is neither a value nor a name")
    try:
        return int(label)
    except (TypeError, ValueError):
        known = ", ".join(sorted(names)) or "none"
        raise ValueError(f"label {label!r} is neither a value nor a known name ({known})") from None


def read_boxes(boxes: Any) -> tuple[Any, str]:
    """A boxes spec given as a dict, a list, a JSON text or a JSON file's path -> (the parsed spec, where it
    came from, for error messages)."""
    if isinstance(boxes, (dict, list)):
        return boxes, "boxes"
    text = str(boxes).strip()
    if text.startswith(("{", "[")):
        try:
            return json.loads(text), "boxes"
        except json.JSONDecodeError as exc:
            raise InputFileError("boxes", f"not valid JSON ({exc})") from exc
    path = Path(text)
    try:
        return json.loads(path.read_text()), str(path)
    except FileNotFoundError:
        raise InputFileError(path, "boxes file not found") from None
    except json.JSONDecodeError as exc:
        raise InputFileError(path, f"not valid JSON ({exc})") from exc


def boxes_to_prompts(spec: Any, image: torch.Tensor, source: str | os.PathLike,
                     names: Mapping[str, int] | None = None
                     ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[PropagationSeed]]:
    """Per-slice ``(boxes, class_ids)`` on the oriented image, and the propagation seeds, from a boxes spec (see
    the module docstring); ``names`` maps label names (any case) to values, so that ``"label": "liver"`` works as
    well as ``1``."""
    slices = volume_to_slices(image)
    count, (h, w) = len(slices), tuple(slices.shape[-2:])
    per_slice: list[list[tuple[list[float], int]]] = [[] for _ in range(count)]
    seeds: list[PropagationSeed] = []
    entries = spec.get("boxes") if isinstance(spec, dict) else spec if isinstance(spec, list) else None
    if not isinstance(entries, list) or not entries:
        raise InputFileError(source, 'expected {"boxes": [{"label": 1, "box": [...]}]} with at least one box')
    for n, entry in enumerate(entries):
        try:
            label = _label_value(entry["label"], names or {})
            box, space = [float(v) for v in entry["box"]], entry.get("space", "voxel")
            propagated = entry.get("propagate", False)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputFileError(source, f"box {n}: needs 'label' (a value or name) and 'box' (numbers) ({exc})"
                                 ) from exc
        if not np.isfinite(box).all():
            raise InputFileError(source, f"box {n}: {box} holds a value that is not a finite number")
        if space not in ("voxel", "world"):
            raise InputFileError(source, f"box {n}: 'space' must be 'voxel' or 'world', got {space!r}")
        if not isinstance(propagated, bool):
            raise InputFileError(source, f"box {n}: 'propagate' must be true or false, got {propagated!r}")
        half = len(box) // 2
        if len(box) in (4, 6) and any(hi < lo for lo, hi in zip(box[:half], box[half:])):
            raise InputFileError(source, f"box {n}: {box} has an end before its start (x1 < x0, y1 < y0 or z1 < z0)")
        if image.ndim == 3:
            if len(box) != 4 or space != "voxel":
                raise InputFileError(source, f"box {n}: a 2D image takes [x0, y0, x1, y1] in pixels")
            if propagated:
                raise InputFileError(source, f"box {n}: 'propagate' needs a volume; this is a 2D image")
            corners = torch.tensor([[box[0], box[1]], [box[2], box[3]]])
            x0, y0 = corners.min(0).values.tolist()
            x1, y1 = corners.max(0).values.tolist()
            z_range = range(1)
        else:
            if len(box) != 6:
                raise InputFileError(source, f"box {n}: a volume takes [i0, j0, k0, i1, j1, k1], got {len(box)} values")
            lo, hi = np.array(box[:3]), np.array(box[3:])
            corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1).T  # the 8 corners
            world = corners if space == "world" else nib.affines.apply_affine(
                np.asarray(image.meta["read_affine"]), corners)
            oriented = nib.affines.apply_affine(np.linalg.inv(np.asarray(image.affine, dtype=np.float64)), world)
            (r0, c0, z0), (r1, c1, z1) = oriented.min(0), oriented.max(0)
            x0, y0, x1, y1 = c0, r0, c1, r1  # x along columns, y along rows of the slice
            z_range = range(max(0, int(np.ceil(z0 - 1e-6))), min(count - 1, int(np.floor(z1 + 1e-6))) + 1)
        if x1 < 0 or y1 < 0 or x0 > w - 1 or y0 > h - 1 or not len(z_range):
            raise InputFileError(source, f"box {n} lies outside the image ({w} x {h} pixels, {count} slices)")
        clipped = [max(0.0, x0), max(0.0, y0), min(w - 1.0, x1), min(h - 1.0, y1)]
        if propagated:
            whole = len(z_range) == 1  # one slice: a key slice, free to run through the volume
            seeds.append(PropagationSeed(label, (z_range[0] + z_range[-1]) // 2, tuple(clipped),
                                         None if whole else z_range[0], None if whole else z_range[-1],
                                         within_box=not whole))
            continue
        for z in z_range:
            per_slice[z].append((clipped, label))
    prompts = [(torch.tensor([b for b, _ in s], dtype=torch.float32).reshape(-1, 4),
                torch.tensor([c for _, c in s], dtype=torch.long)) for s in per_slice]
    return prompts, seeds


def boxes_to_slice_prompts(spec: Any, image: torch.Tensor, source: str | os.PathLike,
                           names: Mapping[str, int] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-slice ``(boxes, class_ids)`` of a boxes spec without propagated boxes (:func:`boxes_to_prompts`)."""
    prompts, seeds = boxes_to_prompts(spec, image, source, names)
    if seeds:
        raise InputFileError(source, f"{len(seeds)} box(es) ask to propagate; this use takes boxes per slice only")
    return prompts


def _given(value: Any) -> bool:
    return value is not None and not (isinstance(value, (str, list, dict)) and not value)


class AttachPromptsd(MapTransform):
    """Builds the image's per-slice prompts from a request and stores them in ``image.meta[PROMPTS_META_KEY]``.

    Args:
        labels: label value -> name of the model's classes (background may be included; it is ignored).
        prompt_mode: one of :data:`PROMPT_MODES`.
        boxes: a boxes spec (see the module docstring), or None/empty to take the ROI under ``label_key``.
        image_key: the oriented image, as :class:`~segmote_monai.transforms.LoadPaird` gives it.
        label_key: the ROI image; it is removed from the output once turned into boxes (it is an input, not
            a prediction, and MONAI Label would otherwise write it back).
        class_conditioned: the model segments each class prompt-free (``auto`` is then allowed with several
            classes).
        checkpoint: the model's weights file, named in a refusal that depends on the model (a server holds
            several models; the request's sender sees which one refused).
    """

    def __init__(self, *, labels: Mapping[Any, str], prompt_mode: str = "box", boxes: Any = None,
                 image_key: str = "image", label_key: str = "label", class_conditioned: bool = False,
                 checkpoint: str | None = None) -> None:
        super().__init__(image_key)
        self.class_conditioned = bool(class_conditioned)
        self.checkpoint = checkpoint
        self.labels = {int(k): str(v) for k, v in labels.items() if int(k) > 0}
        if not self.labels:
            raise ValueError(f"labels must name at least one foreground class, got {dict(labels)}")
        # prompt_mode and boxes come from a request (MONAI Label's displayable_configs): checked per call, where a
        # refusal is a RequestError (HTTP 400 with its reason) rather than a failure to build the pipeline
        self.prompt_mode = prompt_mode
        self.boxes = boxes if _given(boxes) else None
        self.image_key = image_key
        self.label_key = label_key

    def _check_mode(self) -> None:
        if self.prompt_mode not in PROMPT_MODES:
            raise RequestError(f"prompt_mode must be one of {list(PROMPT_MODES)}, got {self.prompt_mode!r}")
        if self.prompt_mode == "auto" and len(self.labels) > 1 and not self.class_conditioned:
            where = f"{self.checkpoint}: " if self.checkpoint is not None else ""
            raise RequestError(f"{where}prompt_mode 'auto' (PPT, no prompt) needs a binary model or one trained with "
                               f"class_prompts; this one segments {len(self.labels)} classes {self.labels}: give "
                               "boxes or a label ROI")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self._check_mode()
        d = dict(data)
        image = d[self.image_key]
        roi = d.pop(self.label_key, None) if self.prompt_mode == "box" else None
        seeds: list[PropagationSeed] = []
        if self.prompt_mode == "auto":
            prompts = None
        elif (self.boxes is None) == (roi is None):
            raise RequestError("prompt_mode 'box' needs exactly one of boxes (a request parameter or a JSON file) "
                               "or a label ROI on the image's grid" + (", got both" if roi is not None else ""))
        elif roi is not None:
            prompts = prompts_from_label(roi, sorted(self.labels))
            if not any(len(c) for _, c in prompts):
                path = roi.meta.get("filename_or_obj", "label") if hasattr(roi, "meta") else "label"
                raise InputFileError(path, f"the ROI holds none of the model's labels {sorted(self.labels)}")
        else:
            spec, source = read_boxes(self.boxes)
            names = {name.lower(): value for value, name in self.labels.items()}
            prompts, seeds = boxes_to_prompts(spec, image, source, names)
            used = {int(c) for _, ids in prompts for c in ids.tolist()} | {seed.class_id for seed in seeds}
            unknown = sorted(used - set(self.labels))
            if unknown:
                raise InputFileError(source, f"label values {unknown} are not among the model's {sorted(self.labels)}")
        image.meta[PROMPTS_META_KEY] = prompts
        image.meta[PROPAGATION_META_KEY] = seeds
        return d
