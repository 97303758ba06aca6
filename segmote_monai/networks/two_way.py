"""Tokens that read SAM's decoder without being read by it, and attention for a few queries over many keys.

:func:`reader_update` applies one of SAM's two-way attention blocks to extra tokens that attend to SAM's
tokens, to each other and to the image, while SAM's own call of the block (which the caller makes) never
sees them. It uses the public sub-modules of segment-anything's ``TwoWayAttentionBlock`` in the order its
``forward`` runs them; SAM's path is SAM's own module call, so it is exact by construction.

:func:`few_query_attention` is SAM's ``Attention`` (and torch's ``MultiheadAttention``) for a handful of
queries over thousands of keys, with the projections moved to the query side: per head,
``q_h . (W_k,h k + b_k,h) = (W_k,h^T q_h) . k + const`` (the constant cancels in the softmax) and
``sum_j a_j (W_v,h v_j + b_v,h) = W_v,h (sum_j a_j v_j) + b_v,h`` (the weights sum to 1). It never projects
the 4096 image tokens: for T = 4 queries over LiteMedSAM's 64 x 64 tokens it costs 67M multiply-adds instead
of the 268M of the key and value projections alone.
"""

from __future__ import annotations

import copy
import math

import torch
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock

__all__ = ["ImageReadsExperts", "few_query_attention", "reader_update", "sam_few_query_attention"]


def few_query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    q_proj: tuple[torch.Tensor, torch.Tensor],
    k_weight: torch.Tensor,
    v_proj: tuple[torch.Tensor, torch.Tensor],
    out_proj: torch.nn.Module,
    num_heads: int,
    key_pe: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-head attention of a few queries, projected on the query side.

    Args:
        q: [N, T, D] queries; k: [N, K, D] keys; v: [N, K, D] values (before projection).
        key_pe: [1, K, D], added to every row's keys (never materialised: ``q.(k + pe) = q.k + q.pe``).
        q_proj: (weight [I, D], bias [I]); k_weight: [I, D] (the key bias cancels); v_proj: (weight, bias).
        out_proj: maps [N, T, I] to the output.
        num_heads: heads; I must be a multiple.

    Returns:
        [N, T, D_out], what the attention module would return for these queries.
    """
    n, t, _ = q.shape
    internal = k_weight.shape[0]
    c = internal // num_heads
    qh = torch.nn.functional.linear(q, *q_proj).view(n, t, num_heads, c)
    query_in_key_space = torch.einsum("nthc,hcd->nhtd", qh, k_weight.view(num_heads, c, -1)).flatten(1, 2)
    scores = torch.bmm(query_in_key_space, k.transpose(1, 2))  # [N, H*T, K]
    if key_pe is not None:
        scores = scores + (query_in_key_space.flatten(0, 1) @ key_pe[0].transpose(0, 1)).view_as(scores)
    scores = scores / math.sqrt(c)
    pooled = torch.bmm(scores.softmax(dim=-1), v).view(n, num_heads, t, -1)  # [N, H, T, D]
    v_weight, v_bias = v_proj
    heads = torch.einsum("nhtd,hcd->nthc", pooled, v_weight.view(num_heads, c, -1)) + v_bias.view(num_heads, c)
    return out_proj(heads.reshape(n, t, internal))


def sam_few_query_attention(attention: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                            key_pe: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`few_query_attention` with the weights of one of SAM's ``Attention`` modules."""
    return few_query_attention(
        q, k, v, q_proj=(attention.q_proj.weight, attention.q_proj.bias), k_weight=attention.k_proj.weight,
        v_proj=(attention.v_proj.weight, attention.v_proj.bias), out_proj=attention.out_proj,
        num_heads=attention.num_heads, key_pe=key_pe,
    )


def reader_update(
    layer: TwoWayAttentionBlock,
    *,
    readers: torch.Tensor,
    reader_pe: torch.Tensor,
    sam_tokens: torch.Tensor,
    sam_pe: torch.Tensor,
    keys: torch.Tensor,
    key_pe: torch.Tensor,
) -> torch.Tensor:
    """What ``layer`` makes of the reader tokens, given SAM's tokens and image keys at the block's input.

    Args:
        layer: a SAM ``TwoWayAttentionBlock``.
        readers: [N, T, D] the extra tokens; reader_pe: [N, T, D] their positional part.
        sam_tokens: [N, S, D] SAM's queries entering the block; sam_pe: [N, S, D] theirs.
        keys: [N, HW, D] image tokens entering the block; key_pe: [1, HW, D] their positional encoding.

    Returns:
        [N, T, D] the readers after the block's self-attention, token-to-image attention and MLP (each with
        its norm), as the block would update them if they were in its sequence; the block's image update
        (image-to-token attention) does not apply to tokens.
    """
    every = torch.cat([sam_tokens, readers], dim=1)
    if layer.skip_first_layer_pe:
        readers = layer.self_attn(q=readers, k=every, v=every)
    else:
        every_q = every + torch.cat([sam_pe, reader_pe], dim=1)
        readers = readers + layer.self_attn(q=readers + reader_pe, k=every_q, v=every)
    readers = layer.norm1(readers)
    readers = readers + sam_few_query_attention(layer.cross_attn_token_to_image, readers + reader_pe, keys, keys,
                                                key_pe=key_pe)
    readers = layer.norm2(readers)
    return layer.norm3(readers + layer.mlp(readers))


class ImageReadsExperts(torch.nn.Module):
    """The image tokens attend to the expert tokens and add what they read: SAM's image-to-token attention
    (a trainable copy of one block's), computed with the projections on the few keys' side, and started at zero
    (its output projection is zeroed) so that a new model still predicts exactly what SAM predicts.

    Per head h and image token i: ``a_i,h = softmax_t(x_i . W_q,h^T k_h,t + b_q,h . k_h,t)`` with
    ``k_h,t = W_k,h e_t + b_k,h``, and the update ``sum_{h,t} a_i,h,t (W_o,h v_h,t) + b_o``: for 4096 image tokens
    and T = 4 experts this is about 67M multiply-adds instead of the 268M of projecting every image token.
    """

    def __init__(self, attention: Attention) -> None:
        super().__init__()
        self.attention = copy.deepcopy(attention).requires_grad_(True)
        torch.nn.init.zeros_(self.attention.out_proj.weight)
        torch.nn.init.zeros_(self.attention.out_proj.bias)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, experts: torch.Tensor,
                expert_pe: torch.Tensor) -> torch.Tensor:
        """[N, HW, D] image tokens, [1, HW, D] their positional encoding, [N, T, D] expert tokens and theirs
        -> [N, HW, D] the update to add to the image tokens."""
        attn = self.attention
        n, t, _ = experts.shape
        heads, c = attn.num_heads, attn.internal_dim // attn.num_heads
        k = attn.k_proj(experts + expert_pe).view(n, t, heads, c)
        v = attn.v_proj(experts).view(n, t, heads, c)
        w_q = attn.q_proj.weight.view(heads, c, -1)
        readers = torch.einsum("nthc,hcd->nhtd", k, w_q).flatten(1, 2)  # [N, H*T, D]
        offset = torch.einsum("nthc,hc->nht", k, attn.q_proj.bias.view(heads, c)).flatten(1, 2)
        scores = torch.bmm(image, readers.transpose(1, 2))
        scores = scores + (image_pe[0] @ readers.flatten(0, 1).transpose(0, 1)).view(
            image.shape[1], n, heads * t).permute(1, 0, 2) + offset[:, None]
        weights = (scores / math.sqrt(c)).view(n, -1, heads, t).softmax(dim=-1).flatten(2, 3)  # [N, HW, H*T]
        w_o = attn.out_proj.weight.view(-1, heads, c)
        written = torch.einsum("nthc,dhc->nhtd", v, w_o).flatten(1, 2)  # [N, H*T, D]
        return torch.bmm(weights, written) + attn.out_proj.bias
