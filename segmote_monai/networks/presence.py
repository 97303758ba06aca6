"""Whether the object a row asks for is on the image at all: a presence logit per decoded row.

A class-conditioned prompt-free row (automatic multi-class segmentation) must be able to answer "not on this
slice". Its mask logits alone did not: trained with Dice + BCE on slices where the class is absent (the recipe
of ``configs/train_class_prompts.json``), the model still predicted each organ on nearly every slice without it
(CHAOS patients 02, 10, 21: 216 of 227 such rows), each a plausible blob. Exploratory runs of this change (a
script outside the repository, on those three patients): no rule on the masks rescued it (a minimum area, a
threshold on SAM's IoU prediction or on the mean probability inside the mask, the largest 3D component, each
alone or combined: patient 02 at best 0.445 mean Dice against 0.443 raw), while a logistic probe on the frozen
routed expert token, fitted on the 11 training patients, told present from absent on those patients in 90% of
rows (81% from the mask statistics above). SAM 2 answers the same question for video frames with an
object-score head on an output token; this is that head on the routed token, trained with the rest.

Measured (``benchmarks/auto.py``, BENCHMARKS.md ``automatic``; one seed, the same recipe with and without the
head): it does not yet do what it is for. Trained jointly (``presence_head``, ``lambda_presence`` 1), the
automatic mean on held-out patients 10 / 21 is 0.652 / 0.607 with the head and 0.648 / 0.617 with its gate
off, against 0.651 / 0.644 for the run without a head: the spleen's false positives go (0.50 -> 0.72 / 0.80)
but the kidneys are dropped where they are present (left kidney 0.157 on patient 21; on validation patient 02
every kidney slice). Hence ``presence_head`` is off by default, an option to build on rather than the recipe.

A row whose presence logit is below zero gets an empty mask at inference
(:class:`~segmote_monai.inferers.SliceSegmenter`, ``auto_presence``); training gives the head a binary
cross-entropy against "the target mask is not empty" on every row
(:class:`~segmote_monai.losses.DiceBalanceLoss`, ``lambda_presence``): prompted rows always have an object,
class-conditioned prompt-free rows have one or not.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PresenceHead"]


class PresenceHead(nn.Module):
    """``MLP(LN(routed token)) -> [N, 1]`` presence logits; the last layer starts at a positive bias, so that
    an untrained head keeps every mask (what the model did before it had one)."""

    def __init__(self, *, embedding_dim: int, hidden_dim: int = 256, initial_logit: float = 4.0) -> None:
        super().__init__()
        for arg, value in (("embedding_dim", embedding_dim), ("hidden_dim", hidden_dim)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{arg} must be an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{arg} must be >= 1, got {value}")
        self.norm = nn.LayerNorm(embedding_dim)
        self.mlp = nn.Sequential(nn.Linear(embedding_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 1))
        with torch.no_grad():
            self.mlp[-1].weight.zero_()
            self.mlp[-1].bias.fill_(initial_logit)

    @property
    def hidden_dim(self) -> int:
        return self.mlp[0].out_features

    def forward(self, routed_token: torch.Tensor) -> torch.Tensor:
        """[N, D] routed expert tokens -> [N, 1] presence logits (float32)."""
        return self.mlp(self.norm(routed_token)).float()
