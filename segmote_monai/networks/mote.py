"""Token-level mixture of experts (MoTE): a noisy top-k router and per-block expert FFNs.

The SPEC's steps 1-5, applied to the T expert tokens of each prompt after one two-way attention block.

Two choices here are ours and were made by measurement (numbers in BENCHMARKS.md, "Routing"):

- **Noise scale.** Shazeer et al.'s noise std is ``softplus(X W_n) + eps``. With ``W_n`` at nn.Linear's
  default initialisation that is about 0.7 for every token, while the clean logits of a trained router spread
  by 0.04-0.22 across experts (main at ab9f3e0): training-time routing was mostly noise, and since G scales
  the update, the noise perturbed the mask itself. The noise branch gets no gradient from the indicator load,
  so its scale stays where it starts. Here ``W_n`` starts at zero and a learned bias sets the starting std
  (``noise_std``, default 0.1): exploration is kept, below the logits' spread.
- **Sparse evaluation.** In training and under export every expert runs on every token (no data-dependent
  control flow, so routing survives ONNX); in eager evaluation only the kept experts run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["COMBINE_MODES", "ExpertFFNs", "NoisyTopKRouter", "RoutingOutput", "TokenMoE", "top_k_gates"]

COMBINE_MODES = ("topk", "top1")


@dataclass
class RoutingOutput:
    """What one MoTE block decided, for the loss, routing statistics and tests.

    Shapes: N prompts, T expert tokens, E experts.
    """

    gates: torch.Tensor  # P [N, T, E] float32: softmax over the kept top-k logits, 0 elsewhere
    expert_index: torch.Tensor  # idx [N, T] long: argmax_e P
    token_weights: torch.Tensor  # G [N, T] float32: softmax over T of each token's confidence
    clean_logits: torch.Tensor  # L [N, T, E] float32
    noisy_logits: torch.Tensor  # L~ [N, T, E] float32; equals L outside training
    noise_std: torch.Tensor | None  # softplus(X W_n + b_n) + eps [N, T, E] in training, else None
    top_k: int  # k, the experts kept per token


def top_k_gates(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sparse gates from router logits, in float32.

    Args:
        logits: [..., E].
        k: experts kept per token.

    Returns:
        gates [..., E] (softmax over the k largest logits, exactly 0 elsewhere), the index of the largest
        gate [...], and the token's confidence [...] (its largest kept logit).
    """
    logits = logits.float()
    top_values, top_index = logits.topk(k, dim=-1)  # sorted: position 0 is the largest
    gates = torch.zeros_like(logits).scatter(-1, top_index, top_values.softmax(dim=-1))
    return gates, top_index[..., 0], top_values[..., 0]


class NoisyTopKRouter(nn.Module):
    """Router logits ``L = X W_g``; in training, noisy logits on top.

    ``L~ = L + (softplus(X W_n + b_n) + eps) * Z`` with ``Z ~ N(0, 1)``, only when the module is training.
    ``W_n`` starts at zero and ``b_n`` at ``softplus^-1(noise_std)``, so the noise starts at ``noise_std + eps``
    for every token (see the module docstring for why not Shazeer et al.'s default).
    """

    def __init__(self, *, embedding_dim: int, num_experts: int, noisy: bool = True, noise_std: float = 0.1,
                 noise_epsilon: float = 1e-2) -> None:
        super().__init__()
        if noise_epsilon < 0:
            raise ValueError(f"noise_epsilon must be >= 0, got {noise_epsilon}")
        if noise_std <= 0:
            raise ValueError(f"noise_std must be > 0, got {noise_std}")
        self.gate = nn.Linear(embedding_dim, num_experts, bias=False)
        self.noise = nn.Linear(embedding_dim, num_experts) if noisy else None
        if self.noise is not None:
            nn.init.zeros_(self.noise.weight)
            nn.init.constant_(self.noise.bias, math.log(math.expm1(noise_std)))  # softplus^-1
        self.noise_epsilon = noise_epsilon

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """[N, T, D] tokens -> (clean logits, noisy logits, noise std), each [N, T, E] float32."""
        clean = self.gate(x).float()
        if not (self.training and self.noise is not None):
            return clean, clean, None
        noise_std = F.softplus(self.noise(x).float()) + self.noise_epsilon
        return clean, clean + noise_std * torch.randn_like(clean), noise_std


class ExpertFFNs(nn.Module):
    """E independent FFNs ``D -> H -> D`` with GELU, held as stacked weights.

    :meth:`forward` runs every expert on every token (export-safe: no data-dependent control flow);
    :meth:`mix_selected` runs only the experts a token keeps. The output layers start at zero so that a new
    block leaves the tokens as they came.
    """

    def __init__(self, *, num_experts: int, embedding_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(num_experts, embedding_dim, hidden_dim))
        self.b1 = nn.Parameter(torch.empty(num_experts, hidden_dim))
        self.w2 = nn.Parameter(torch.zeros(num_experts, hidden_dim, embedding_dim))
        self.b2 = nn.Parameter(torch.zeros(num_experts, embedding_dim))
        bound = 1.0 / math.sqrt(embedding_dim)  # nn.Linear's default initialisation
        nn.init.uniform_(self.w1, -bound, bound)
        nn.init.uniform_(self.b1, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T, D] tokens -> [N, T, E, D], expert e's output for every token."""
        hidden = F.gelu(torch.einsum("ntd,edh->nteh", x, self.w1) + self.b1)
        return torch.einsum("nteh,ehd->nted", hidden, self.w2) + self.b2

    def mix_selected(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_e weights[..., e] * h_e(x)`` running expert e only on the tokens with a non-zero weight.

        Args:
            x: [N, T, D] tokens.
            weights: [N, T, E], mostly zero (top-k gates).

        Returns:
            [N, T, D], equal to ``einsum("nte,nted->ntd", weights, forward(x))``.
        """
        flat, flat_weights = x.reshape(-1, x.shape[-1]), weights.reshape(-1, weights.shape[-1])
        out = torch.zeros_like(flat)
        for e in range(self.w1.shape[0]):
            rows = flat_weights[:, e].nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            hidden = F.gelu(flat[rows] @ self.w1[e] + self.b1[e])
            out.index_add_(0, rows, flat_weights[rows, e, None] * (hidden @ self.w2[e] + self.b2[e]))
        return out.view_as(x)


class TokenMoE(nn.Module):
    """One MoTE block: route each expert token, update it with its experts, weight it by confidence.

    ``x <- LayerNorm(x + G * sum_e w_e h_e(x))`` with ``w = P`` (``combine="topk"``) or the one-hot of
    ``idx`` (``combine="top1"``, the paper's literal text).
    """

    def __init__(
        self,
        *,
        embedding_dim: int,
        num_experts: int = 4,
        top_k: int = 2,
        hidden_dim: int = 2048,
        combine: str = "topk",
        noisy_gating: bool = True,
        noise_std: float = 0.1,
        noise_epsilon: float = 1e-2,
    ) -> None:
        super().__init__()
        for arg, value in (("embedding_dim", embedding_dim), ("num_experts", num_experts),
                           ("top_k", top_k), ("hidden_dim", hidden_dim)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{arg} must be an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{arg} must be >= 1, got {value}")
        if top_k > num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        if combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {list(COMBINE_MODES)}, got {combine!r}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.combine = combine
        self.router = NoisyTopKRouter(embedding_dim=embedding_dim, num_experts=num_experts, noisy=noisy_gating,
                                      noise_std=noise_std, noise_epsilon=noise_epsilon)
        self.experts = ExpertFFNs(num_experts=num_experts, embedding_dim=embedding_dim, hidden_dim=hidden_dim)
        self.norm = nn.LayerNorm(embedding_dim)
        #: in eager evaluation run only the kept experts (False: every expert, as training and export do)
        self.sparse_eval = True

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, RoutingOutput]:
        """[N, T, D] expert tokens -> updated [N, T, D] tokens and the block's routing."""
        clean, noisy, noise_std = self.router(tokens)
        gates, expert_index, confidence = top_k_gates(noisy, self.top_k)
        token_weights = confidence.softmax(dim=-1)  # over the T tokens of each prompt
        if self.combine == "topk":
            expert_weights = gates
        else:
            expert_weights = F.one_hot(expert_index, self.num_experts).to(gates.dtype)
        expert_weights = expert_weights.to(tokens.dtype)
        dense = self.training or not self.sparse_eval or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        if dense:
            mixed = torch.einsum("nte,nted->ntd", expert_weights, self.experts(tokens))
        else:
            mixed = self.experts.mix_selected(tokens, expert_weights)
        update = token_weights.to(tokens.dtype).unsqueeze(-1) * mixed
        routing = RoutingOutput(
            gates=gates, expert_index=expert_index, token_weights=token_weights,
            clean_logits=clean, noisy_logits=noisy, noise_std=noise_std, top_k=self.top_k,
        )
        return self.norm(tokens + update), routing
