"""ONNX export of the prompt-free path on real LiteMedSAM, with routing that differs between inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segmote_monai.apps.export import export_onnx
from segmote_monai.networks import build_segmote

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow


def test_exported_onnx_matches_pytorch_for_inputs_that_route_differently(tmp_path):
    torch.manual_seed(0)
    model = build_segmote("lite_medsam", num_ppt_queries=2).eval()
    with torch.no_grad():  # trained-looking parts: experts that change the tokens, a decisive router
        for block in model.decoder.mote_blocks:
            torch.nn.init.normal_(block.experts.w2, std=0.05)
            torch.nn.init.normal_(block.router.gate.weight, std=3.0)
    candidates = [torch.rand(1, 3, 256, 256) ** p for p in (0.3, 1.0, 3.0)]
    candidates += [torch.zeros(1, 3, 256, 256), torch.ones(1, 3, 256, 256)]
    with torch.no_grad():
        routes = [tuple(model.predict(images=x).routing[-1].expert_index.flatten().tolist()) for x in candidates]
    first = candidates[0]
    other = next((x for x, r in zip(candidates, routes) if r != routes[0]), None)
    assert other is not None, f"no two inputs routed differently: {routes}"

    path = export_onnx(model, tmp_path / "segmote.onnx")
    session = ort.InferenceSession(str(path))
    for x in (first, other):
        expected = model(x).detach().numpy()
        got = session.run(["pred"], {"image": x.numpy()})[0]
        assert got.shape == (1, 1, 256, 256)
        np.testing.assert_allclose(got, expected, atol=1e-3, rtol=1e-3)
    assert [p.name for p in tmp_path.iterdir()] == ["segmote.onnx"]
