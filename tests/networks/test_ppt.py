from __future__ import annotations

import pytest
import torch

from segmote_monai.networks import ProgressivePromptTokenizer


@pytest.mark.parametrize("n,q,hw", [(1, 2, 16), (3, 1, 8), (2, 4, 4)])
def test_shapes(n, q, hw):
    ppt = ProgressivePromptTokenizer(embedding_dim=32, num_queries=q, num_heads=4, mlp_dim=64)
    tokens = ppt(torch.randn(n, 32, hw, hw), torch.randn(1, 32, hw, hw))
    assert tokens.shape == (n, q, 32)


def test_carriers_change_tokens_and_zero_rows_do_not():
    ppt = ProgressivePromptTokenizer(embedding_dim=32, num_heads=4, mlp_dim=64).eval()
    emb, pe = torch.randn(2, 32, 4, 4), torch.randn(1, 32, 4, 4)
    carriers = torch.stack([torch.zeros(32), torch.randn(32)])
    plain, carried = ppt(emb, pe), ppt(emb, pe, carriers)
    torch.testing.assert_close(carried[0], plain[0])
    assert not torch.allclose(carried[1], plain[1])


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_carrier_probability_range(value):
    ppt = ProgressivePromptTokenizer(embedding_dim=32, num_heads=4)
    with pytest.raises(ValueError, match=rf"carrier_probability must be in \[0, 1\], got {value}"):
        ppt.carrier_probability = value


def test_text_carrier_range():
    ppt = ProgressivePromptTokenizer(embedding_dim=32, num_heads=4, num_carrier_classes=3)
    assert ppt.text_carrier(torch.tensor([0, 2])).shape == (2, 32)
    with pytest.raises(ValueError, match=r"carrier class ids must be in \[0, 2\] \(num_carrier_classes=3\), got \[0, 3\]"):
        ppt.text_carrier(torch.tensor([0, 3]))


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"num_heads": 5}, ValueError, "num_heads must divide embedding_dim=32, got 5"),
        ({"num_queries": 0}, ValueError, "num_queries must be >= 1, got 0"),
        ({"mlp_dim": "big"}, TypeError, "mlp_dim must be an int, got str"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        ProgressivePromptTokenizer(embedding_dim=32, **{"num_heads": 4, **kwargs})
