"""Checkpoints of SegMoTE's trainable part: never SAM itself, always the backbone identity and options.

Format (a plain dict, read back with ``torch.load(weights_only=True)``)::

    {"format": "segmote-monai-trainable", "version": 1,
     "backbone": {"name": ..., "weights_sha256": ...}, "config": SegMoTE.config(),
     "metadata": {...},  # what inference needs to know, e.g. {"labels": {"1": "liver"}, "task": "multi-class"}
     "model": {name: tensor}}

The weights sit under ``"model"``, the key MONAI's ``CheckpointLoader(load_dict={"model": net}, strict=False)`` and
MONAI Label's model loading read, so the bundle's ``models/model.pt`` loads there as it is (the frozen backbone is
built by ``network_def``). Versions 1 and 2 stored them under ``"state_dict"``; both are still read.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from segmote_monai.atomic import atomic_path
from segmote_monai.errors import CheckpointMismatchError, InputFileError
from segmote_monai.networks.segmote import SegMoTE
from segmote_monai.networks.weights_file import load_weights_file

__all__ = ["load_trainable", "load_trainable_payload", "read_trainable", "save_trainable", "trainable_payload",
           "trainable_state_dict", "upgrade_payload"]

FORMAT = "segmote-monai-trainable"
VERSION = 3
_READ_VERSIONS = (1, 2, VERSION)
#: Version 1 files were written before these options existed: they hold the paper's layout.
V1_CONFIG = {"expert_attention": "shared", "mask_head": "routed", "experts_write_image": False,
             "trainable_reader": False, "ppt_beside_prompts": False}
#: Options added after a file version was fixed, with the value that reproduces files written before them.
LATER_OPTIONS = {"num_condition_classes": 0, "ppt_positional_values": False, "presence_head": False}
_FROZEN_PREFIXES = ("image_encoder.", "prompt_encoder.")
_SAM_DECODER_PREFIX = "decoder.mask_decoder."


def trainable_state_dict(model: SegMoTE) -> dict[str, torch.Tensor]:
    """The entries of ``model.state_dict()`` that training changes (SAM's decoder only when unfrozen)."""
    frozen = _FROZEN_PREFIXES if model.train_decoder else (*_FROZEN_PREFIXES, _SAM_DECODER_PREFIX)
    return {k: v for k, v in model.state_dict().items() if not k.startswith(frozen)}


def trainable_payload(model: SegMoTE, *, half: bool = False, metadata: dict | None = None) -> dict:
    """What :func:`save_trainable` writes: the trainable weights with the backbone's identity and the options."""
    state = {
        k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
        for k, v in trainable_state_dict(model).items()
    }
    return {
        "format": FORMAT,
        "version": VERSION,
        "backbone": {"name": model.backbone_name, "weights_sha256": model.backbone_sha256},
        "config": model.config(),
        "metadata": dict(metadata or {}),
        "model": state,
    }


def save_trainable(model: SegMoTE, path: str | os.PathLike, *, half: bool = False,
                   metadata: dict | None = None) -> Path:
    """Writes the trainable part of ``model`` to ``path`` atomically (temporary file, then rename).

    ``half`` stores floating-point tensors as float16 (half the size; loading casts back). ``metadata`` (plain
    JSON-like values) travels with the weights: label names and task type, so inference needs no datalist.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(trainable_payload(model, half=half, metadata=metadata), tmp)
    return path


def read_trainable(path: str | os.PathLike) -> dict:
    """Reads and validates the envelope of a trainable checkpoint (no code is executed)."""
    path = Path(path)
    payload = load_weights_file(path, what="SegMoTE checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputFileError(path, f"not a SegMoTE trainable checkpoint (expected format '{FORMAT}')")
    if payload.get("version") not in _READ_VERSIONS:
        raise InputFileError(path, f"checkpoint version {payload.get('version')}, this package reads "
                                   f"{', '.join(map(str, _READ_VERSIONS))}")
    return upgrade_payload(payload)


def upgrade_payload(payload: dict) -> dict:
    """A payload of any version this package reads, as the current version."""
    if payload["version"] == 1:
        payload = _from_version_1(payload)
    if payload["version"] == 2:
        payload = {k: v for k, v in payload.items() if k != "state_dict"} | {"version": VERSION,
                                                                            "model": payload["state_dict"]}
    return {**payload, "config": {**LATER_OPTIONS, **payload["config"]}}


def _from_version_1(payload: dict) -> dict:
    """A version 1 payload as version 2 (weights still under ``"state_dict"``): the paper's layout, and the
    router's noise bias (version 2 learns one) at zero, which is the noise version 1 computed."""
    state = dict(payload["state_dict"])
    for key in [k for k in state if k.endswith(".router.noise.weight")]:
        state.setdefault(key[: -len("weight")] + "bias", torch.zeros(state[key].shape[0], dtype=state[key].dtype))
    return {**payload, "version": 2, "config": {**V1_CONFIG, **payload["config"]}, "state_dict": state}


def load_trainable(model: SegMoTE, path: str | os.PathLike) -> SegMoTE:
    """Loads a checkpoint written by :func:`save_trainable` into ``model``.

    Raises :class:`CheckpointMismatchError` when it was trained on another backbone (name or weights) or
    with other options, and names what differs.
    """
    return load_trainable_payload(model, read_trainable(path), path)


def load_trainable_payload(model: SegMoTE, payload: dict, path: str | os.PathLike) -> SegMoTE:
    """:func:`load_trainable` on an already read payload (``path`` names it in errors)."""
    saved = payload["backbone"]
    if (saved["name"], saved["weights_sha256"]) != (model.backbone_name, model.backbone_sha256):
        raise CheckpointMismatchError(
            path,
            f"trained on backbone {saved['name']} (weights sha256 {saved['weights_sha256'][:12]}), "
            f"this model uses {model.backbone_name} (weights sha256 {model.backbone_sha256[:12]})",
        )
    config = model.config()
    diffs = [f"{k}={payload['config'].get(k)!r} in the file, {v!r} here"
             for k, v in config.items() if payload["config"].get(k) != v]
    if diffs:
        raise CheckpointMismatchError(path, "configuration differs: " + "; ".join(diffs))
    expected = trainable_state_dict(model)
    state = payload["model"]
    if set(state) != set(expected):
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise CheckpointMismatchError(path, f"missing keys {missing[:3]}, unexpected keys {unexpected[:3]}")
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=False)
    return model
