from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segmote_monai.networks.mote import RoutingOutput
from segmote_monai.routing import (
    expert_use,
    jensen_shannon,
    mean_pairwise_cosine,
    pairwise_divergence,
    routing_divergence,
    token_weight_entropy,
)


def _routing(logits, k=2):
    n, t, _ = logits.shape
    return RoutingOutput(gates=torch.zeros_like(logits), expert_index=torch.zeros(n, t, dtype=torch.long),
                         token_weights=torch.full((n, t), 1 / t), clean_logits=logits, noisy_logits=logits,
                         noise_std=None, top_k=k)


def test_expert_use_weights_each_token_by_its_confidence():
    # token 0: experts 0, 1 with confidence 5; token 1: experts 2, 3 with confidence 0
    logits = torch.tensor([[[5.0, 5.0, -9.0, -9.0], [-9.0, -9.0, 0.0, 0.0]]])
    use = expert_use([_routing(logits), _routing(logits)])
    g0 = 1 / (1 + math.exp(-5.0))
    expected = torch.tensor([g0 / 2, g0 / 2, (1 - g0) / 2, (1 - g0) / 2])
    assert use.shape == (1, 2, 4)
    torch.testing.assert_close(use[0, 0], expected)
    torch.testing.assert_close(use.sum(-1), torch.ones(1, 2))


def test_expert_use_needs_routing():
    with pytest.raises(ValueError, match="no routing: the model has no experts"):
        expert_use([])


@pytest.mark.parametrize("weights,expected", [([0.25] * 4, 1.0), ([1.0, 0, 0, 0], 0.0), ([0.5, 0.5, 0, 0], 0.5)])
def test_token_weight_entropy(weights, expected):
    assert float(token_weight_entropy(torch.tensor([weights]))[0]) == pytest.approx(expected, abs=1e-5)


def test_mean_pairwise_cosine():
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])  # pairs: 0, 1, 0 -> 1/3
    assert float(mean_pairwise_cosine(tokens)[0]) == pytest.approx(1 / 3)
    assert torch.isnan(mean_pairwise_cosine(torch.ones(1, 1, 2))).all()


def test_jensen_shannon_bounds():
    assert jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)
    assert jensen_shannon([0.3, 0.7], [0.3, 0.7]) == pytest.approx(0.0)
    assert 0 < jensen_shannon([0.6, 0.4], [0.4, 0.6]) < 0.1
    shares = {"a": np.array([[1.0, 0.0]]), "b": np.array([[0.0, 1.0]]), "c": np.array([[1.0, 0.0]])}
    assert pairwise_divergence(shares) == pytest.approx({("a", "b"): 1.0, ("a", "c"): 0.0, ("b", "c"): 1.0})


def test_routing_divergence_separates_real_from_sampling_differences():
    rng = np.random.default_rng(0)
    same = rng.dirichlet([1, 1, 1, 1], size=(120, 2))
    groups = ["x"] * 60 + ["y"] * 60
    assert routing_divergence(same, groups, permutations=99)[("x", "y")]["different"] == 0.0
    apart = same.copy()
    apart[:60, :, :2] += 2.0
    apart /= apart.sum(-1, keepdims=True)
    result = routing_divergence(apart, groups, permutations=99)[("x", "y")]
    assert result["different"] == 1.0 and result["p_value"] == pytest.approx(0.01) and result["jsd"] > result["null_max"]


def test_routing_divergence_shapes():
    with pytest.raises(ValueError, match=r"use must be \[N, blocks, E\] with one group per row, got \[3, 4\] and 3"):
        routing_divergence(np.ones((3, 4)), ["a", "b", "a"])
