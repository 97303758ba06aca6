from __future__ import annotations

import pytest
import torch

from segmote_monai.losses import cv_squared, load_balance_loss, smooth_load
from segmote_monai.networks import RoutingOutput, top_k_gates


def _routing(gates, **extra):
    gates = torch.as_tensor(gates, dtype=torch.float32)
    fields = {"expert_index": gates.argmax(-1), "token_weights": torch.ones(gates.shape[:-1]),
              "clean_logits": gates, "noisy_logits": gates, "noise_std": None, "top_k": 1}
    return RoutingOutput(gates=gates, **{**fields, **extra})


def test_cv_squared_population_variance():
    assert cv_squared(torch.tensor([1.75, 0.25])).item() == pytest.approx(0.5625)
    assert cv_squared(torch.tensor([2.0, 1.0])).item() == pytest.approx(0.25 / 2.25)
    assert cv_squared(torch.tensor([3.0])).item() == 0.0
    assert cv_squared(torch.tensor([2.0, 2.0, 2.0])).item() == 0.0


def test_hand_computed_single_block():
    # imp = [1.75, 0.25] -> var 0.5625, mean 1 ; load = [2, 1] -> var 0.25, mean 1.5
    loss = load_balance_loss([_routing([[[0.75, 0.25], [1.0, 0.0]]])])
    assert loss.item() == pytest.approx(0.5625 + 0.25 / 2.25)


def test_averaged_over_blocks():
    unbalanced = _routing([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])  # imp = load = [3,0,0]: CV^2 = 2
    balanced = _routing([[[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]]])  # imp [1,1,1], load [2,2,2]
    assert load_balance_loss([unbalanced]).item() == pytest.approx(4.0)
    assert load_balance_loss([balanced]).item() == pytest.approx(0.0, abs=1e-6)
    assert load_balance_loss([unbalanced, balanced]).item() == pytest.approx(2.0)


def test_uniform_routing_and_single_expert_give_zero():
    assert load_balance_loss([_routing(torch.full((3, 4, 4), 0.25))]).item() == 0.0
    assert load_balance_loss([_routing(torch.ones(3, 4, 1))]).item() == 0.0
    assert load_balance_loss([]).item() == 0.0


def test_gradient_flows_through_importance_only():
    gates = torch.tensor([[[0.9, 0.1, 0.0], [0.2, 0.0, 0.8]]], requires_grad=True)
    load_balance_loss([_routing(gates)]).backward()
    reference = gates.detach().clone().requires_grad_()
    cv_squared(reference.flatten(0, 1).sum(0)).backward()
    assert gates.grad.abs().sum() > 0
    torch.testing.assert_close(gates.grad, reference.grad)


def _noisy_routing(clean, std):
    noise_std = torch.full_like(clean, std)
    noisy = clean + noise_std * torch.randn_like(clean)
    gates, index, _ = top_k_gates(noisy, 2)
    return _routing(gates, expert_index=index, clean_logits=clean, noisy_logits=noisy, noise_std=noise_std, top_k=2)


def test_smooth_load_matches_indicator_when_noise_is_tiny():
    routing = _noisy_routing(torch.randn(5, 3, 4), 1e-6)
    torch.testing.assert_close(smooth_load(routing), (routing.gates > 0).float().flatten(0, 1).sum(0))


def test_smooth_load_is_differentiable():
    clean = torch.randn(5, 3, 4, requires_grad=True)
    load_balance_loss([_noisy_routing(clean, 1.0)], load="smooth").backward()
    assert clean.grad.abs().sum() > 0


def test_smooth_load_with_every_expert_kept():
    routing = _noisy_routing(torch.randn(2, 3, 2), 1.0)
    torch.testing.assert_close(smooth_load(routing), torch.full((2,), 6.0))


def test_smooth_load_needs_training_noise():
    with pytest.raises(ValueError, match="smooth load needs noisy gating in training mode"):
        load_balance_loss([_routing([[[1.0, 0.0]]])], load="smooth")


def test_bad_load_mode():
    with pytest.raises(ValueError, match=r"load must be one of \['indicator', 'smooth'\], got 'soft'"):
        load_balance_loss([], load="soft")
