"""Measures of what the MoTE router does: expert use, token-weight entropy, expert-token diversity and the
divergence of expert use between datasets.

**When is expert use "different" between two datasets?** The Jensen-Shannon divergence (base 2, in [0, 1])
between their mean expert-use distributions is compared with the same statistic after shuffling which
dataset each prompt came from (:func:`routing_divergence`): a difference is called real when the observed
divergence exceeds every one of the shuffled ones (p < 1 / (permutations + 1)). A fixed JSD threshold would
mean different things for 20 prompts and for 2000; the shuffles give the divergence that sampling alone
produces with these very prompts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from segmote_monai.networks.mote import RoutingOutput, top_k_gates

__all__ = [
    "expert_use",
    "jensen_shannon",
    "mean_pairwise_cosine",
    "pairwise_divergence",
    "routing_divergence",
    "token_weight_entropy",
]


def expert_use(routing: Sequence[RoutingOutput]) -> torch.Tensor:
    """[N, blocks, E]: per prompt and MoTE block, ``sum_t G_t P_t,e`` with the clean (noise-free) top-k gates P,
    i.e. how much each expert shapes the routed token that makes the mask, as inference would route this
    prompt; each row sums to 1. (An unweighted mean over tokens hides specialisation: T distinct tokens can
    each keep their own expert for every dataset while G picks a different token per dataset.)"""
    if not routing:
        raise ValueError("no routing: the model has no experts")
    out = []
    for r in routing:
        clean = top_k_gates(r.clean_logits.detach(), r.top_k)
        weights = torch.softmax(clean[2], dim=-1)  # G from the clean confidences
        out.append((weights.unsqueeze(-1) * clean[0]).sum(dim=1))
    return torch.stack(out, dim=1)


def token_weight_entropy(token_weights: torch.Tensor) -> torch.Tensor:
    """[N, T] token weights G -> [N] entropy divided by log T: 1 is a plain average of the expert tokens,
    0 a single token (0 when T = 1)."""
    g = token_weights.detach().float().clamp_min(1e-12)
    t = g.shape[-1]
    if t == 1:
        return torch.zeros(g.shape[:-1])
    return -(g * g.log()).sum(dim=-1) / math.log(t)


def mean_pairwise_cosine(tokens: torch.Tensor) -> torch.Tensor:
    """[..., T, D] -> [...]: the mean cosine similarity over the T(T-1)/2 pairs of tokens (NaN when T = 1)."""
    unit = torch.nn.functional.normalize(tokens.detach().float(), dim=-1)
    t = unit.shape[-2]
    if t < 2:
        return torch.full(unit.shape[:-2], float("nan"))
    gram = unit @ unit.transpose(-1, -2)
    upper = torch.triu_indices(t, t, offset=1)
    return gram[..., upper[0], upper[1]].mean(dim=-1)


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0: identical, 1: disjoint) of two distributions on the same axis."""
    p = np.asarray(p, dtype=np.float64).ravel()
    q = np.asarray(q, dtype=np.float64).ravel()
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        keep = a > 0
        return float((a[keep] * np.log2(a[keep] / m[keep])).sum())

    return max(0.0, (kl(p) + kl(q)) / 2)


def pairwise_divergence(shares: Mapping[str, np.ndarray]) -> dict[tuple[str, str], float]:
    """(a, b) -> JSD between datasets' expert use, each [blocks, E] (rows sum to 1), averaged over blocks."""
    out = {}
    for a, b in itertools.combinations(sorted(shares), 2):
        blocks = np.asarray(shares[a]).reshape(-1, np.asarray(shares[a]).shape[-1])
        other = np.asarray(shares[b]).reshape(blocks.shape)
        out[(a, b)] = float(np.mean([jensen_shannon(x, y) for x, y in zip(blocks, other)]))
    return out


def _divergence(use: np.ndarray, groups: np.ndarray, names: np.ndarray) -> dict[tuple[str, str], float]:
    return pairwise_divergence({str(g): use[groups == g].mean(axis=0) for g in names})


def routing_divergence(use: np.ndarray, groups: Sequence[str], *, permutations: int = 199,
                       seed: int = 0) -> dict[tuple[str, str], dict[str, float]]:
    """Observed JSD between each pair of groups' mean expert use, with its permutation test.

    Args:
        use: [N, blocks, E] expert use per prompt (:func:`expert_use`).
        groups: the dataset (or modality) of each prompt.
        permutations: shuffles of ``groups`` for the null distribution.

    Returns:
        (a, b) -> ``{"jsd", "null_max", "null_p99", "p_value", "different"}``; ``different`` is 1.0 when the
        observed JSD exceeds every shuffled one.
    """
    use = np.asarray(use, dtype=np.float64)
    groups = np.asarray(list(groups))
    if use.ndim != 3 or len(use) != len(groups):
        raise ValueError(f"use must be [N, blocks, E] with one group per row, got {list(use.shape)} and "
                         f"{len(groups)} groups")
    names = np.unique(groups)
    observed = _divergence(use, groups, names)
    rng = np.random.default_rng(seed)
    null = {pair: [] for pair in observed}
    for _ in range(permutations):
        shuffled = _divergence(use, rng.permutation(groups), names)
        for pair, value in shuffled.items():
            null[pair].append(value)
    out = {}
    for pair, value in observed.items():
        values = np.asarray(null[pair])
        out[pair] = {"jsd": value, "null_max": float(values.max()), "null_p99": float(np.percentile(values, 99)),
                     "p_value": float((1 + (values >= value).sum()) / (1 + len(values))),
                     "different": float(value > values.max())}
    return out
