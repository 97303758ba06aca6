"""SegMoTE's mask decoder loop around SAM's frozen two-way transformer blocks.

Token sequence per prompt: SAM's own ``[IoU token, SAM's mask tokens, Q PPT tokens, sparse prompt tokens]``
and the T expert tokens (in the paper's order, ``[IoU, mask tokens, experts, PPT, prompts]``, when they
share the sequence).

Three choices here are ours, each a named option so it can be ablated (measurements in BENCHMARKS.md):

- ``expert_attention="read_only"`` (default): expert tokens attend to SAM's tokens and to the image, but
  neither SAM's tokens nor the image attend to them (:func:`~segmote_monai.networks.two_way.block_with_readers`),
  so SAM's own path is what SAM computes (to float rounding: the experts share its attention calls).
  ``"shared"`` is the paper's layout: the expert tokens are ordinary members of the sequence and change what
  SAM's tokens and the image see.
- ``mask_head="residual"`` (default): the mask weights are SAM's own (its first hypernetwork on its first
  mask token) plus a correction from the routed expert token, through a new hypernetwork whose last layer
  starts at zero. With read-only experts, training starts exactly at SAM's prediction and a zero
  correction is SAM, so the experts are a correction on top of SAM rather than a replacement of it.
  ``"routed"`` is the paper's: the routed token alone, through a new hypernetwork copied from SAM's.
  Measured per image on ACDC training slices: the best linear mask head on SAM's frozen box-prompted
  features reaches myocardium Dice 0.90 (zero-shot 0.03), so a frozen-feature correction has the capacity.
- ``token_init="sam_mask_tokens"`` (default): expert token t starts from SAM's mask token ``t mod 4`` (the
  single-mask token and the three multi-mask tokens, which SAM trained to find the whole, a part and a
  sub-part), plus ``token_init_noise``. Starting all of them from the first mask token plus 0.02 noise
  left them at pairwise cosine 0.96 after training, the token weights G uniform (normalised entropy 1.000)
  and the router without a gradient; ``"sam_first_token"`` keeps that initialisation for the ablation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from segment_anything.modeling import MaskDecoder
from torch import nn

from segmote_monai.networks.mote import COMBINE_MODES, RoutingOutput, TokenMoE
from segmote_monai.networks.two_way import ImageReadsExperts, block_with_readers, sam_few_query_attention

__all__ = ["EXPERT_ATTENTION", "MASK_HEADS", "MOTE_NORMS", "TOKEN_INITS", "DecoderOutput", "MoTEMaskDecoder"]

EXPERT_ATTENTION = ("read_only", "shared")
MASK_HEADS = ("residual", "routed")
TOKEN_INITS = ("sam_mask_tokens", "sam_first_token")
MOTE_NORMS = ("norm3", "norm4")


@dataclass
class DecoderOutput:
    low_res_masks: torch.Tensor  # [N, 1, 4h, 4w] mask logits
    iou_predictions: torch.Tensor  # [N, 1] SAM's IoU head on SAM's IoU token
    routing: list[RoutingOutput] = field(default_factory=list)  # one per two-way block; empty, experts off
    expert_tokens: torch.Tensor | None = None  # [N, T, D] the expert tokens after the final attention
    routed_token: torch.Tensor | None = None  # [N, D] their G-weighted sum, what the mask head reads


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


class MoTEMaskDecoder(nn.Module):
    """SAM's ``MaskDecoder`` with T expert tokens, a MoTE block after each two-way block, and a mask head
    driven by the routed expert token.

    The SAM decoder passed in is used through its public modules (tokens, transformer blocks and their
    sub-modules, final attention, upscaling, hypernetworks, IoU head) and is never copied or modified. With
    ``num_expert_tokens=0`` the loop computes exactly SAM's single-mask output. With ``num_experts=0`` the
    expert tokens ride through the blocks with no MoTE update and are averaged with equal weights (the
    "expert tokens + hypernetwork, no MoTE" control).
    """

    def __init__(
        self,
        *,
        mask_decoder: MaskDecoder,
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
        token_init_noise: float = 0.02,
    ) -> None:
        super().__init__()
        if not isinstance(mask_decoder, MaskDecoder):
            raise TypeError(f"mask_decoder must be a segment_anything MaskDecoder, got {type(mask_decoder).__name__}")
        for arg, value in (("num_expert_tokens", num_expert_tokens), ("num_experts", num_experts)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{arg} must be an int, got {type(value).__name__}")
        if num_expert_tokens < 0:
            raise ValueError(f"num_expert_tokens must be >= 0 (0 switches experts off), got {num_expert_tokens}")
        if num_experts < 0:
            raise ValueError(f"num_experts must be >= 0 (0: expert tokens without MoTE), got {num_experts}")
        _check_choice("combine", combine, COMBINE_MODES)
        _check_choice("expert_attention", expert_attention, EXPERT_ATTENTION)
        _check_choice("mask_head", mask_head, MASK_HEADS)
        _check_choice("token_init", token_init, TOKEN_INITS)
        _check_choice("mote_norm", mote_norm, MOTE_NORMS)
        if token_init_noise < 0:
            raise ValueError(f"token_init_noise must be >= 0, got {token_init_noise}")
        if experts_write_image and (expert_attention != "read_only" or not num_expert_tokens):
            raise ValueError("experts_write_image needs expert tokens with expert_attention='read_only' (in the shared "
                             "sequence the image reads them already)")
        self.mask_decoder = mask_decoder
        dim = mask_decoder.transformer_dim
        self.num_expert_tokens = num_expert_tokens
        self.num_experts = num_experts
        self.top_k = top_k
        self.expert_hidden_dim = expert_hidden_dim
        self.combine = combine
        self.noisy_gating = noisy_gating
        self.router_noise_std = router_noise_std
        self.expert_attention = expert_attention
        self.mask_head = mask_head
        self.token_init = token_init
        self.mote_norm = mote_norm
        self.experts_write_image = bool(experts_write_image)
        self.trainable_reader = bool(trainable_reader)
        if trainable_reader and (expert_attention != "read_only" or not num_expert_tokens):
            raise ValueError("trainable_reader needs expert tokens with expert_attention='read_only'")
        # Named offsets into SAM's token sequence, as SAM lays it out.
        self.iou_token_index = 0
        self.sam_mask_token_index = 1
        self.sam_tokens_end = 1 + mask_decoder.num_mask_tokens

        if num_expert_tokens:
            sam_tokens = mask_decoder.mask_tokens.weight.detach()
            if token_init == "sam_mask_tokens":
                start = sam_tokens[torch.arange(num_expert_tokens) % sam_tokens.shape[0]]
            else:
                start = sam_tokens[:1].expand(num_expert_tokens, -1)
            self.expert_tokens = nn.Embedding(num_expert_tokens, dim)
            with torch.no_grad():
                self.expert_tokens.weight.copy_(start + token_init_noise * torch.randn(num_expert_tokens, dim))
            self.mote_blocks = nn.ModuleList(
                TokenMoE(embedding_dim=dim, num_experts=num_experts, top_k=top_k, hidden_dim=expert_hidden_dim,
                         combine=combine, noisy_gating=noisy_gating, noise_std=router_noise_std)
                for _ in (mask_decoder.transformer.layers if num_experts else ())
            )
            # Tokens leave a SAM block through its norm3 (norm4 normalises the image keys): a MoTE LayerNorm
            # with the same affine keeps a fresh block's tokens where SAM's block put them.
            with torch.no_grad():
                for mote, layer in zip(self.mote_blocks, mask_decoder.transformer.layers):
                    mote.norm.load_state_dict(getattr(layer, mote_norm).state_dict())
            self.hypernetwork = copy.deepcopy(mask_decoder.output_hypernetworks_mlps[0]).requires_grad_(True)
            last_block = mask_decoder.transformer.layers[-1]
            self.image_update = ImageReadsExperts(last_block.cross_attn_image_to_token) if experts_write_image else None
            # the expert tokens' own copy of SAM's final token-to-image attention, trained (SAM's stays frozen)
            self.final_reader = (copy.deepcopy(mask_decoder.transformer.final_attn_token_to_image).requires_grad_(True)
                                 if trainable_reader else None)
            if mask_head == "residual":
                with torch.no_grad():
                    self.hypernetwork.layers[-1].weight.zero_()
                    self.hypernetwork.layers[-1].bias.zero_()
        else:
            self.expert_tokens = None
            self.mote_blocks = nn.ModuleList()
            self.hypernetwork = None
            self.image_update = None
            self.final_reader = None

    def forward(
        self,
        *,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        image_index: torch.Tensor,
        ppt_tokens: torch.Tensor | None = None,
        expert_scale: float = 1.0,
    ) -> DecoderOutput:
        """Predicts one mask per prompt.

        Args:
            image_embeddings: [B, D, h, w] encoder output, one row per image.
            image_pe: [1, D, h, w] SAM's dense positional encoding.
            sparse_prompt_embeddings: [N, S, D] box/point tokens (S may be 0).
            dense_prompt_embeddings: [N, D, h, w].
            image_index: [N] long, the image each prompt belongs to.
            ppt_tokens: [N, Q, D] or None.
            expert_scale: multiplies the experts' corrections (of the mask weights with ``mask_head="residual"``,
                and of the image with ``experts_write_image``): 0 gives SAM's own prediction, 1 the trained model.

        Returns:
            :class:`DecoderOutput` with [N, 1, 4h, 4w] mask logits and [N, 1] IoU predictions.
        """
        sam = self.mask_decoder
        n = sparse_prompt_embeddings.shape[0]
        sam_tokens = [torch.cat([sam.iou_token.weight, sam.mask_tokens.weight], dim=0).unsqueeze(0).expand(n, -1, -1)]
        if ppt_tokens is not None:
            sam_tokens.append(ppt_tokens.to(sparse_prompt_embeddings.dtype))
        sam_tokens.append(sparse_prompt_embeddings)
        sam_tokens = torch.cat(sam_tokens, dim=1)

        src = image_embeddings[image_index] + dense_prompt_embeddings
        b, c, h, w = src.shape
        keys = src.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1).expand(b, -1, -1)
        transformer = sam.transformer
        if self.expert_tokens is None:
            queries, keys = transformer(src, image_pe, sam_tokens)
            return self._masks(queries, keys, None, None, (b, c, h, w), expert_scale)

        experts = self.expert_tokens.weight.unsqueeze(0).expand(n, -1, -1)
        if self.expert_attention == "read_only":
            queries, routing, expert_out, keys = self._read_only(sam_tokens, experts, keys, key_pe, expert_scale)
        else:
            queries, routing, expert_out, keys = self._shared(sam_tokens, experts, keys, key_pe)
        return self._masks(queries, keys, expert_out, routing, (b, c, h, w), expert_scale)

    def _read_only(self, sam_tokens, experts, keys, key_pe, expert_scale):
        transformer = self.mask_decoder.transformer
        sam_q, expert_q, routing = sam_tokens, experts, []
        for layer, mote in zip(transformer.layers, self.mote_blocks or [None] * len(transformer.layers)):
            sam_q, keys, expert_q = block_with_readers(layer, queries=sam_q, query_pe=sam_tokens, readers=expert_q,
                                                       reader_pe=experts, keys=keys, key_pe=key_pe[:1])
            if mote is not None:
                expert_q, block_routing = mote(expert_q)
                routing.append(block_routing)
        if self.image_update is not None:
            keys = keys + expert_scale * self.image_update(keys, key_pe[:1], expert_q, experts)
        final, keys_with_pe, s = transformer.final_attn_token_to_image, keys + key_pe[:1], sam_q.shape[1]
        if self.final_reader is None:  # one call: the image is projected once for SAM's tokens and the experts
            tokens, tokens_pe = torch.cat([sam_q, expert_q], dim=1), torch.cat([sam_tokens, experts], dim=1)
            tokens = transformer.norm_final_attn(tokens + final(q=tokens + tokens_pe, k=keys_with_pe, v=keys))
            return tokens[:, :s], routing, tokens[:, s:], keys
        sam_q = transformer.norm_final_attn(sam_q + final(q=sam_q + sam_tokens, k=keys_with_pe, v=keys))
        expert_q = transformer.norm_final_attn(
            expert_q + sam_few_query_attention(self.final_reader, expert_q + experts, keys_with_pe, keys))
        return sam_q, routing, expert_q, keys

    def _shared(self, sam_tokens, experts, keys, key_pe):
        transformer, start = self.mask_decoder.transformer, self.sam_tokens_end
        end = start + self.num_expert_tokens
        tokens = torch.cat([sam_tokens[:, :start], experts, sam_tokens[:, start:]], dim=1)
        queries, routing = tokens, []
        for layer, mote in zip(transformer.layers, self.mote_blocks or [None] * len(transformer.layers)):
            queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=key_pe)
            if mote is not None:
                updated, block_routing = mote(queries[:, start:end])
                queries = torch.cat([queries[:, :start], updated, queries[:, end:]], dim=1)
                routing.append(block_routing)
        attn_out = transformer.final_attn_token_to_image(q=queries + tokens, k=keys + key_pe, v=keys)
        queries = transformer.norm_final_attn(queries + attn_out)
        return torch.cat([queries[:, :start], queries[:, end:]], dim=1), routing, queries[:, start:end], keys

    def _masks(self, queries, keys, expert_out, routing, shape, expert_scale) -> DecoderOutput:
        sam = self.mask_decoder
        b, c, h, w = shape
        upscaled = sam.output_upscaling(keys.transpose(1, 2).reshape(b, c, h, w))
        sam_weights = None
        if expert_out is None or self.mask_head == "residual":
            sam_weights = sam.output_hypernetworks_mlps[0](queries[:, self.sam_mask_token_index])
        routed = None
        if expert_out is None:
            hyper_in = sam_weights
        else:
            if routing:
                routed = (routing[-1].token_weights.to(expert_out.dtype).unsqueeze(-1) * expert_out).sum(dim=1)
            else:
                routed = expert_out.mean(dim=1)
            correction = self.hypernetwork(routed)
            hyper_in = correction if sam_weights is None else sam_weights + expert_scale * correction
        b, c, h, w = upscaled.shape
        masks = (hyper_in.unsqueeze(1) @ upscaled.view(b, c, h * w)).view(b, 1, h, w)
        iou = sam.iou_prediction_head(queries[:, self.iou_token_index])[:, :1]
        return DecoderOutput(low_res_masks=masks, iou_predictions=iou, routing=routing or [], expert_tokens=expert_out,
                             routed_token=routed)
