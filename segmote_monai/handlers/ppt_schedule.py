"""The "progressive" in PPT: the chance of a foreground carrier decays over training."""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine, Events

from segmote_monai.engines.step import unwrap

__all__ = ["PPTCarrierSchedule", "carrier_probability"]


def carrier_probability(epoch: int, max_epochs: int, decay_fraction: float = 0.7) -> float:
    """p for 1-based ``epoch``: 1 at the first epoch, falling linearly to 0 once ``decay_fraction`` of
    training has passed, 0 after."""
    if not 0.0 < decay_fraction <= 1.0:
        raise ValueError(f"decay_fraction must be in (0, 1], got {decay_fraction}")
    elapsed = (epoch - 1) / max(1, max_epochs)
    return max(0.0, 1.0 - elapsed / decay_fraction)


class PPTCarrierSchedule:
    """Sets ``network.ppt.carrier_probability`` at the start of every epoch (no-op without PPT)."""

    def __init__(self, decay_fraction: float = 0.7) -> None:
        carrier_probability(1, 1, decay_fraction)  # validates
        self.decay_fraction = decay_fraction

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Any) -> None:
        model = unwrap(engine.network)
        if model.ppt is None:
            return
        p = carrier_probability(engine.state.epoch, engine.state.max_epochs, self.decay_fraction)
        model.ppt.carrier_probability = p
        engine.state.metrics["ppt_carrier_probability"] = p
