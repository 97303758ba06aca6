"""The router load-balancing loss (SPEC "Load balancing"; Shazeer et al. 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from segmote_monai.networks.mote import RoutingOutput

__all__ = ["LOAD_MODES", "cv_squared", "load_balance_loss", "smooth_load"]

LOAD_MODES = ("indicator", "smooth")


def cv_squared(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation ``var(x) / mean(x)^2`` over the last axis.

    The variance is the population variance (divided by E); a single expert gives 0.
    """
    x = x.float()
    if x.shape[-1] == 1:
        return x.new_zeros(x.shape[:-1])
    return x.var(dim=-1, unbiased=False) / (x.mean(dim=-1) ** 2 + eps)


def smooth_load(routing: RoutingOutput) -> torch.Tensor:
    """Shazeer et al.'s differentiable load: the chance, summed over tokens, that each expert stays in the
    top-k if its own noise were drawn again. [E]. Needs the training-time noise."""
    if routing.noise_std is None:
        raise ValueError("smooth load needs noisy gating in training mode (noise_std is None)")
    clean, noisy, std, top_k = routing.clean_logits, routing.noisy_logits, routing.noise_std, routing.top_k
    num_experts = clean.shape[-1]
    if top_k >= num_experts:
        return torch.ones_like(clean).flatten(0, -2).sum(dim=0)
    top_values = noisy.topk(top_k + 1, dim=-1).values
    threshold_if_in = top_values[..., top_k : top_k + 1]
    threshold_if_out = top_values[..., top_k - 1 : top_k]
    is_in = noisy > threshold_if_in
    normal = torch.distributions.Normal(0.0, 1.0)
    prob_if_in = normal.cdf((clean - threshold_if_in) / std)
    prob_if_out = normal.cdf((clean - threshold_if_out) / std)
    return torch.where(is_in, prob_if_in, prob_if_out).flatten(0, -2).sum(dim=0)


def load_balance_loss(routing: Sequence[RoutingOutput], *, load: str = "indicator") -> torch.Tensor:
    """``CV^2(importance) + CV^2(load)`` per MoTE block, averaged over blocks.

    ``importance_e = sum_{n,t} P_{n,t,e}``; ``load_e = sum_{n,t} 1(P_{n,t,e} > 0)`` (no gradient: the
    importance term carries it) or, with ``load="smooth"``, :func:`smooth_load`. Statistics are over the
    batch given (per rank under DDP). Returns 0 when experts are off (no routing).
    """
    if load not in LOAD_MODES:
        raise ValueError(f"load must be one of {list(LOAD_MODES)}, got {load!r}")
    if not routing:
        return torch.zeros(())
    losses = []
    for block in routing:
        gates = block.gates.flatten(0, -2)  # [N*T, E]
        importance = gates.sum(dim=0)
        if load == "smooth":
            block_load = smooth_load(block)
        else:
            block_load = (gates > 0).float().sum(dim=0)
        losses.append(cv_squared(importance) + cv_squared(block_load))
    return torch.stack(losses).mean()
