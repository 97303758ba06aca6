from __future__ import annotations

import pytest
import torch

from segmote_monai.losses import DiceBalanceLoss
from segmote_monai.networks import PresenceHead
from tests.conftest import tiny_segmote


@pytest.mark.parametrize("n, dim, hidden", [(1, 32, 8), (5, 256, 256), (0, 16, 4)])
def test_shapes_and_an_untrained_head_keeps_every_mask(n, dim, hidden):
    head = PresenceHead(embedding_dim=dim, hidden_dim=hidden, initial_logit=3.0)
    logits = head(torch.randn(n, dim))
    assert logits.shape == (n, 1) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, torch.full((n, 1), 3.0))
    assert head.hidden_dim == hidden


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"embedding_dim": 0}, ValueError, "embedding_dim must be >= 1, got 0"),
        ({"embedding_dim": 32, "hidden_dim": 2.0}, TypeError, "hidden_dim must be an int, got float"),
        ({"embedding_dim": True}, TypeError, "embedding_dim must be an int, got bool"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        PresenceHead(**kwargs)


def test_model_outputs_presence_only_with_the_head():
    images = torch.rand(2, 3, 64, 64)
    with_head = tiny_segmote(num_condition_classes=3, presence_head=True).eval()
    out = with_head.predict(images=images, image_index=torch.tensor([0, 0, 1]), class_ids=torch.tensor([1, 2, 1]))
    assert out.presence_logits.shape == (3, 1) and with_head.config()["presence_head"]
    assert tiny_segmote().eval().predict(images=images).presence_logits is None
    with pytest.raises(ValueError, match=r"presence head reads the routed expert token: it needs num_expert_tokens > 0"):
        tiny_segmote(num_expert_tokens=0, presence_head=True)


def test_head_learns_which_rows_have_an_object():
    """A tiny SegMoTE, two images: class 1 is drawn on the first only. Trained with the presence term, the head
    answers "absent" for class 1 on the second image and "present" on the first (it starts at "present")."""
    torch.manual_seed(0)
    model = tiny_segmote(num_condition_classes=2, presence_head=True)
    images = torch.rand(2, 3, 64, 64) * 0.2
    images[0, :, 16:40, 16:40] = 1.0
    targets = torch.zeros(2, 1, 64, 64)
    targets[0, :, 16:40, 16:40] = 1.0
    embeddings = model.embed_images(images)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    loss_fn = DiceBalanceLoss(lambda_ce=1.0, lambda_presence=1.0)
    call = {"image_embeddings": embeddings, "image_index": torch.tensor([0, 1]), "class_ids": torch.tensor([1, 1])}
    for _ in range(60):
        model.train()
        loss = loss_fn(model.predict(**call), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        presence = model.eval().predict(**call).presence_logits[:, 0]
    assert presence[0] > 0 > presence[1], presence
