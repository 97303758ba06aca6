from __future__ import annotations

import pytest
import torch

from segmote_monai.networks import ExpertFFNs, NoisyTopKRouter, TokenMoE, top_k_gates


@pytest.mark.parametrize("shape,k", [((3, 4, 4), 1), ((3, 4, 4), 2), ((2, 5, 8), 3), ((1, 1, 4), 4)])
def test_top_k_gates_keep_exactly_k(shape, k):
    logits = torch.randn(shape)
    gates, index, confidence = top_k_gates(logits.to(torch.bfloat16), k)
    assert gates.dtype == torch.float32
    assert ((gates > 0).sum(-1) == k).all()
    torch.testing.assert_close(gates.sum(-1), torch.ones(shape[:-1]))
    assert (index == gates.argmax(-1)).all()
    torch.testing.assert_close(confidence, logits.to(torch.bfloat16).float().max(-1).values)


def test_top_k_gates_hand_computed():
    gates, index, confidence = top_k_gates(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), 2)
    expected = torch.softmax(torch.tensor([3.0, 2.0]), 0)
    torch.testing.assert_close(gates, torch.tensor([[0.0, expected[0], expected[1], 0.0]]))
    assert index.tolist() == [1] and confidence.tolist() == [3.0]


def test_router_noise_only_in_training():
    router = NoisyTopKRouter(embedding_dim=8, num_experts=4)
    x = torch.randn(2, 3, 8)
    router.eval()
    clean, noisy, std = router(x)
    assert std is None and torch.equal(clean, noisy)
    router.train()
    clean, noisy, std = router(x)
    assert std is not None and (std > 0).all() and not torch.equal(clean, noisy)


def test_router_without_noisy_gating():
    router = NoisyTopKRouter(embedding_dim=8, num_experts=4, noisy=False).train()
    clean, noisy, std = router(torch.randn(2, 3, 8))
    assert std is None and torch.equal(clean, noisy)


def test_expert_ffns_are_independent_and_start_at_zero():
    experts = ExpertFFNs(num_experts=3, embedding_dim=8, hidden_dim=16)
    x = torch.randn(2, 4, 8)
    assert experts(x).shape == (2, 4, 3, 8)
    assert torch.equal(experts(x), torch.zeros(2, 4, 3, 8))
    torch.nn.init.normal_(experts.w2)
    out = experts(x)
    manual = torch.nn.functional.gelu(x @ experts.w1[1] + experts.b1[1]) @ experts.w2[1] + experts.b2[1]
    torch.testing.assert_close(out[:, :, 1], manual)


@pytest.mark.parametrize("n,t,e,k,combine", [(2, 4, 4, 2, "topk"), (3, 1, 2, 1, "top1"), (1, 6, 8, 8, "topk")])
def test_token_moe_shapes(n, t, e, k, combine):
    block = TokenMoE(embedding_dim=16, num_experts=e, top_k=k, hidden_dim=32, combine=combine).eval()
    tokens, routing = block(torch.randn(n, t, 16))
    assert tokens.shape == (n, t, 16)
    assert routing.gates.shape == (n, t, e) and routing.expert_index.shape == (n, t)
    assert routing.token_weights.shape == (n, t)
    torch.testing.assert_close(routing.token_weights.sum(-1), torch.ones(n))
    assert ((routing.gates > 0).sum(-1) == k).all()


def test_token_moe_update_formula():
    """x <- LN(x + G * sum_e w_e h_e(x)) for both combine modes."""
    x = torch.randn(2, 3, 16)
    for combine in ("topk", "top1"):
        block = TokenMoE(embedding_dim=16, num_experts=4, top_k=2, hidden_dim=8, combine=combine).eval()
        torch.nn.init.normal_(block.experts.w2)
        out, routing = block(x)
        h = block.experts(x)
        if combine == "topk":
            weights = routing.gates
        else:
            weights = torch.nn.functional.one_hot(routing.expert_index, 4).float()
        mixed = (weights.unsqueeze(-1) * h).sum(-2)
        torch.testing.assert_close(out, block.norm(x + routing.token_weights.unsqueeze(-1) * mixed))


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"num_experts": 0}, ValueError, "num_experts must be >= 1, got 0"),
        ({"top_k": 5}, ValueError, r"top_k must be in \[1, num_experts=4\], got 5"),
        ({"top_k": 0}, ValueError, "top_k must be >= 1, got 0"),
        ({"combine": "soft"}, ValueError, r"combine must be one of \['topk', 'top1'\], got 'soft'"),
        ({"hidden_dim": 2.5}, TypeError, "hidden_dim must be an int, got float"),
        ({"num_experts": True}, TypeError, "num_experts must be an int, got bool"),
    ],
)
def test_token_moe_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        TokenMoE(embedding_dim=16, **kwargs)


def test_router_bad_epsilon():
    with pytest.raises(ValueError, match="noise_epsilon must be >= 0, got -1"):
        NoisyTopKRouter(embedding_dim=8, num_experts=2, noise_epsilon=-1)
