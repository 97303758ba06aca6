"""SegMoTE: a frozen SAM-family backbone with expert tokens, MoTE routing and learned prompts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from segment_anything.modeling import PromptEncoder
from torch import nn

from segmote_monai.networks.backbones import build_backbone
from segmote_monai.networks.decoder import MoTEMaskDecoder
from segmote_monai.networks.mote import RoutingOutput
from segmote_monai.networks.ppt import ProgressivePromptTokenizer
from segmote_monai.networks.presence import PresenceHead
from segmote_monai.options import as_bool

__all__ = ["PromptedForward", "SegMoTE", "SegMoTEOutput", "build_from_checkpoint", "build_segmote"]


@dataclass
class SegMoTEOutput:
    """The prompted method's output; N prompts, (H, W) the backbone's input size."""

    masks: torch.Tensor  # [N, 1, H, W] mask logits
    low_res_masks: torch.Tensor  # [N, 1, 4h, 4w] mask logits before upsampling
    iou_predictions: torch.Tensor  # [N, 1]
    routing: list[RoutingOutput] = field(default_factory=list)  # per two-way block
    expert_tokens: torch.Tensor | None = None  # [N, T, D] after the decoder's final attention; None, experts off
    presence_logits: torch.Tensor | None = None  # [N, 1] float32, is the row's object on the image; None, no head

    @classmethod
    def cat(cls, outputs: Sequence[SegMoTEOutput]) -> SegMoTEOutput:
        """Outputs of several calls of one model, one after the other along N (routing block by block)."""
        if not outputs:
            raise ValueError("cat needs at least one output")
        if len(outputs) == 1:
            return outputs[0]

        def cat(tensors):
            return None if any(t is None for t in tensors) else torch.cat(list(tensors))

        routing = [
            RoutingOutput(**{name: cat([getattr(o.routing[b], name) for o in outputs])
                             for name in ("gates", "expert_index", "token_weights", "clean_logits", "noisy_logits",
                                          "noise_std")}, top_k=outputs[0].routing[b].top_k)
            for b in range(len(outputs[0].routing))
        ]
        return cls(masks=cat([o.masks for o in outputs]), low_res_masks=cat([o.low_res_masks for o in outputs]),
                   iou_predictions=cat([o.iou_predictions for o in outputs]), routing=routing,
                   expert_tokens=cat([o.expert_tokens for o in outputs]),
                   presence_logits=cat([o.presence_logits for o in outputs]))


class SegMoTE(nn.Module):
    """SAM's frozen image encoder and prompt encoder, and SegMoTE's decoder and PPT.

    ``forward(images)`` is the prompt-free path (PPT tokens only): [B, 3, H, W] -> [B, 1, H, W] logits,
    what ``SliceInferer``, export and MONAI Label call. :meth:`predict` takes boxes and/or points, several
    prompts per image, on images or cached encoder embeddings, and returns :class:`SegMoTEOutput`.

    Images are expected at the backbone's input size and normalisation (see ``Backbone.pixel_mean``).
    """

    def __init__(
        self,
        *,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        decoder: MoTEMaskDecoder,
        ppt: ProgressivePromptTokenizer | None = None,
        presence: PresenceHead | None = None,
        backbone_name: str,
        backbone_sha256: str,
        train_decoder: bool = False,
        ppt_beside_prompts: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(decoder, MoTEMaskDecoder):
            raise TypeError(f"decoder must be a MoTEMaskDecoder, got {type(decoder).__name__}")
        if ppt is not None and not isinstance(ppt, ProgressivePromptTokenizer):
            raise TypeError(f"ppt must be a ProgressivePromptTokenizer or None, got {type(ppt).__name__}")
        if presence is not None and not isinstance(presence, PresenceHead):
            raise TypeError(f"presence must be a PresenceHead or None, got {type(presence).__name__}")
        if presence is not None and not decoder.num_expert_tokens:
            raise ValueError("a presence head reads the routed expert token: it needs num_expert_tokens > 0")
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.decoder = decoder
        self.ppt = ppt
        self.presence = presence
        self.backbone_name = backbone_name
        self.backbone_sha256 = backbone_sha256
        self.train_decoder = bool(train_decoder)
        if ppt_beside_prompts and ppt is None:
            raise ValueError("ppt_beside_prompts needs PPT (num_ppt_queries > 0)")
        #: binary tasks get the PPT tokens beside their box or point prompts (the paper's setting), in training
        #: and at inference; callers that know a prompt's task pass ``use_ppt`` accordingly
        self.ppt_beside_prompts = bool(ppt_beside_prompts)
        self.image_encoder.requires_grad_(False)
        self.prompt_encoder.requires_grad_(False)
        self.decoder.mask_decoder.requires_grad_(self.train_decoder)
        self.train(self.training)

    def train(self, mode: bool = True) -> SegMoTE:
        """Sets SegMoTE's own parts to ``mode``; the frozen backbone stays in eval mode (BatchNorm)."""
        super().train(mode)
        self.image_encoder.eval()
        self.prompt_encoder.eval()
        if not self.train_decoder:
            self.decoder.mask_decoder.eval()
        return self

    @property
    def class_conditioned(self) -> bool:
        """Whether PPT is conditioned on a class: prompt-free segmentation of each class (automatic multi-class),
        and class-aware prompts (``predict(class_ids=...)``)."""
        return self.ppt is not None and self.ppt.num_condition_classes > 0

    @property
    def img_size(self) -> int:
        return int(self.prompt_encoder.input_image_size[0])

    def config(self) -> dict[str, Any]:
        """The options that define this model's trainable parts and what its forward computes (checkpoints must
        match them). Options that only choose starting values (``token_init``, ``mote_norm``,
        ``router_noise_std``) are not among them."""
        decoder, ppt = self.decoder, self.ppt
        return {
            "num_expert_tokens": decoder.num_expert_tokens,
            "num_experts": decoder.num_experts,
            "top_k": decoder.top_k,
            "expert_hidden_dim": decoder.expert_hidden_dim,
            "combine": decoder.combine,
            "noisy_gating": decoder.noisy_gating,
            "expert_attention": decoder.expert_attention,
            "mask_head": decoder.mask_head,
            "experts_write_image": decoder.experts_write_image,
            "trainable_reader": decoder.trainable_reader,
            "num_ppt_queries": ppt.num_queries if ppt is not None else 0,
            "ppt_heads": ppt.attention.num_heads if ppt is not None else 0,
            "ppt_mlp_dim": ppt.mlp.lin1.out_features if ppt is not None else 0,
            "num_carrier_classes": ppt.num_carrier_classes if ppt is not None else 0,
            "num_condition_classes": ppt.num_condition_classes if ppt is not None else 0,
            "ppt_positional_values": ppt.positional_values if ppt is not None else False,
            "train_decoder": self.train_decoder,
            "ppt_beside_prompts": self.ppt_beside_prompts,
            "presence_head": self.presence is not None,
        }

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalised images -> [B, D, h, w] frozen encoder output (cacheable)."""
        expected = (3, self.img_size, self.img_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be [B, {', '.join(map(str, expected))}], got {list(images.shape)}")
        return self.image_encoder(images)

    @torch.no_grad()
    def mask_carrier(self, masks: torch.Tensor) -> torch.Tensor:
        """[N, 1, H, W] binary label masks -> [N, D] PPT mask carriers.

        Each mask goes through SAM's frozen mask-prompt branch at its input size; the dense embedding is
        averaged over the mask's foreground positions (zero for an empty mask).
        """
        masks = masks.float()
        dense = self.prompt_encoder(
            points=None, boxes=None, masks=F.interpolate(masks, size=self.prompt_encoder.mask_input_size)
        )[1]
        foreground = (F.adaptive_max_pool2d(masks, dense.shape[-2:]) > 0.5).to(dense.dtype)
        total = (dense * foreground).sum(dim=(2, 3))
        return total / foreground.sum(dim=(2, 3)).clamp(min=1.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Prompt-free segmentation: [B, 3, H, W] images -> [B, 1, H, W] mask logits, or a stack of slices
        [B, 3, H, W, S] -> [B, 1, H, W, S] (each slice on its own, as the bundle's metadata declares the input).
        PPT tokens when the model has PPT; a multi-class, box-prompted model has none and its prompt-free output
        is not meant for use."""
        if images.ndim == 5:
            b, c, h, w, s = images.shape
            slices = images.permute(0, 4, 1, 2, 3).reshape(b * s, c, h, w)
            return self.forward(slices).reshape(b, s, -1, h, w).permute(0, 2, 3, 4, 1)
        if images.ndim != 4:
            raise ValueError(f"expected images [B, 3, H, W] or [B, 3, H, W, S], got shape {tuple(images.shape)}")
        return self.predict(images=images).masks

    def predict(
        self,
        *,
        images: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        use_ppt: bool | None = None,
        carrier_masks: torch.Tensor | None = None,
        carrier_class_ids: torch.Tensor | None = None,
        class_ids: torch.Tensor | None = None,
        expert_scale: float = 1.0,
    ) -> SegMoTEOutput:
        """Segments one object per prompt.

        Args:
            images: [B, 3, H, W] normalised images, or
            image_embeddings: [B, D, h, w] cached encoder output (exactly one of the two).
            boxes: [N, 4] ``x0, y0, x1, y1`` in input-image pixels.
            points: [N, P, 2] ``x, y`` in input-image pixels, with
            point_labels: [N, P] (1 foreground, 0 background).
            image_index: [N] long, the image of each prompt; defaults to ``arange(B)`` when N == B and to
                zeros when B == 1. Without boxes and points there is one prompt-free row per image, or per entry
                of ``image_index`` when it is given.
            use_ppt: add the PPT tokens; defaults to True exactly when there are no boxes or points and the model
                has PPT (without PPT, a prompt-free call decodes with no prompt tokens, as SAM does), or when
                ``class_ids`` are given.
            carrier_masks: [N, 1, H', W'] label masks, and/or
            carrier_class_ids: [N] class ids: PPT carriers, used only in training with
                ``ppt.carrier_probability > 0``.
            class_ids: [N] the class each row asks for: the PPT tokens are conditioned on it (a model built with
                ``num_condition_classes``), prompt-free (that class's mask, empty where it is absent) or beside the
                row's box or points.
            expert_scale: how much of the experts' correction to apply (``mask_head="residual"``): 0 is the
                frozen backbone's own prediction on the same prompts, 1 the trained model.

        Returns:
            :class:`SegMoTEOutput` with [N, 1, H, W] mask logits.
        """
        if (images is None) == (image_embeddings is None):
            raise ValueError("give exactly one of images or image_embeddings")
        embeddings = self.embed_images(images) if images is not None else image_embeddings
        b = embeddings.shape[0]
        prompted = boxes is not None or points is not None
        n = self._num_prompts(b if image_index is None else len(image_index), boxes, points, point_labels)
        # one row per image in order (the usual prompt-free call) reads the embeddings without a gathered copy;
        # decided from the arguments, not the index's values, so that export traces one graph
        in_order = image_index is None and n == b
        image_index = self._image_index(image_index, b, n, embeddings.device)
        if use_ppt is None:
            use_ppt = (not prompted and self.ppt is not None) or class_ids is not None
        if use_ppt and self.ppt is None:
            raise ValueError("use_ppt=True but this model has no PPT (num_ppt_queries=0)")
        if class_ids is not None:
            if not use_ppt or not self.ppt.num_condition_classes:
                raise ValueError("class_ids need PPT tokens with class conditioning (num_condition_classes > 0)")
            if tuple(class_ids.shape) != (n,):
                raise ValueError(f"class_ids must be [{n}], got {list(class_ids.shape)}")

        point_input = (points, point_labels) if points is not None else None
        sparse, dense = self.prompt_encoder(points=point_input, boxes=boxes, masks=None)
        if not prompted:
            sparse = sparse.expand(n, -1, -1)
        dense = dense.expand(n, -1, -1, -1)
        image_pe = self.prompt_encoder.get_dense_pe()
        ppt_tokens = None
        if use_ppt:
            # a class-conditioned row already names its class: the carrier, which training anneals away, is not added
            carriers = self._carriers(n, carrier_masks, carrier_class_ids) if class_ids is None else None
            ppt_tokens = self.ppt(embeddings if in_order else embeddings[image_index], image_pe, carriers, class_ids)
        out = self.decoder(
            image_embeddings=embeddings, image_pe=image_pe, sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, image_index=image_index, ppt_tokens=ppt_tokens, expert_scale=expert_scale,
        )
        masks = out.low_res_masks
        if tuple(masks.shape[-2:]) != (self.img_size, self.img_size):
            masks = F.interpolate(masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        # a presence head is only built beside expert tokens, so the decoder has a routed token for it
        presence = self.presence(out.routed_token) if self.presence is not None else None
        return SegMoTEOutput(
            masks=masks, low_res_masks=out.low_res_masks, iou_predictions=out.iou_predictions, routing=out.routing,
            expert_tokens=out.expert_tokens, presence_logits=presence,
        )

    @staticmethod
    def _num_prompts(
        b: int, boxes: torch.Tensor | None, points: torch.Tensor | None, point_labels: torch.Tensor | None
    ) -> int:
        counts = []
        if boxes is not None:
            if boxes.ndim != 2 or boxes.shape[1] != 4:
                raise ValueError(f"boxes must be [N, 4], got {list(boxes.shape)}")
            counts.append(boxes.shape[0])
        if points is not None:
            if point_labels is None:
                raise ValueError("points need point_labels")
            if points.ndim != 3 or points.shape[2] != 2 or tuple(point_labels.shape) != tuple(points.shape[:2]):
                raise ValueError(
                    f"points must be [N, P, 2] with point_labels [N, P], got {list(points.shape)} and "
                    f"{list(point_labels.shape)}"
                )
            counts.append(points.shape[0])
        if len(set(counts)) > 1:
            raise ValueError(f"boxes and points must have the same number of prompts, got {counts}")
        return counts[0] if counts else b

    @staticmethod
    def _image_index(image_index: torch.Tensor | None, b: int, n: int, device: torch.device) -> torch.Tensor:
        if image_index is None:
            if n == b:
                return torch.arange(b, device=device)
            if b == 1:
                return torch.zeros(n, dtype=torch.long, device=device)
            raise ValueError(f"{n} prompts for {b} images: give image_index [N] to say which image each is for")
        if tuple(image_index.shape) != (n,):
            raise ValueError(f"image_index must be [{n}], got {list(image_index.shape)}")
        if n and (int(image_index.min()) < 0 or int(image_index.max()) >= b):
            raise ValueError(f"image_index values must be in [0, {b - 1}], got [{int(image_index.min())}, "
                             f"{int(image_index.max())}]")
        return image_index.long().to(device)

    def _carriers(
        self, n: int, masks: torch.Tensor | None, class_ids: torch.Tensor | None
    ) -> torch.Tensor | None:
        """[N, D] carriers: each row, with probability p, one available carrier chosen at random."""
        p = self.ppt.carrier_probability
        if not self.training or p == 0.0:
            return None
        available = []
        if masks is not None:
            if masks.ndim != 4 or masks.shape[0] != n or masks.shape[1] != 1:
                raise ValueError(f"carrier_masks must be [{n}, 1, H, W], got {list(masks.shape)}")
            available.append(self.mask_carrier(masks))
        if class_ids is not None:
            if tuple(class_ids.shape) != (n,):
                raise ValueError(f"carrier_class_ids must be [{n}], got {list(class_ids.shape)}")
            available.append(self.ppt.text_carrier(class_ids.to(self.ppt.class_embedding.weight.device)))
        if not available:
            raise ValueError(
                f"training with carrier_probability={p} needs carrier_masks or carrier_class_ids"
            )
        device = available[0].device
        carriers = available[0]
        if len(available) == 2:
            pick_text = torch.rand(n, 1, device=device) < 0.5
            carriers = torch.where(pick_text, available[1], available[0])
        keep = (torch.rand(n, 1, device=device) < p).to(carriers.dtype)
        return carriers * keep


class PromptedForward(nn.Module):
    """``forward(*calls) = [model.predict(**call) for call in calls]``: what DistributedDataParallel wraps for
    prompted training. DDP synchronises gradients only for computations inside one call of its ``forward``,
    so a step that decodes several kinds of rows (boxed, prompt-free) passes them all at once."""

    def __init__(self, model: SegMoTE) -> None:
        super().__init__()
        self.model = model

    def forward(self, *calls: dict) -> list[SegMoTEOutput]:
        """Each call: :meth:`SegMoTE.predict`'s keyword arguments; returns one output per call."""
        return [self.model.predict(**call) for call in calls]


def build_segmote(
    backbone: str = "lite_medsam",
    *,
    sam_checkpoint: str | Path | None = None,
    random_weights: bool = False,
    num_expert_tokens: int = 4,
    num_experts: int = 4,
    top_k: int = 2,
    expert_hidden_dim: int = 2048,
    combine: str = "topk",
    noisy_gating: bool = True,
    router_noise_std: float = 0.1,
    expert_attention: str = "read_only",
    mask_head: str = "residual",
    token_init: str = "sam_mask_tokens",
    mote_norm: str = "norm3",
    experts_write_image: bool = False,
    trainable_reader: bool = False,
    num_ppt_queries: int = 2,
    ppt_heads: int = 8,
    ppt_mlp_dim: int = 2048,
    num_carrier_classes: int = 1,
    num_condition_classes: int = 0,
    ppt_positional_values: bool = False,
    train_decoder: bool = False,
    ppt_beside_prompts: bool = False,
    presence_head: bool = False,
    trainable_checkpoint: str | Path | None = None,
) -> SegMoTE:
    """Builds SegMoTE on the named frozen backbone, with the SPEC's default widths.

    ``num_expert_tokens=0`` gives the frozen backbone's own output (the zero-shot baseline); the decoder's
    options are described in :mod:`segmote_monai.networks.decoder` and :mod:`segmote_monai.networks.mote`;
    ``num_ppt_queries=0`` leaves PPT out; ``num_condition_classes > 0`` conditions PPT on a class (class ids
    ``0 .. num_condition_classes - 1``; see :class:`~segmote_monai.networks.ppt.ProgressivePromptTokenizer`);
    ``presence_head`` adds :class:`~segmote_monai.networks.presence.PresenceHead` ("is the class on this slice").
    ``trainable_checkpoint`` loads a file written by :func:`segmote_monai.networks.checkpoint.save_trainable` and
    checks that it fits.
    """
    train_decoder, noisy_gating = as_bool(train_decoder, "train_decoder"), as_bool(noisy_gating, "noisy_gating")
    parts = build_backbone(backbone, checkpoint=sam_checkpoint, random_weights=random_weights)
    dim = parts.mask_decoder.transformer_dim
    decoder = MoTEMaskDecoder(
        mask_decoder=parts.mask_decoder, num_expert_tokens=num_expert_tokens, num_experts=num_experts,
        top_k=top_k, expert_hidden_dim=expert_hidden_dim, combine=combine, noisy_gating=noisy_gating,
        router_noise_std=router_noise_std, expert_attention=expert_attention, mask_head=mask_head,
        token_init=token_init, mote_norm=mote_norm,
        experts_write_image=as_bool(experts_write_image, "experts_write_image"),
        trainable_reader=as_bool(trainable_reader, "trainable_reader"),
    )
    ppt = None
    if num_ppt_queries:
        ppt = ProgressivePromptTokenizer(
            embedding_dim=dim, num_queries=num_ppt_queries, num_heads=ppt_heads,
            mlp_dim=ppt_mlp_dim, num_carrier_classes=num_carrier_classes,
            num_condition_classes=num_condition_classes,
            positional_values=as_bool(ppt_positional_values, "ppt_positional_values"),
        )
    elif num_condition_classes:
        raise ValueError(f"num_condition_classes={num_condition_classes} needs PPT (num_ppt_queries > 0)")
    presence = PresenceHead(embedding_dim=dim) if as_bool(presence_head, "presence_head") else None
    model = SegMoTE(
        image_encoder=parts.image_encoder, prompt_encoder=parts.prompt_encoder, decoder=decoder, ppt=ppt,
        presence=presence, backbone_name=parts.name, backbone_sha256=parts.weights_sha256, train_decoder=train_decoder,
        ppt_beside_prompts=as_bool(ppt_beside_prompts, "ppt_beside_prompts"),
    )
    if trainable_checkpoint is not None:
        from segmote_monai.networks.checkpoint import load_trainable

        load_trainable(model, trainable_checkpoint)
    return model


def build_from_checkpoint(trainable_checkpoint: str | Path, backbone: str = "lite_medsam", *,
                          sam_checkpoint: str | Path | None = None) -> SegMoTE:
    """The SegMoTE a trainable checkpoint describes (its options read from the file), with its weights loaded.

    Evaluation and inference build their network this way, so that no command-line option can give a
    checkpoint another architecture than the one it was trained with.
    """
    from segmote_monai.networks.checkpoint import read_trainable

    config = read_trainable(trainable_checkpoint)["config"]
    return build_segmote(backbone, sam_checkpoint=sam_checkpoint, trainable_checkpoint=trainable_checkpoint, **config)
