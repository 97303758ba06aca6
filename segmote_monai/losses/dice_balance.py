"""Dice on mask logits plus the weighted router load-balancing loss, composed like MONAI's DiceCELoss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.losses import DiceLoss
from torch.nn.modules.loss import _Loss

from segmote_monai.losses.balance import LOAD_MODES, load_balance_loss
from segmote_monai.networks.mote import RoutingOutput
from segmote_monai.networks.segmote import SegMoTEOutput

__all__ = ["DiceBalanceLoss"]


class DiceBalanceLoss(_Loss):
    """``L = Dice(sigmoid(mask logits), labels) + lambda_balance * L_balance``.

    Callable as ``loss(output, labels)`` with a :class:`SegMoTEOutput` (what a trainer passes when the
    network returns one) or as ``loss(mask_logits, labels, routing)``.

    Args:
        lambda_balance: weight of the balance term, >= 0 (the paper's 0.01).
        load: ``"indicator"`` (the paper) or ``"smooth"`` (Shazeer et al.'s differentiable estimate).
        dice_kwargs: passed to :class:`monai.losses.DiceLoss` (``sigmoid=True`` by default).
    """

    def __init__(self, *, lambda_balance: float = 0.01, load: str = "indicator", **dice_kwargs: Any) -> None:
        super().__init__()
        if isinstance(lambda_balance, bool) or not isinstance(lambda_balance, (int, float)):
            raise TypeError(f"lambda_balance must be a number, got {type(lambda_balance).__name__}")
        if lambda_balance < 0:
            raise ValueError(f"lambda_balance must be >= 0, got {lambda_balance}")
        if load not in LOAD_MODES:
            raise ValueError(f"load must be one of {list(LOAD_MODES)}, got {load!r}")
        dice_kwargs.setdefault("sigmoid", True)
        self.dice = DiceLoss(**dice_kwargs)
        self.lambda_balance = float(lambda_balance)
        self.load = load

    def forward(
        self,
        input: torch.Tensor | SegMoTEOutput,
        target: torch.Tensor,
        routing: Sequence[RoutingOutput] | None = None,
    ) -> torch.Tensor:
        """[N, 1, H, W] mask logits (or a SegMoTEOutput) and [N, 1, H, W] binary labels -> scalar loss."""
        if isinstance(input, SegMoTEOutput):
            if routing is not None:
                raise ValueError("routing is taken from the SegMoTEOutput; do not pass it as well")
            input, routing = input.masks, input.routing
        if input.shape != target.shape:
            raise ValueError(f"mask logits {list(input.shape)} and labels {list(target.shape)} must match")
        loss = self.dice(input, target)
        if routing and self.lambda_balance:
            loss = loss + self.lambda_balance * load_balance_loss(routing, load=self.load).to(loss.device)
        return loss
