"""Export of the prompt-free path (``SegMoTE.forward``: images -> mask logits) to ONNX.

SegMoTE does not script (segment-anything's and TinyViT's code is not TorchScript-compatible), and MONAI's
``ckpt_export`` loads a full state dict while our checkpoints hold only the trained part, so the bundle
exports to ONNX through ``torch.export`` (onnxscript). Routing survives export: every expert runs densely and
the gates select (:class:`~segmote_monai.networks.mote.ExpertFFNs`), so there is no data-dependent Python
control flow to freeze at trace time.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from segmote_monai.atomic import atomic_path
from segmote_monai.networks.segmote import SegMoTE

__all__ = ["export_onnx"]


def export_onnx(network: SegMoTE, path: str | os.PathLike, *, opset: int = 18) -> Path:
    """Writes ``network``'s prompt-free forward ([1, 3, S, S] ``image`` -> [1, 1, S, S] ``pred``) to ``path``
    (atomically) and returns it."""
    network = network.eval()
    size = network.img_size
    example = torch.rand(1, 3, size, size, device=next(network.parameters()).device)
    path = Path(path)
    with atomic_path(path) as tmp, torch.no_grad():
        program = torch.onnx.export(network, (example,), input_names=["image"], output_names=["pred"],
                                    dynamo=True, opset_version=opset)
        program.save(str(tmp))
    return path
