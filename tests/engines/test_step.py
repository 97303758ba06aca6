from __future__ import annotations

import pytest
import torch

from segmote_monai.data.cache import EmbeddingCache
from segmote_monai.engines import decode_rows, embed_batch, plan_rows, training_iteration
from segmote_monai.losses import DiceBalanceLoss
from segmote_monai.networks import PromptedForward
from tests.conftest import tiny_segmote


def _batch(b=4, tasks=("binary", "multi-class", "binary", "multi-class")):
    mask = torch.zeros(b, 1, 64, 64)
    mask[:, :, 10:30, 20:40] = 1
    return {
        "image": torch.rand(b, 3, 64, 64), "mask": mask, "class_id": torch.zeros(b, dtype=torch.long),
        "box": torch.tensor([[20.0, 10.0, 39.0, 29.0]]).repeat(b, 1),
        "points": torch.tensor([[[30.0, 20.0], [5.0, 5.0]]]).repeat(b, 1, 1),
        "point_labels": torch.tensor([[1, 0]]).repeat(b, 1), "task": list(tasks[:b]),
    }


@pytest.mark.parametrize("prompt", ["box", "points", "box+points", "none"])
def test_every_prompt_mode(prompt):
    model = tiny_segmote().eval()
    batch = _batch()
    groups = plan_rows(model, batch, prompt=prompt)
    out = decode_rows(model, batch, model.embed_images(batch["image"]), groups)
    assert out.masks.shape == (4, 1, 64, 64)
    assert [g.kind for g in groups] == (["prompt_free"] if prompt == "none" else [prompt])


@pytest.mark.parametrize(
    "share,beside,expected",
    [
        (0.0, False, {"box": [0, 1, 2, 3]}),
        (1.0, False, {"box": [0, 1, 2, 3], "prompt_free": [0, 2]}),
        (1.0, True, {"box": [1, 3], "box+ppt": [0, 2], "prompt_free": [0, 2]}),
        (0.0, True, {"box": [1, 3], "box+ppt": [0, 2]}),
    ],
)
def test_rows_per_sample(share, beside, expected):
    """Every sample once with its prompt; binary-task samples also prompt-free (on top) and with PPT beside."""
    groups = plan_rows(tiny_segmote(ppt_beside_prompts=beside), _batch(), prompt="box", prompt_free_share=share)
    assert {g.kind: g.rows for g in groups} == expected


def test_a_model_without_ppt_never_decodes_prompt_free():
    groups = plan_rows(tiny_segmote(num_ppt_queries=0), _batch(), prompt_free_share=1.0)
    assert [(g.kind, g.rows) for g in groups] == [("box", [0, 1, 2, 3])]
    with pytest.raises(ValueError, match="prompt 'none' \\(prompt-free training\\) needs a model with PPT"):
        plan_rows(tiny_segmote(num_ppt_queries=0), _batch(), prompt="none")


@pytest.mark.parametrize(
    "kwargs,message",
    [({"prompt": "scribble"}, r"prompt must be one of \['box', 'points', 'box\+points', 'none'\], got 'scribble'"),
     ({"prompt_free_share": 1.5}, r"prompt_free_share must be in \[0, 1\], got 1.5")],
)
def test_bad_row_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_rows(tiny_segmote(), _batch(), **kwargs)


def test_wrapped_and_plain_models_decode_the_same_rows():
    model = tiny_segmote(ppt_beside_prompts=True).eval()
    batch = _batch()
    groups = plan_rows(model, batch, prompt_free_share=1.0)
    embeddings = model.embed_images(batch["image"])
    with torch.no_grad():
        plain = decode_rows(model, batch, embeddings, groups)
        wrapped = decode_rows(PromptedForward(model), batch, embeddings, groups)
    torch.testing.assert_close(plain.masks, wrapped.masks)
    assert plain.masks.shape[0] == 4 + 2 + 0 and len(plain.routing) == 2 and plain.routing[0].gates.shape[0] == 6


def test_cached_and_uncached_embeddings_agree(tmp_path):
    model = tiny_segmote()
    cache = EmbeddingCache.for_model(tmp_path, model, {"size": 64}, dtype=torch.float32)
    images = _batch()["image"]
    torch.testing.assert_close(embed_batch(model, images, cache), embed_batch(model, images, None))
    torch.testing.assert_close(embed_batch(model, images, cache), embed_batch(model, images, None))
    assert cache.hits == 4 and cache.misses == 4


def test_every_trainable_parameter_gets_a_gradient_and_nothing_frozen_does():
    """Box rows, PPT beside boxes and prompt-free rows with carriers: together they reach every trainable part."""
    model = tiny_segmote(num_carrier_classes=2, ppt_beside_prompts=True)
    model.ppt.carrier_probability = 1.0
    batch = _batch()
    batch["class_id"] = torch.tensor([1, 0, 1, 0])
    seen = set()
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(3):  # noisy top-k: a few steps so that every expert is drawn
        training_iteration(model, optimiser, DiceBalanceLoss(), batch, prompt="box", prompt_free_share=1.0)
        seen |= {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert trainable - seen == set()
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)
    assert frozen and all(n.startswith(("image_encoder.", "prompt_encoder.", "decoder.mask_decoder.")) for n in frozen)


def _auto_batch(b=4):
    batch = _batch(b, tasks=("multi-class",) * b)
    batch["class_id"] = torch.tensor([1, 2, 1, 2])[:b]
    batch["auto_class_id"] = torch.tensor([2, 1, 1, 2])[:b]
    batch["auto_mask"] = torch.zeros(b, 1, 64, 64)
    batch["mask"][3] = 0  # an empty slice: decoded only prompt-free
    return batch


@pytest.mark.parametrize(
    "share,expected",
    [
        (0.0, {"box": [0, 1, 2], "class_auto": [0, 1, 2, 3]}),
        (1.0, {"box+class": [0, 1, 2], "class_auto": [0, 1, 2, 3]}),
    ],
)
def test_class_conditioned_rows(share, expected):
    """Every sample once prompt-free for its drawn class; boxes only for objects, with their class at the share."""
    model = tiny_segmote(num_condition_classes=3)
    groups = plan_rows(model, _auto_batch(), prompt="box", class_prompt_share=share)
    assert {g.kind: g.rows for g in groups} == expected
    by_kind = {g.kind: g for g in groups}
    assert by_kind["class_auto"].class_key == "auto_class_id" and by_kind["class_auto"].target_key == "auto_mask"


def test_class_rows_need_a_conditioned_model_and_a_drawn_class():
    assert [g.kind for g in plan_rows(tiny_segmote(), _auto_batch())] == ["box"]  # the empty slice boxed too
    batch = _auto_batch()
    del batch["auto_class_id"], batch["auto_mask"]
    assert [g.kind for g in plan_rows(tiny_segmote(num_condition_classes=3), batch)] == ["box"]


def test_class_conditioned_step_trains_on_its_own_targets():
    """The class_auto rows are scored against auto_mask: with an empty auto target their logits fall."""
    model = tiny_segmote(num_condition_classes=3)
    batch = _auto_batch()
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = training_iteration(model, optimiser, DiceBalanceLoss(lambda_ce=1.0), batch, class_prompt_share=1.0)
    kinds = [g.kind for g in out["groups"]]
    first = out["output"].masks[-4:].detach().mean()
    for _ in range(5):
        out = training_iteration(model, optimiser, DiceBalanceLoss(lambda_ce=1.0), batch, class_prompt_share=1.0)
    assert kinds == ["box+class", "class_auto"] and out["output"].masks.shape[0] == 7
    assert out["output"].masks[-4:].detach().mean() < first
    assert model.ppt.condition.weight.grad is not None and model.ppt.condition.weight.grad.abs().sum() > 0


def test_bad_class_prompt_share():
    with pytest.raises(ValueError, match=r"class_prompt_share must be in \[0, 1\], got -0.5"):
        plan_rows(tiny_segmote(), _batch(), class_prompt_share=-0.5)
