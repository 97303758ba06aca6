"""Dice (and optionally binary cross-entropy) on mask logits, the presence head's cross-entropy and the weighted
router load-balancing loss, composed like MONAI's DiceCELoss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch.nn.modules.loss import _Loss

from segmote_monai.losses.balance import LOAD_MODES, load_balance_loss
from segmote_monai.networks.mote import RoutingOutput
from segmote_monai.networks.segmote import SegMoTEOutput

__all__ = ["DiceBalanceLoss"]


class DiceBalanceLoss(_Loss):
    """``L = Dice(sigmoid(mask logits), labels) + lambda_ce * BCE(mask logits, labels)
    + lambda_presence * BCE(presence logits, labels not empty) + lambda_balance * L_balance``.

    The cross-entropy term is for targets that may be empty (class-conditioned prompt-free rows, where the class
    is absent from the slice): on an empty target the per-sample Dice is ``1 - s / (sum(p) + s)`` with MONAI's
    tiny smoothing ``s``, which is ~1 with a vanishing gradient as soon as a few pixels are predicted, so Dice
    alone never teaches "nothing here".

    The presence term needs a :class:`SegMoTEOutput` from a model with a presence head
    (:class:`~segmote_monai.networks.PresenceHead`); it is 0 otherwise. Its target is per row: whether the row's
    label mask has any foreground.

    Callable as ``loss(output, labels)`` with a :class:`SegMoTEOutput` (what a trainer passes when the
    network returns one) or as ``loss(mask_logits, labels, routing)``.

    Args:
        lambda_balance: weight of the balance term, >= 0 (the paper's 0.01).
        load: ``"indicator"`` (the paper) or ``"smooth"`` (Shazeer et al.'s differentiable estimate).
        lambda_ce: weight of the pixel-wise binary cross-entropy, >= 0 (0: the paper's Dice only).
        lambda_presence: weight of the presence head's binary cross-entropy, >= 0.
        dice_kwargs: passed to :class:`monai.losses.DiceLoss` (``sigmoid=True`` by default).
    """

    def __init__(self, *, lambda_balance: float = 0.01, load: str = "indicator", lambda_ce: float = 0.0,
                 lambda_presence: float = 1.0, **dice_kwargs: Any) -> None:
        super().__init__()
        for name, value in (("lambda_balance", lambda_balance), ("lambda_ce", lambda_ce),
                            ("lambda_presence", lambda_presence)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if load not in LOAD_MODES:
            raise ValueError(f"load must be one of {list(LOAD_MODES)}, got {load!r}")
        dice_kwargs.setdefault("sigmoid", True)
        self.dice = DiceLoss(**dice_kwargs)
        self.lambda_balance = float(lambda_balance)
        self.lambda_ce = float(lambda_ce)
        self.lambda_presence = float(lambda_presence)
        self.load = load

    def forward(
        self,
        input: torch.Tensor | SegMoTEOutput,
        target: torch.Tensor,
        routing: Sequence[RoutingOutput] | None = None,
    ) -> torch.Tensor:
        """[N, 1, H, W] mask logits (or a SegMoTEOutput) and [N, 1, H, W] binary labels -> scalar loss."""
        presence = None
        if isinstance(input, SegMoTEOutput):
            if routing is not None:
                raise ValueError("routing is taken from the SegMoTEOutput; do not pass it as well")
            input, routing, presence = input.masks, input.routing, input.presence_logits
        if input.shape != target.shape:
            raise ValueError(f"mask logits {list(input.shape)} and labels {list(target.shape)} must match")
        loss = self.dice(input, target)
        if self.lambda_ce:
            loss = loss + self.lambda_ce * F.binary_cross_entropy_with_logits(input, target.to(input.dtype))
        if presence is not None and self.lambda_presence:
            present = (target.flatten(1) > 0).any(dim=1, keepdim=True).to(presence.dtype)
            loss = loss + self.lambda_presence * F.binary_cross_entropy_with_logits(presence, present)
        if routing and self.lambda_balance:
            loss = loss + self.lambda_balance * load_balance_loss(routing, load=self.load).to(loss.device)
        return loss
