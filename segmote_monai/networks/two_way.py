"""Tokens that read SAM's decoder without being read by it, and attention for a few queries over many keys.

:func:`block_with_readers` runs one of SAM's two-way attention blocks on SAM's tokens and, alongside, on extra
"reader" tokens that attend to SAM's tokens, to each other and to the image, while neither SAM's tokens nor the
image attend to them. It calls the block's public sub-modules in the order ``TwoWayAttentionBlock.forward``
runs them; the readers join SAM's tokens in the token-to-image attention, the MLP and the norms (each acts on
every token alone), so the image keys and values are projected once for both. Before, the readers had their
own attention over the image (:func:`few_query_attention`): on an AMD EPYC (2 threads) that was about 6 ms of
the 17 ms MoTE added to SAM's 51 ms decoder for one box. SAM's rows equal the block's own output to float
rounding (a matrix product over more rows may sum in another order), which the tests check.

:func:`few_query_attention` is SAM's ``Attention`` (and torch's ``MultiheadAttention``) for a handful of
queries over thousands of keys, with the projections moved to the query side: per head,
``q_h . (W_k,h k + b_k,h) = (W_k,h^T q_h) . k + const`` (the constant cancels in the softmax) and
``sum_j a_j (W_v,h v_j + b_v,h) = W_v,h (sum_j a_j v_j) + b_v,h`` (the weights sum to 1). It never projects
the 4096 image tokens: for T = 4 queries over LiteMedSAM's 64 x 64 tokens it costs 67M multiply-adds instead
of the 268M of the key and value projections alone. PPT and the trainable copy of the final attention, whose
projections nothing else computes, use it.
"""

from __future__ import annotations

import copy
import math

import torch
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock

__all__ = ["ImageReadsExperts", "block_with_readers", "few_query_attention", "sam_few_query_attention"]


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


def block_with_readers(
    layer: TwoWayAttentionBlock,
    *,
    queries: torch.Tensor,
    query_pe: torch.Tensor,
    readers: torch.Tensor,
    reader_pe: torch.Tensor,
    keys: torch.Tensor,
    key_pe: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``layer(queries=..., keys=..., query_pe=..., key_pe=...)``, and what the block makes of the readers.

    Args:
        layer: a SAM ``TwoWayAttentionBlock``.
        queries: [N, S, D] SAM's tokens entering the block; query_pe: [N, S, D] their positional part.
        readers: [N, T, D] the extra tokens; reader_pe: [N, T, D] theirs.
        keys: [N, HW, D] image tokens entering the block; key_pe: [1 or N, HW, D] their positional encoding.

    Returns:
        SAM's queries [N, S, D] and keys [N, HW, D] as the block returns them, and the readers [N, T, D] after the
        block's self-attention, token-to-image attention and MLP (each with its norm), as the block would update
        them if they were in its sequence; the image-to-token attention reads SAM's tokens only.
    """
    s = queries.shape[1]
    every = torch.cat([queries, readers], dim=1)
    if layer.skip_first_layer_pe:
        sam_out = layer.self_attn(q=queries, k=queries, v=queries)
        reader_out = layer.self_attn(q=readers, k=every, v=every)
    else:
        q = queries + query_pe
        every_q = torch.cat([q, readers + reader_pe], dim=1)
        sam_out = queries + layer.self_attn(q=q, k=q, v=queries)
        reader_out = readers + layer.self_attn(q=every_q[:, s:], k=every_q, v=every)
    tokens = layer.norm1(torch.cat([sam_out, reader_out], dim=1))
    tokens_pe = torch.cat([query_pe, reader_pe], dim=1)
    keys_with_pe = keys + key_pe  # SAM's block adds it twice; it is the same tensor both times
    tokens = layer.norm2(tokens + layer.cross_attn_token_to_image(q=tokens + tokens_pe, k=keys_with_pe, v=keys))
    tokens = layer.norm3(tokens + layer.mlp(tokens))
    queries, readers = tokens[:, :s], tokens[:, s:]
    keys = layer.norm4(keys + layer.cross_attn_image_to_token(q=keys_with_pe, k=queries + query_pe, v=queries))
    return queries, keys, readers


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
