from __future__ import annotations

import pytest
import torch
from monai.losses import DiceLoss

from segmote_monai.losses import DiceBalanceLoss, load_balance_loss
from tests.conftest import tiny_segmote


def _output():
    model = tiny_segmote().train()
    return model.predict(images=torch.rand(2, 3, 64, 64), boxes=torch.tensor([[4.0, 4, 40, 40], [8, 8, 60, 60]]))


def test_is_dice_plus_weighted_balance():
    out = _output()
    labels = (torch.rand(2, 1, 64, 64) > 0.5).float()
    expected = DiceLoss(sigmoid=True)(out.masks, labels) + 0.01 * load_balance_loss(out.routing)
    torch.testing.assert_close(DiceBalanceLoss()(out, labels), expected)
    torch.testing.assert_close(DiceBalanceLoss()(out.masks, labels, out.routing), expected)
    torch.testing.assert_close(DiceBalanceLoss(lambda_balance=0)(out, labels), DiceLoss(sigmoid=True)(out.masks, labels))


def test_perfect_prediction_without_routing_is_near_zero():
    labels = torch.zeros(2, 1, 8, 8)
    labels[:, :, 2:6, 2:6] = 1
    logits = (labels * 2 - 1) * 50
    assert DiceBalanceLoss()(logits, labels).item() < 1e-4


def test_cross_entropy_term_is_added_with_its_weight():
    out = _output()
    labels = (torch.rand(2, 1, 64, 64) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(out.masks, labels)
    torch.testing.assert_close(DiceBalanceLoss(lambda_ce=0.5)(out, labels), DiceBalanceLoss()(out, labels) + 0.5 * bce)


def test_cross_entropy_gives_an_empty_target_the_gradient_dice_does_not():
    """Why class-conditioned training needs lambda_ce: Dice alone barely moves a confident false positive."""
    logits = torch.full((1, 1, 8, 8), 5.0, requires_grad=True)
    empty = torch.zeros(1, 1, 8, 8)
    DiceBalanceLoss()(logits, empty).backward()
    dice_grad = logits.grad.abs().max().item()
    logits.grad = None
    DiceBalanceLoss(lambda_ce=1.0)(logits, empty).backward()
    assert dice_grad < 1e-6 and logits.grad.abs().max().item() > 1e-3


def test_dice_options_pass_through():
    loss = DiceBalanceLoss(squared_pred=True, smooth_nr=0.0)
    assert loss.dice.squared_pred and loss.dice.smooth_nr == 0.0


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"lambda_balance": -0.1}, ValueError, "lambda_balance must be >= 0, got -0.1"),
        ({"lambda_balance": "0.01"}, TypeError, "lambda_balance must be a number, got str"),
        ({"lambda_ce": -1.0}, ValueError, "lambda_ce must be >= 0, got -1.0"),
        ({"lambda_presence": -1.0}, ValueError, "lambda_presence must be >= 0, got -1.0"),
        ({"load": "hard"}, ValueError, r"load must be one of \['indicator', 'smooth'\], got 'hard'"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        DiceBalanceLoss(**kwargs)


def test_bad_calls():
    out = _output()
    with pytest.raises(ValueError, match=r"mask logits \[2, 1, 64, 64\] and labels \[2, 1, 32, 32\] must match"):
        DiceBalanceLoss()(out, torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="routing is taken from the SegMoTEOutput"):
        DiceBalanceLoss()(out, torch.zeros(2, 1, 64, 64), out.routing)


def test_presence_term_is_the_cross_entropy_of_each_row_having_foreground():
    model = tiny_segmote(num_condition_classes=3, presence_head=True).train()
    out = model.predict(images=torch.rand(2, 3, 64, 64), image_index=torch.tensor([0, 1]), class_ids=torch.tensor([1, 2]))
    labels = torch.zeros(2, 1, 64, 64)
    labels[0, 0, 3:9, 3:9] = 1
    bce = torch.nn.functional.binary_cross_entropy_with_logits(out.presence_logits, torch.tensor([[1.0], [0.0]]))
    without = DiceBalanceLoss(lambda_presence=0.0)(out, labels)
    torch.testing.assert_close(DiceBalanceLoss(lambda_presence=0.5)(out, labels), without + 0.5 * bce)
    # an untrained head says "present" everywhere: the empty row costs, the other barely
    assert bce.item() > 1.0
