from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from segmote_monai.data.cache import EmbeddingCache
from segmote_monai.inferers import PromptedSliceInferer, SliceSegmenter, merge_masks, prompts_from_label
from tests.conftest import tiny_segmote


class BoxPainter(torch.nn.Module):
    """A stand-in SegMoTE: each prompt's mask logit is (1 + its row) inside its box, -1 outside."""

    img_size = 64

    def __init__(self):
        super().__init__()
        self.decoder = torch.nn.Linear(1, 1)
        self.calls = 0

    def embed_images(self, images):
        self.calls += len(images)
        return images[:, :1]

    def predict(self, *, image_embeddings, boxes=None, image_index=None):
        if boxes is None:
            return SimpleNamespace(presence_logits=None, masks=torch.where(image_embeddings > 0.5, 1.0, -1.0))
        masks = -torch.ones(len(boxes), 1, 64, 64)
        for row, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
            masks[row, 0, y0:y1 + 1, x0:x1 + 1] = 1.0 + row
        return SimpleNamespace(presence_logits=None, masks=masks)


def _label_volume():
    label = torch.zeros(1, 32, 48, 5, dtype=torch.long)  # [1, H, W, S], not square: exercises the padding
    label[0, 4:12, 6:20, 1] = 1
    label[0, 8:20, 14:30, 1] = 2  # overlaps class 1's box: class 1's is smaller, class 2's logit higher
    label[0, 20:30, 30:44, 3] = 2
    return label


@pytest.mark.parametrize("overlap, overlap_class", [("smaller", 1), ("logit", 2)])
def test_boxes_map_back_to_the_slice_and_the_overlap_rule_decides(overlap, overlap_class):
    label = _label_volume()
    prompts = prompts_from_label(label, [1, 2])
    assert [len(b) for b, _ in prompts] == [0, 2, 0, 1, 0]
    model = BoxPainter()
    pred = SliceSegmenter(model, backbone="tiny", batch_size=2, overlap=overlap)(torch.rand(1, 32, 48, 5), prompts)
    assert pred.shape == (1, 32, 48, 5) and pred.dtype == torch.uint8
    expected = torch.zeros_like(label)
    expected[0, 4:12, 6:20, 1] = 1
    expected[0, 8:20, 14:30, 1] = 2
    expected[0, 8:12, 14:20, 1] = overlap_class
    expected[0, 20:30, 30:44, 3] = 2
    assert (pred != expected).float().mean() < 0.01  # box edges resampled 48 -> 64 -> 48
    assert model.calls == 2  # only slices with prompts are encoded


def test_prompt_free_gives_the_binary_class_and_2d_stays_2d():
    model = BoxPainter()
    image = torch.zeros(1, 40, 40)
    image[0, 10:20, 5:30] = 1.0
    pred = SliceSegmenter(model, backbone="tiny")(image, None, prompt_free_class=3)
    assert pred.shape == (1, 40, 40)
    assert set(torch.unique(pred).tolist()) == {0, 3}
    assert (pred[0, 10:20, 5:30] == 3).float().mean() > 0.95


def _parts_volume():
    """[1, 64, 64, 3]: slice 0 holds an L (box x 5-34, y 10-29) and a 3 x 3 speck, slice 1 nothing, slice 2 a
    rectangle; BoxPainter's prompt-free mask is the bright part of the image."""
    image = torch.zeros(1, 64, 64, 3)
    image[0, 10:30, 5:15, 0] = image[0, 25:30, 5:35, 0] = 1.0
    image[0, 50:53, 50:53, 0] = 1.0
    image[0, 40:45, 20:40, 2] = 1.0
    return image


@pytest.mark.parametrize("refine", [None, 0.0, 0.5])
def test_prompt_free_refine_decodes_each_large_enough_part_with_its_own_box(refine):
    image = _parts_volume()
    pred = SliceSegmenter(BoxPainter(), backbone="tiny", batch_size=2)(image, None, prompt_free_refine=refine)
    expected = (image > 0.5).to(torch.uint8)
    if refine is not None:
        expected[0, 10:30, 5:35, 0] = 1  # the L's box, filled by the painter
        expected[0, 50:53, 50:53, 0] = int(refine == 0.0)  # the speck is 9 pixels, the L 225
    assert torch.equal(pred, expected)


def test_prompt_free_refine_is_refused_outside_0_1():
    with pytest.raises(ValueError, match=r"prompt_free_refine must be in \[0, 1\] \(or null\), got 2"):
        SliceSegmenter(BoxPainter(), backbone="tiny")(_parts_volume(), None, prompt_free_refine=2)


class ClassPainter(BoxPainter):
    """A stand-in class-conditioned SegMoTE: prompt-free class k paints rows [4k, 4k + 4) of every slice; class 9
    is never found."""

    class_conditioned = True

    def predict(self, *, image_embeddings, image_index=None, class_ids=None, boxes=None):
        if class_ids is None:
            return super().predict(image_embeddings=image_embeddings, boxes=boxes, image_index=image_index)
        masks = -torch.ones(len(class_ids), 1, 64, 64)
        for row, c in enumerate(class_ids.tolist()):
            if c != 9:
                masks[row, 0, 4 * c: 4 * c + 4] = 1.0
        return SimpleNamespace(presence_logits=None, masks=masks)


def test_automatic_multi_class_asks_for_every_class_on_every_slice():
    model = ClassPainter()
    pred, own = SliceSegmenter(model, backbone="tiny", batch_size=2)(
        torch.rand(1, 64, 64, 3), None, auto_classes=[1, 2, 9], class_masks=True)
    assert pred.shape == (1, 64, 64, 3) and model.calls == 3
    expected = torch.zeros(1, 64, 64, 3, dtype=torch.uint8)
    expected[0, 4:8], expected[0, 8:12] = 1, 2
    assert torch.equal(pred, expected)
    assert sorted(own) == [1, 2, 9] and not own[9].any() and torch.equal(own[2], expected == 2)


class PieceClassPainter(ClassPainter):
    """Prompt-free class k finds two pieces of its box [4k, 4k + 4) x [0, 30): rows 4k, 4k + 1 in columns [0, 10) and
    rows 4k + 2, 4k + 3 in columns [20, 30); a box prompt fills its box (BoxPainter)."""

    def predict(self, *, image_embeddings, image_index=None, class_ids=None, boxes=None):
        if class_ids is None or boxes is not None:
            return super().predict(image_embeddings=image_embeddings, boxes=boxes, image_index=image_index)
        masks = -torch.ones(len(class_ids), 1, 64, 64)
        for row, c in enumerate(class_ids.tolist()):
            if c != 9:
                masks[row, 0, 4 * c: 4 * c + 2, 0:10] = 1.0
                masks[row, 0, 4 * c + 2: 4 * c + 4, 20:30] = 1.0
        return SimpleNamespace(presence_logits=None, masks=masks)


@pytest.mark.parametrize("refine", [False, True])
def test_auto_refine_decodes_what_was_found_again_with_its_tight_box(refine):
    pred = SliceSegmenter(PieceClassPainter(), backbone="tiny", batch_size=2)(
        torch.rand(1, 64, 64, 2), None, auto_classes=[1, 9], auto_refine=refine)
    expected = torch.zeros(1, 64, 64, 2, dtype=torch.uint8)
    if refine:
        expected[0, 4:8, 0:30] = 1
    else:
        expected[0, 4:6, 0:10], expected[0, 6:8, 20:30] = 1, 1
    assert torch.equal(pred, expected)


class PartsClassPainter(ClassPainter):
    """Prompt-free class id k (k mod 10: offsets aside) finds, on slices whose image is bright, an L in rows
    [8k, 8k + 6) x columns [0, 10) (its box) and a one-pixel speck at (8k, 40); class 9 nothing. A box prompt fills
    its box; each box call's image indices and class ids are recorded."""

    def __init__(self):
        super().__init__()
        self.box_calls = []

    def predict(self, *, image_embeddings, image_index=None, class_ids=None, boxes=None):
        if boxes is not None:
            self.box_calls.append((image_index.tolist(), None if class_ids is None else class_ids.tolist()))
            return BoxPainter.predict(self, image_embeddings=image_embeddings, boxes=boxes, image_index=image_index)
        masks = -torch.ones(len(class_ids), 1, 64, 64)
        for row, (c, i) in enumerate(zip((class_ids % 10).tolist(), image_index.tolist())):
            if c != 9 and image_embeddings[i].mean() > 0.5:
                masks[row, 0, 8 * c: 8 * c + 6, 0:2] = masks[row, 0, 8 * c + 5, 0:10] = 1.0
                masks[row, 0, 8 * c, 40] = 1.0
        return SimpleNamespace(presence_logits=None, masks=masks)


@pytest.mark.parametrize("refine", [None, 0.0, 0.5])
def test_prompt_free_refine_reboxes_each_classs_parts_in_automatic_mode_with_its_class(refine):
    image = torch.ones(1, 64, 64, 3)
    image[..., 1] = 0.0  # nothing found on the middle slice
    model = PartsClassPainter()
    pred = SliceSegmenter(model, backbone="tiny", batch_size=2)(
        image, None, auto_classes=[1, 2, 9], prompt_free_refine=refine, class_offset=10)
    expected = torch.zeros(1, 64, 64, 3, dtype=torch.uint8)
    for c in (1, 2):
        if refine is None:
            expected[0, 8 * c: 8 * c + 6, 0:2], expected[0, 8 * c + 5, 0:10] = c, c
        else:
            expected[0, 8 * c: 8 * c + 6, 0:10] = c  # the L's box, filled by the painter
        expected[0, 8 * c, 40] = c if refine in (None, 0.0) else 0  # the speck: 1 pixel against the L's 20
    expected[..., 1] = 0
    assert torch.equal(pred, expected)
    if refine is None:
        assert model.box_calls == []
    else:
        # slices 0 and 1 share a batch (rows of image 0 only), slice 2 is alone; class 9 found nothing
        parts = 2 if refine == 0.0 else 1
        told = [c + 10 for c in (1, 2) for _ in range(parts)]
        assert model.box_calls == [([0] * 2 * parts, told), ([0] * 2 * parts, told)]


class AbsentOnSecondSlice(PieceClassPainter):
    """PieceClassPainter with a presence head that finds class 2 absent from the second image of a batch."""

    def predict(self, *, image_embeddings, image_index=None, class_ids=None, boxes=None):
        out = super().predict(image_embeddings=image_embeddings, image_index=image_index, class_ids=class_ids,
                              boxes=boxes)
        if class_ids is not None and boxes is None:
            absent = (class_ids == 2) & (image_index == 1)
            out.presence_logits = torch.where(absent, -1.0, 1.0).unsqueeze(1)
        return out


@pytest.mark.parametrize("presence", [True, False])
def test_auto_presence_empties_a_class_the_head_finds_absent(presence):
    pred = SliceSegmenter(AbsentOnSecondSlice(), backbone="tiny", batch_size=2)(
        torch.rand(1, 64, 64, 2), None, auto_classes=[1, 2], auto_presence=presence)
    assert bool((pred[..., 0] == 2).any()) and bool((pred[..., 1] == 1).any())
    assert bool((pred[..., 1] == 2).any()) == (not presence)


def test_real_network_and_cache(tmp_path):
    model = tiny_segmote(num_ppt_queries=0)
    cache = EmbeddingCache.for_model(tmp_path, model, {"size": 64})
    label = _label_volume()
    prompts = prompts_from_label(label, [1, 2], jitter=0.1, seed=1)
    image = torch.rand(1, 32, 48, 5)
    first = SliceSegmenter(model, backbone="tiny", cache=cache)(image, prompts)
    second = SliceSegmenter(model, backbone="tiny", cache=cache)(image, prompts)
    assert torch.equal(first, second) and cache.hits == 2 and cache.misses == 2


def test_slice_embedding_encodes_a_slice_once_and_keeps_it():
    model = BoxPainter()
    segmenter = SliceSegmenter(model, backbone="tiny")
    slices = torch.rand(3, 1, 32, 48)
    embeddings = {2: torch.zeros(1, 1, 64, 64)}
    first = segmenter.slice_embedding(slices, 0, embeddings)
    assert model.calls == 1 and sorted(embeddings) == [0, 2] and first.shape == (1, 1, 64, 64)
    assert segmenter.slice_embedding(slices, 0, embeddings) is first and model.calls == 1
    assert segmenter.slice_embedding(slices, 2, embeddings) is embeddings[2] and model.calls == 1  # given: not encoded


def test_prompts_must_cover_every_slice():
    with pytest.raises(ValueError, match="prompts for 2 slices, the image has 5"):
        SliceSegmenter(BoxPainter(), backbone="tiny")(torch.rand(1, 32, 48, 5), [(torch.zeros(0, 4), torch.zeros(0))] * 2)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        SliceSegmenter(BoxPainter(), backbone="tiny", batch_size=0)
    with pytest.raises(ValueError, match=r"overlap must be one of \['smaller', 'logit'\], got 'largest'"):
        SliceSegmenter(BoxPainter(), backbone="tiny", overlap="largest")


def _wall_and_cavity():
    """A myocardium-like wall whose mask also covers the cavity (logit 3), and the cavity's own mask (logit 1)."""
    wall = torch.full((20, 20), -1.0)
    wall[2:18, 2:18] = 3.0
    cavity = torch.full((20, 20), -1.0)
    cavity[6:14, 6:14] = 1.0
    return torch.stack([wall, cavity]), torch.tensor([2, 1])


def test_smaller_mask_keeps_a_nested_structure_that_the_highest_logit_loses():
    logits, classes = _wall_and_cavity()
    smaller = merge_masks(logits, classes, rule="smaller")
    assert (smaller[6:14, 6:14] == 1).all() and smaller.eq(1).sum() == 64
    assert smaller.eq(2).sum() == 16 * 16 - 64 and smaller.eq(0).sum() == 400 - 256
    highest = merge_masks(logits, classes, rule="logit")
    assert highest.eq(1).sum() == 0 and highest.eq(2).sum() == 256


@pytest.mark.parametrize("rule", ["smaller", "logit"])
def test_merge_without_overlap_does_not_depend_on_the_rule(rule):
    logits = torch.full((2, 8, 8), -2.0)
    logits[0, :4] = 0.5
    logits[1, 5:] = 4.0
    merged = merge_masks(logits, torch.tensor([7, 3]), rule=rule)
    assert merged[:4].eq(7).all() and merged[4].eq(0).all() and merged[5:].eq(3).all()


@pytest.mark.parametrize("logits, classes, rule, message", [
    (torch.zeros(2, 4, 4), torch.tensor([1, 2]), "area", r"overlap rule must be one of \['smaller', 'logit'\], got 'area'"),
    (torch.zeros(2, 4, 4), torch.tensor([1]), "smaller", r"expected logits \[K, H, W\] and K class ids, got \(2, 4, 4\) and 1"),
    (torch.zeros(4, 4), torch.tensor([1]), "smaller", r"expected logits \[K, H, W\] and K class ids, got \(4, 4\) and 1"),
])
def test_merge_rejects_bad_arguments(logits, classes, rule, message):
    with pytest.raises(ValueError, match=message):
        merge_masks(logits, classes, rule=rule)


def test_label_values_past_255_get_a_wider_dtype():
    label = _label_volume() * 150  # classes 150 and 300
    pred = SliceSegmenter(BoxPainter(), backbone="tiny")(torch.rand(1, 32, 48, 5), prompts_from_label(label, [150, 300]))
    assert pred.dtype == torch.int32 and set(pred.unique().tolist()) == {0, 150, 300}


def _with_prompts(image, prompts):
    from monai.data import MetaTensor

    from segmote_monai.transforms import PROMPTS_META_KEY

    image = MetaTensor(image)
    image.meta[PROMPTS_META_KEY] = prompts
    return image


@pytest.mark.parametrize("refine", [None, 0.0, 0.5])
def test_prompted_inferer_refines_a_binary_models_prompt_free_masks(refine):
    model = BoxPainter()
    model.ppt = torch.nn.Identity()  # a binary model with PPT
    image = _parts_volume()
    out = PromptedSliceInferer(backbone="tiny", prompt_free_refine=refine)(_with_prompts(image, None)[None], model)
    assert torch.equal(out[0], SliceSegmenter(model, backbone="tiny")(image, None, prompt_free_refine=refine))


@pytest.mark.parametrize("refine", [None, 0.5])
def test_prompted_inferer_refines_the_automatic_masks_of_a_2d_image(refine):
    model = PartsClassPainter()
    model.ppt = torch.nn.Identity()
    image = torch.ones(1, 64, 64)
    out = PromptedSliceInferer(backbone="tiny", auto_classes=[1, 2], prompt_free_refine=refine)(
        _with_prompts(image, None)[None], model)
    expected = SliceSegmenter(PartsClassPainter(), backbone="tiny")(image, None, auto_classes=[1, 2],
                                                                    prompt_free_refine=refine)
    assert torch.equal(out[0], expected) and bool(expected[0, 8, 40] == 1) == (refine is None)
    # a volume's per-slice automatic masks stay as the model gives them (BENCHMARKS.md, section auto_refine)
    volume = torch.ones(1, 64, 64, 2)
    out = PromptedSliceInferer(backbone="tiny", auto_classes=[1, 2], auto_propagate=False, prompt_free_refine=refine)(
        _with_prompts(volume, None)[None], model)
    assert torch.equal(out[0], SliceSegmenter(PartsClassPainter(), backbone="tiny")(volume, None, auto_classes=[1, 2]))


def test_the_inferers_default_refines_at_half_the_largest_part():
    assert PromptedSliceInferer(backbone="tiny").prompt_free_refine == 0.5  # as the bundle's inference.json


def test_prompted_inferer_is_the_slice_segmenter_behind_monais_inferer_call():
    """MONAI Label calls ``inferer(inputs, network)`` with the batched image: the prompts ride in its meta."""
    from segmote_monai.inferers import PromptedSliceInferer

    image, label = torch.rand(1, 32, 48, 5), _label_volume()
    prompts = prompts_from_label(label, [1, 2])
    inputs = _with_prompts(image, prompts)[None]  # [1, C, H, W, S], as MONAI Label batches it
    out = PromptedSliceInferer(backbone="tiny")(inputs, BoxPainter())
    assert out.shape == (1, 1, 32, 48, 5)
    assert torch.equal(out[0], SliceSegmenter(BoxPainter(), backbone="tiny")(image, prompts))


@pytest.mark.parametrize(
    "inputs,message",
    [
        (torch.rand(1, 1, 32, 48, 5), "carries no prompts"),
        (_with_prompts(torch.rand(2, 1, 32, 48, 5), None), r"expected one image \[1, C, H, W\(, S\)\]"),
        (_with_prompts(torch.rand(1, 1, 32, 48, 5), None), "prompt-free use needs a model trained with PPT"),
    ],
    ids=["no-prompts", "batch-of-two", "prompt-free-without-ppt"],
)
def test_prompted_inferer_refusals(inputs, message):
    from segmote_monai.inferers import PromptedSliceInferer

    model = BoxPainter()
    model.ppt = None
    with pytest.raises(ValueError, match=message):
        PromptedSliceInferer(backbone="tiny")(inputs, model)


@pytest.mark.parametrize("kwargs,message", [({"overlap": "largest"}, "overlap must be one of"),
                                            ({"batch_size": 0}, "batch_size must be >= 1"),
                                            ({"prompt_free_refine": 1.5},
                                             r"prompt_free_refine must be in \[0, 1\] \(or null\), got 1.5")])
def test_prompted_inferer_arguments(kwargs, message):
    from segmote_monai.inferers import PromptedSliceInferer

    with pytest.raises(ValueError, match=message):
        PromptedSliceInferer(backbone="tiny", **kwargs)
