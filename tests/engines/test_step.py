from __future__ import annotations

import pytest
import torch

from segmote_monai.data.cache import EmbeddingCache
from segmote_monai.engines import embed_batch, prompted_forward, training_iteration
from segmote_monai.losses import DiceBalanceLoss
from tests.conftest import tiny_segmote


def _batch(b=3):
    mask = torch.zeros(b, 1, 64, 64)
    mask[:, :, 10:30, 20:40] = 1
    return {
        "image": torch.rand(b, 3, 64, 64), "mask": mask, "class_id": torch.zeros(b, dtype=torch.long),
        "box": torch.tensor([[20.0, 10.0, 39.0, 29.0]]).repeat(b, 1),
        "points": torch.tensor([[[30.0, 20.0], [5.0, 5.0]]]).repeat(b, 1, 1),
        "point_labels": torch.tensor([[1, 0]]).repeat(b, 1),
    }


@pytest.mark.parametrize("prompt", ["box", "points", "box+points", "none"])
def test_every_prompt_mode(prompt):
    model = tiny_segmote().eval()
    batch = _batch()
    out = prompted_forward(model, batch, model.embed_images(batch["image"]), prompt=prompt)
    assert out.masks.shape == (3, 1, 64, 64)


def test_bad_prompt_mode():
    model = tiny_segmote()
    with pytest.raises(ValueError, match=r"prompt must be one of \['box', 'points', 'box\+points', 'none'\], got 'scribble'"):
        prompted_forward(model, _batch(), torch.zeros(3, 32, 16, 16), prompt="scribble")


def test_cached_and_uncached_embeddings_agree(tmp_path):
    model = tiny_segmote()
    cache = EmbeddingCache.for_model(tmp_path, model, {"size": 64}, dtype=torch.float32)
    images = _batch()["image"]
    torch.testing.assert_close(embed_batch(model, images, cache), embed_batch(model, images, None))
    torch.testing.assert_close(embed_batch(model, images, cache), embed_batch(model, images, None))
    assert cache.hits == 3 and cache.misses == 3


@pytest.mark.parametrize("prompt", ["box", "none"])
def test_training_iterations_lower_the_loss(tmp_path, prompt):
    model = tiny_segmote()
    if prompt == "none":
        model.ppt.carrier_probability = 1.0
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    cache = EmbeddingCache.for_model(tmp_path, model, {"size": 64})
    batch, loss_fn = _batch(), DiceBalanceLoss()
    losses = [training_iteration(model, optimiser, loss_fn, batch, cache=cache, prompt=prompt)["loss"].item()
              for _ in range(30)]
    assert losses[-1] < losses[0]
    assert cache.misses == 3 and cache.hits == 29 * 3
