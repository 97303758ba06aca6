"""Trainable parameters of a SegMoTE model, per module: the part we train and ship."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

__all__ = ["parameter_summary"]

def _group(name: str) -> str:
    """``decoder.mote_blocks.0.router.gate.weight`` -> ``decoder.mote_blocks.0.router``; else two levels."""
    parts = name.split(".")
    return ".".join(parts[:4] if name.startswith("decoder.mote_blocks.") else parts[:2])


def parameter_summary(model: nn.Module) -> OrderedDict[str, int]:
    """Trainable parameter counts per module (MoTE blocks split into router / experts / norm), then totals:
    ``MoTE``, ``PPT``, ``trainable`` and ``frozen``."""
    rows: OrderedDict[str, int] = OrderedDict()
    frozen = 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            frozen += param.numel()
            continue
        key = _group(name)
        rows[key] = rows.get(key, 0) + param.numel()
    rows["MoTE"] = sum(v for k, v in rows.items() if k.startswith("decoder.mote_blocks."))
    rows["PPT"] = sum(v for k, v in rows.items() if k.startswith("ppt."))
    rows["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows["frozen"] = frozen
    return rows
