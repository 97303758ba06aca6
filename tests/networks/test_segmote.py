from __future__ import annotations

import pytest
import torch

from segmote_monai.losses import DiceBalanceLoss
from tests.conftest import tiny_segmote

IMAGES = torch.rand(2, 3, 64, 64)
BOXES = torch.tensor([[4.0, 4.0, 40.0, 40.0], [10.0, 8.0, 60.0, 50.0], [0.0, 0.0, 63.0, 63.0]])
POINTS = torch.tensor([[[20.0, 20.0], [50.0, 50.0]], [[30.0, 10.0], [5.0, 5.0]], [[32.0, 32.0], [1.0, 1.0]]])
POINT_LABELS = torch.tensor([[1, 0], [1, 0], [1, 1]])
INDEX = torch.tensor([0, 1, 1])


@pytest.mark.parametrize(
    "prompts,n",
    [
        ({}, 2),
        ({"boxes": BOXES, "image_index": INDEX}, 3),
        ({"points": POINTS, "point_labels": POINT_LABELS, "image_index": INDEX}, 3),
        ({"boxes": BOXES, "points": POINTS, "point_labels": POINT_LABELS, "image_index": INDEX}, 3),
        ({"boxes": BOXES, "image_index": INDEX, "use_ppt": True}, 3),
        ({"boxes": BOXES[:2]}, 2),
    ],
    ids=["prompt-free", "boxes", "points", "boxes+points", "boxes+ppt", "one-per-image"],
)
@pytest.mark.parametrize("experts", [0, 4])
def test_output_shapes(prompts, n, experts):
    model = tiny_segmote(num_expert_tokens=experts).eval()
    out = model.predict(images=IMAGES, **prompts)
    assert out.masks.shape == (n, 1, 64, 64)
    assert out.low_res_masks.shape == (n, 1, 64, 64)
    assert out.iou_predictions.shape == (n, 1)
    assert len(out.routing) == (2 if experts else 0)
    if experts:
        assert out.routing[-1].gates.shape == (n, experts, 4)


def test_several_prompts_on_one_image_and_cached_embeddings():
    model = tiny_segmote().eval()
    image = IMAGES[:1]
    embeddings = model.embed_images(image)
    from_images = model.predict(images=image, boxes=BOXES)
    from_cache = model.predict(image_embeddings=embeddings, boxes=BOXES)
    torch.testing.assert_close(from_images.masks, from_cache.masks)
    # Each prompt row is independent of the others in the call.
    alone = model.predict(image_embeddings=embeddings, boxes=BOXES[1:2])
    torch.testing.assert_close(alone.masks[0], from_cache.masks[1], rtol=1e-5, atol=1e-5)


def test_forward_is_prompt_free_predict():
    model = tiny_segmote().eval()
    torch.testing.assert_close(model(IMAGES), model.predict(images=IMAGES).masks)


def test_forward_on_a_stack_of_slices_is_slice_by_slice():
    model = tiny_segmote().eval()
    stack = torch.stack([IMAGES, IMAGES.flip(-1), IMAGES.flip(-2)], dim=-1)  # [2, 3, 64, 64, 3]
    out = model(stack)
    assert out.shape == (2, 1, 64, 64, 3)
    for s in range(3):
        torch.testing.assert_close(out[..., s], model(stack[..., s]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 3, 64, 64, 2, 1)])
def test_forward_refuses_other_ranks(shape):
    with pytest.raises(ValueError, match=r"expected images \[B, 3, H, W\]"):
        tiny_segmote().eval()(torch.rand(shape))


def test_eval_is_deterministic_and_training_is_noisy():
    model = tiny_segmote().eval()
    first = model.predict(images=IMAGES, boxes=BOXES, image_index=INDEX)
    second = model.predict(images=IMAGES, boxes=BOXES, image_index=INDEX)
    assert torch.equal(first.masks, second.masks)
    assert all(r.noise_std is None and torch.equal(r.clean_logits, r.noisy_logits) for r in first.routing)
    model.train()
    noisy = model.predict(images=IMAGES, boxes=BOXES, image_index=INDEX)
    assert all(r.noise_std is not None and not torch.equal(r.clean_logits, r.noisy_logits) for r in noisy.routing)


def _train_step(model, optimiser):
    model.train()
    model.ppt.carrier_probability = 1.0
    out = model.predict(images=IMAGES, boxes=BOXES, image_index=INDEX, use_ppt=True,
                        carrier_class_ids=torch.zeros(3, dtype=torch.long))
    labels = (torch.rand(3, 1, 64, 64) > 0.5).float()
    loss = DiceBalanceLoss()(out, labels)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    return loss


@pytest.mark.parametrize("presence_head", [False, True])
def test_every_trainable_parameter_gets_a_gradient_and_no_frozen_one_does(presence_head):
    model = tiny_segmote(top_k=4, presence_head=presence_head)  # k = E: every expert is on every token's path
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(trainable, lr=1e-3)
    # The correction's last layer starts at zero (step 1 reaches it alone), then the experts' output layers
    # (step 2), then their first layers (step 3).
    for _ in range(3):
        _train_step(model, optimiser)
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters()
                      if n.startswith(("image_encoder.", "prompt_encoder.", "decoder.mask_decoder."))}


def test_frozen_backbone_stays_in_eval_and_batchnorm_does_not_move():
    model = tiny_segmote()
    bn = model.image_encoder.stem[1]
    before = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    frozen_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("image_encoder.")}
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    _train_step(model, optimiser)
    assert model.training and model.decoder.training and not model.image_encoder.training and not bn.training
    assert not model.decoder.mask_decoder.training
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert int(bn.num_batches_tracked) == before[2]
    for k, v in model.state_dict().items():
        if k.startswith("image_encoder."):
            assert torch.equal(v, frozen_before[k]), k


def test_unfrozen_decoder_trains_and_follows_the_mode():
    model = tiny_segmote(train_decoder=True).train()
    assert model.decoder.mask_decoder.training
    assert all(p.requires_grad for p in model.decoder.mask_decoder.parameters())
    assert not any(p.requires_grad for p in model.image_encoder.parameters())


def test_mask_carrier_pools_the_foreground():
    model = tiny_segmote().eval()
    masks = torch.zeros(2, 1, 64, 64)
    masks[0, :, 8:24, 8:24] = 1
    carriers = model.mask_carrier(masks)
    assert carriers.shape == (2, 32)
    assert torch.equal(carriers[1], torch.zeros(32))
    dense = model.prompt_encoder(points=None, boxes=None, masks=masks[:1])[1]
    torch.testing.assert_close(carriers[0], dense[0, :, 2:6, 2:6].mean(dim=(1, 2)))


def test_carriers_only_in_training_with_probability():
    model = tiny_segmote()
    masks = torch.ones(2, 1, 64, 64)
    model.eval()
    model.ppt.carrier_probability = 1.0
    assert model._carriers(2, masks, None) is None
    model.train()
    model.ppt.carrier_probability = 0.0
    assert model._carriers(2, masks, None) is None
    model.ppt.carrier_probability = 1.0
    torch.testing.assert_close(model._carriers(2, masks, None), model.mask_carrier(masks))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"boxes": BOXES}, r"3 prompts for 2 images: give image_index"),
        ({"boxes": BOXES, "image_index": torch.tensor([0, 1])}, r"image_index must be \[3\], got \[2\]"),
        ({"boxes": BOXES, "image_index": torch.tensor([0, 1, 2])}, r"image_index values must be in \[0, 1\], got \[0, 2\]"),
        ({"boxes": BOXES[:, :3]}, r"boxes must be \[N, 4\], got \[3, 3\]"),
        ({"points": POINTS}, "points need point_labels"),
        ({"points": POINTS, "point_labels": POINT_LABELS[:, :1]}, r"points must be \[N, P, 2\]"),
        ({"boxes": BOXES[:2], "points": POINTS, "point_labels": POINT_LABELS},
         r"boxes and points must have the same number of prompts, got \[2, 3\]"),
    ],
)
def test_bad_prompts(kwargs, message):
    model = tiny_segmote().eval()
    with pytest.raises(ValueError, match=message):
        model.predict(images=IMAGES, **kwargs)


def test_bad_inputs():
    model = tiny_segmote().eval()
    with pytest.raises(ValueError, match="give exactly one of images or image_embeddings"):
        model.predict()
    with pytest.raises(ValueError, match=r"images must be \[B, 3, 64, 64\], got \[2, 1, 64, 64\]"):
        model.predict(images=IMAGES[:, :1])
    with pytest.raises(ValueError, match=r"ppt_beside_prompts needs PPT \(num_ppt_queries > 0\)"):
        tiny_segmote(num_ppt_queries=0, ppt_beside_prompts=True)
    with pytest.raises(ValueError, match=r"use_ppt=True but this model has no PPT"):
        tiny_segmote(num_ppt_queries=0).predict(images=IMAGES, use_ppt=True)
    model.train()
    model.ppt.carrier_probability = 0.5
    with pytest.raises(ValueError, match="training with carrier_probability=0.5 needs carrier_masks or carrier_class_ids"):
        model.predict(images=IMAGES)


def test_constructor_types():
    from segmote_monai.networks import SegMoTE

    model = tiny_segmote()
    with pytest.raises(TypeError, match="decoder must be a MoTEMaskDecoder, got Linear"):
        SegMoTE(image_encoder=model.image_encoder, prompt_encoder=model.prompt_encoder, decoder=torch.nn.Linear(1, 1),
                backbone_name="tiny", backbone_sha256="x")


@pytest.mark.parametrize("index", [[1, 0], [0, 0, 1], [0, 1]])
def test_prompt_free_rows_follow_image_index(index):
    """Rows in image order read the embeddings directly, others through a gathered copy: the same masks."""
    model = tiny_segmote().eval()
    embeddings = model.embed_images(IMAGES)
    with torch.no_grad():
        per_image = model.predict(image_embeddings=embeddings).masks
        rows = model.predict(image_embeddings=embeddings, image_index=torch.tensor(index)).masks
    torch.testing.assert_close(rows, per_image[index], rtol=1e-5, atol=1e-5)


def test_prompt_free_without_ppt_decodes_with_no_prompt_tokens():
    model = tiny_segmote(num_ppt_queries=0).eval()
    assert model(IMAGES).shape == (2, 1, 64, 64)


def test_class_ids_condition_prompt_free_and_boxed_rows():
    """One image, three rows: classes 1 and 2 prompt-free differ; a box with its class differs from the plain box."""
    model = tiny_segmote(num_condition_classes=3).eval()
    embeddings = model.embed_images(IMAGES[:1])
    with torch.no_grad():
        free = model.predict(image_embeddings=embeddings, image_index=torch.zeros(3, dtype=torch.long),
                             class_ids=torch.tensor([1, 2, 1])).masks
        boxed = model.predict(image_embeddings=embeddings, boxes=BOXES[:1]).masks
        boxed_class = model.predict(image_embeddings=embeddings, boxes=BOXES[:1], class_ids=torch.tensor([1])).masks
        boxed_ppt = model.predict(image_embeddings=embeddings, boxes=BOXES[:1], use_ppt=True).masks
    torch.testing.assert_close(free[0], free[2])
    assert not torch.allclose(free[0], free[1])
    assert not torch.allclose(boxed, boxed_class) and not torch.allclose(boxed_class, boxed_ppt)
    assert model.class_conditioned and not tiny_segmote().class_conditioned
    assert model.config()["num_condition_classes"] == 3


def test_class_ids_refusals():
    with pytest.raises(ValueError, match=r"class_ids need PPT tokens with class conditioning"):
        tiny_segmote().predict(images=IMAGES, class_ids=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"class_ids must be \[2\], got \[3\]"):
        tiny_segmote(num_condition_classes=2).predict(images=IMAGES, class_ids=torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match=r"num_condition_classes=2 needs PPT \(num_ppt_queries > 0\)"):
        tiny_segmote(num_ppt_queries=0, num_condition_classes=2)
