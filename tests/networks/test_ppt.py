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


def test_class_condition_changes_tokens_per_class():
    ppt = ProgressivePromptTokenizer(embedding_dim=32, num_heads=4, mlp_dim=64, num_condition_classes=3).eval()
    emb, pe = torch.randn(1, 32, 4, 4).expand(3, -1, -1, -1), torch.randn(1, 32, 4, 4)
    tokens = ppt(emb, pe, class_ids=torch.tensor([0, 1, 1]))
    torch.testing.assert_close(tokens[1], tokens[2])
    assert not torch.allclose(tokens[0], tokens[1])
    assert not torch.allclose(tokens[1], ppt(emb, pe)[1])


@pytest.mark.parametrize(
    "num_classes,class_ids,message",
    [
        (0, [0, 0], r"this PPT has no class conditioning \(num_condition_classes=0\)"),
        (3, [1, 3], r"class ids must be in \[0, 2\] \(num_condition_classes=3\), got \[1, 3\]"),
        (3, [1], r"class_ids must be \[2\], got \[1\]"),
    ],
)
def test_bad_class_ids(num_classes, class_ids, message):
    ppt = ProgressivePromptTokenizer(embedding_dim=32, num_heads=4, num_condition_classes=num_classes)
    with pytest.raises(ValueError, match=message):
        ppt(torch.randn(2, 32, 4, 4), torch.randn(1, 32, 4, 4), class_ids=torch.tensor(class_ids))


def test_negative_condition_classes_are_refused():
    with pytest.raises(ValueError, match="num_condition_classes must be >= 0, got -1"):
        ProgressivePromptTokenizer(embedding_dim=32, num_heads=4, num_condition_classes=-1)


def test_positional_values_add_the_positional_encoding_to_the_values_only():
    plain = ProgressivePromptTokenizer(embedding_dim=32, num_heads=4, mlp_dim=64).eval()
    positional = ProgressivePromptTokenizer(embedding_dim=32, num_heads=4, mlp_dim=64, positional_values=True).eval()
    positional.load_state_dict(plain.state_dict())
    emb, pe = torch.randn(2, 32, 4, 4), torch.randn(1, 32, 4, 4)
    assert not torch.allclose(positional(emb, pe), plain(emb, pe))
    torch.testing.assert_close(positional(emb, torch.zeros_like(pe)), plain(emb, torch.zeros_like(pe)))


@pytest.mark.parametrize("positional", [False, True])
def test_tokens_are_the_documented_formula_with_torchs_attention(positional):
    """``a = MHA(q, LN(F) + PE, LN(F) [+ PE])``, ``h = q + a``, ``h + MLP(LN(h))``, with torch's own attention."""
    ppt = ProgressivePromptTokenizer(embedding_dim=32, num_heads=4, mlp_dim=64, positional_values=positional).eval()
    emb, pe = torch.randn(2, 32, 8, 8), torch.randn(1, 32, 8, 8)
    features = ppt.norm_image(emb.flatten(2).transpose(1, 2))
    keys = features + pe.flatten(2).transpose(1, 2)
    queries = ppt.queries.weight.expand(2, -1, -1)
    attended, _ = ppt.attention(queries, keys, keys if positional else features, need_weights=False)
    hidden = queries + attended
    torch.testing.assert_close(ppt(emb, pe), hidden + ppt.mlp(ppt.norm_tokens(hidden)))
