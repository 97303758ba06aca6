"""SegMoTE's mask decoder loop around SAM's frozen two-way transformer blocks.

Token sequence per prompt, sliced by the named offsets below:
``[IoU token, SAM's mask tokens, T expert tokens, Q PPT tokens, sparse prompt tokens]``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from segment_anything.modeling import MaskDecoder
from torch import nn

from segmote_monai.networks.mote import COMBINE_MODES, RoutingOutput, TokenMoE

__all__ = ["DecoderOutput", "MoTEMaskDecoder"]


@dataclass
class DecoderOutput:
    low_res_masks: torch.Tensor  # [N, 1, 4h, 4w] mask logits
    iou_predictions: torch.Tensor  # [N, 1] SAM's IoU head on SAM's first mask token
    routing: list[RoutingOutput] = field(default_factory=list)  # one per two-way block; empty, experts off


class MoTEMaskDecoder(nn.Module):
    """SAM's ``MaskDecoder`` with T expert tokens, a MoTE block after each two-way block, and a routed
    mask head.

    The SAM decoder passed in is used through its public modules (tokens, transformer blocks, final
    attention, upscaling, hypernetworks, IoU head) and is never copied or modified. With
    ``num_expert_tokens=0`` the loop computes exactly SAM's single-mask output.
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
        token_init_noise: float = 0.02,
    ) -> None:
        super().__init__()
        if not isinstance(mask_decoder, MaskDecoder):
            raise TypeError(f"mask_decoder must be a segment_anything MaskDecoder, got {type(mask_decoder).__name__}")
        if not isinstance(num_expert_tokens, int) or isinstance(num_expert_tokens, bool):
            raise TypeError(f"num_expert_tokens must be an int, got {type(num_expert_tokens).__name__}")
        if num_expert_tokens < 0:
            raise ValueError(f"num_expert_tokens must be >= 0 (0 switches experts off), got {num_expert_tokens}")
        if combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {list(COMBINE_MODES)}, got {combine!r}")
        if token_init_noise < 0:
            raise ValueError(f"token_init_noise must be >= 0, got {token_init_noise}")
        self.mask_decoder = mask_decoder
        dim = mask_decoder.transformer_dim
        self.num_expert_tokens = num_expert_tokens
        self.num_experts = num_experts
        self.top_k = top_k
        self.expert_hidden_dim = expert_hidden_dim
        self.combine = combine
        self.noisy_gating = noisy_gating
        # Named offsets into the token sequence (SAM's own tokens first, as SAM lays them out).
        self.iou_token_index = 0
        self.sam_mask_token_index = 1
        self.expert_token_start = 1 + mask_decoder.num_mask_tokens
        self.expert_token_end = self.expert_token_start + num_expert_tokens

        if num_expert_tokens:
            sam_token = mask_decoder.mask_tokens.weight.detach()[0]
            self.expert_tokens = nn.Embedding(num_expert_tokens, dim)
            with torch.no_grad():
                self.expert_tokens.weight.copy_(
                    sam_token + token_init_noise * torch.randn(num_expert_tokens, dim)
                )
            self.mote_blocks = nn.ModuleList(
                TokenMoE(embedding_dim=dim, num_experts=num_experts, top_k=top_k, hidden_dim=expert_hidden_dim,
                         combine=combine, noisy_gating=noisy_gating)
                for _ in mask_decoder.transformer.layers
            )
            # Expert tokens leave each SAM block through its last LayerNorm; re-normalising them with the
            # same affine keeps a fresh block where SAM put them (a unit affine drops liver Dice 0.90 -> 0.09).
            with torch.no_grad():
                for mote, layer in zip(self.mote_blocks, mask_decoder.transformer.layers):
                    mote.norm.load_state_dict(layer.norm4.state_dict())
            # SAM's own hypernetwork is the starting point, so training starts near SAM's prediction.
            self.hypernetwork = copy.deepcopy(mask_decoder.output_hypernetworks_mlps[0]).requires_grad_(True)
        else:
            self.expert_tokens = None
            self.mote_blocks = nn.ModuleList()
            self.hypernetwork = None

    def forward(
        self,
        *,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        image_index: torch.Tensor,
        ppt_tokens: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """Predicts one mask per prompt.

        Args:
            image_embeddings: [B, D, h, w] encoder output, one row per image.
            image_pe: [1, D, h, w] SAM's dense positional encoding.
            sparse_prompt_embeddings: [N, S, D] box/point tokens (S may be 0).
            dense_prompt_embeddings: [N, D, h, w].
            image_index: [N] long, the image each prompt belongs to.
            ppt_tokens: [N, Q, D] or None.

        Returns:
            :class:`DecoderOutput` with [N, 1, 4h, 4w] mask logits and [N, 1] IoU predictions.
        """
        sam = self.mask_decoder
        n = sparse_prompt_embeddings.shape[0]
        own_tokens = [sam.iou_token.weight, sam.mask_tokens.weight]
        if self.expert_tokens is not None:
            own_tokens.append(self.expert_tokens.weight)
        tokens = [torch.cat(own_tokens, dim=0).unsqueeze(0).expand(n, -1, -1)]
        if ppt_tokens is not None:
            tokens.append(ppt_tokens.to(sparse_prompt_embeddings.dtype))
        tokens.append(sparse_prompt_embeddings)
        tokens = torch.cat(tokens, dim=1)

        src = image_embeddings[image_index] + dense_prompt_embeddings
        b, c, h, w = src.shape
        keys = src.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1).expand(b, -1, -1)
        queries = tokens
        routing: list[RoutingOutput] = []
        # SAM's TwoWayTransformer.forward, with a MoTE update of the expert tokens after each block.
        transformer = sam.transformer
        for layer, mote in zip(transformer.layers, self.mote_blocks or [None] * len(transformer.layers)):
            queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=key_pe)
            if mote is not None:
                start, end = self.expert_token_start, self.expert_token_end
                experts, block_routing = mote(queries[:, start:end])
                queries = torch.cat([queries[:, :start], experts, queries[:, end:]], dim=1)
                routing.append(block_routing)
        attn_out = transformer.final_attn_token_to_image(q=queries + tokens, k=keys + key_pe, v=keys)
        queries = transformer.norm_final_attn(queries + attn_out)

        upscaled = sam.output_upscaling(keys.transpose(1, 2).reshape(b, c, h, w))
        if self.hypernetwork is not None:
            weights = routing[-1].token_weights.to(queries.dtype).unsqueeze(-1)
            routed = (weights * queries[:, self.expert_token_start:self.expert_token_end]).sum(dim=1)
            hyper_in = self.hypernetwork(routed)
        else:
            hyper_in = sam.output_hypernetworks_mlps[0](queries[:, self.sam_mask_token_index])
        b, c, h, w = upscaled.shape
        masks = (hyper_in.unsqueeze(1) @ upscaled.view(b, c, h * w)).view(b, 1, h, w)
        iou = sam.iou_prediction_head(queries[:, self.iou_token_index])[:, :1]
        return DecoderOutput(low_res_masks=masks, iou_predictions=iou, routing=routing)
