from __future__ import annotations

import pytest
import torch

from segmote_monai.losses import load_balance_loss
from segmote_monai.networks import ExpertFFNs, NoisyTopKRouter, TokenMoE, top_k_gates
from segmote_monai.routing import expert_use, routing_divergence


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


@pytest.mark.parametrize("noise_std", [0.05, 0.1, 0.7])
def test_router_noise_starts_at_the_requested_scale(noise_std):
    router = NoisyTopKRouter(embedding_dim=8, num_experts=4, noise_std=noise_std, noise_epsilon=0.01).train()
    _, _, std = router(torch.randn(5, 3, 8))
    torch.testing.assert_close(std, torch.full((5, 3, 4), noise_std + 0.01))


def _two_domains(n, generator, centre, shift, tokens):
    """Expert tokens of prompts from two domains whose routed token must move in opposite directions."""
    domain = torch.randint(0, 2, (n,), generator=generator)
    x = tokens + centre[domain][:, None] + 0.5 * torch.randn(n, *tokens.shape, generator=generator)
    target = x.mean(dim=1) + 2 * (1 - 2 * domain).float()[:, None] * shift
    return x, torch.nn.functional.layer_norm(target, target.shape[-1:]), domain


def _domain_use(block, data):
    x, _, domain = data
    block.eval()
    with torch.no_grad():
        _, routing = block(x)
    use = expert_use([routing]).numpy()
    return use, ["a" if d == 0 else "b" for d in domain.tolist()]


def test_the_trained_router_sends_two_domains_to_different_experts():
    """A synthetic two-domain task, trained the way the decoder uses MoTE (the loss sees the routed token
    sum_t G_t x_t) with noisy top-2 gating and the balance loss: the domains start on the same experts and
    end on different ones (permutation test, and different most-used experts)."""
    generator = torch.Generator().manual_seed(100)
    dim = 16
    centre, shift, tokens = 0.3 * torch.randn(2, dim, generator=generator), torch.randn(dim, generator=generator), \
        torch.randn(4, dim, generator=generator)
    block = TokenMoE(embedding_dim=dim, num_experts=4, top_k=2, hidden_dim=8)
    held_out = _two_domains(200, torch.Generator().manual_seed(9), centre, shift, tokens)
    before = routing_divergence(*_domain_use(block, held_out), permutations=99)[("a", "b")]
    optimiser = torch.optim.Adam(block.parameters(), lr=1e-2)
    for _ in range(300):
        x, target, _ = _two_domains(32, generator, centre, shift, tokens)
        block.train()
        out, routing = block(x)
        routed = (routing.token_weights.unsqueeze(-1) * out).sum(dim=1)
        loss = ((routed - target) ** 2).mean() + 0.01 * load_balance_loss([routing])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    use, groups = _domain_use(block, held_out)
    after = routing_divergence(use, groups, permutations=99)[("a", "b")]
    top_a = use[[g == "a" for g in groups]].mean(axis=0)[0].argmax()
    top_b = use[[g == "b" for g in groups]].mean(axis=0)[0].argmax()
    assert before["jsd"] < 0.1, before
    assert after["different"] == 1.0 and after["jsd"] > 0.3 and top_a != top_b, (after, top_a, top_b)


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
    with pytest.raises(ValueError, match="noise_std must be > 0, got -0.1"):
        NoisyTopKRouter(embedding_dim=8, num_experts=2, noise_std=-0.1)


@pytest.mark.parametrize("n,t,e,k", [(2, 4, 4, 2), (3, 1, 4, 1), (1, 6, 8, 3)])
def test_eval_runs_only_the_kept_experts_and_gives_the_dense_result(n, t, e, k):
    block = TokenMoE(embedding_dim=16, num_experts=e, top_k=k, hidden_dim=32)
    torch.nn.init.normal_(block.experts.w2)
    x = torch.randn(n, t, 16)
    block.eval()
    sparse, routing = block(x)
    dense = block.norm(x + routing.token_weights.unsqueeze(-1)
                       * torch.einsum("nte,nted->ntd", routing.gates, block.experts(x)))
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
