from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from monai.data import MetaTensor

from segmote_monai.errors import RequestError
from segmote_monai.inferers import PromptedSliceInferer, SliceSegmenter
from segmote_monai.inferers.auto_seeds import auto_seeds
from segmote_monai.transforms.prompts import PROMPTS_META_KEY
from tests.inferers.test_propagation import ObjectInBox

ORGAN_VALUES = {1: 1.0, 2: 0.7}


def _volume() -> torch.Tensor:
    """[1, 64, 64, 10]: organ 1 (intensity 1.0) on slices 2-6, organ 2 (0.7) on slices 5-8, apart in the plane."""
    image = torch.zeros(1, 64, 64, 10)
    image[0, 10:24, 8:22, 2:7] = ORGAN_VALUES[1]
    image[0, 34:46, 40:50, 5:9] = ORGAN_VALUES[2]
    return image


class ClassFinder(ObjectInBox):
    """A stand-in class-conditioned SegMoTE. Prompt-free, class ``c`` gets a confident mask (logit 3) on the pixels
    of its intensity and, on every slice, a faint one (logit 0.2) on a decoy strip: the false positives of the real
    model on slices without the organ. With a box: the bright pixels inside it (logit 1), as :class:`ObjectInBox`."""

    class_conditioned = True
    ppt = True  # prompt-free use allowed

    def predict(self, *, image_embeddings, boxes=None, image_index=None, class_ids=None):
        if boxes is not None:
            return super().predict(image_embeddings=image_embeddings, boxes=boxes)
        masks = -torch.ones(len(class_ids), 1, 64, 64)
        for row, (i, c) in enumerate(zip(image_index.tolist(), class_ids.tolist())):
            masks[row, 0, 54:62, 2:12] = 0.2
            masks[row, 0][(image_embeddings[i, 0] - ORGAN_VALUES[c]).abs() < 0.05] = 3.0
        return SimpleNamespace(masks=masks, iou_predictions=torch.ones(len(class_ids), 1), presence_logits=None)


@pytest.mark.parametrize("seed_margin,boxes", [
    (0.0, [(7.0, 9.0, 22.0, 24.0), (39.0, 33.0, 50.0, 46.0)]),  # at least a pixel, as propagation's boxes
    (0.1, [(6.6, 8.6, 22.4, 24.4), (39.0, 32.8, 50.0, 46.2)]),
    (0.5, [(1.0, 3.0, 28.0, 30.0), (35.0, 28.0, 54.0, 51.0)]),
])
def test_each_class_seeds_on_a_slice_it_is_on_with_the_widened_box_of_its_confident_part(seed_margin, boxes):
    model = ClassFinder()
    embeddings: dict[int, torch.Tensor] = {}
    seeds = auto_seeds(SliceSegmenter(model, backbone="tiny"), _volume(), [1, 2], seed_margin=seed_margin,
                       embeddings=embeddings)
    assert [(s.class_id, s.slice) for s in seeds] == [(1, 2), (2, 5)]  # organs' pixels: 8-21 x 10-23, 40-49 x 34-45
    assert [v for s in seeds for v in s.box] == pytest.approx([v for box in boxes for v in box])
    assert sorted(embeddings) == list(range(10)) and model.encoded == 10


def test_a_pixel_two_classes_claim_goes_to_the_surer_one():
    class Overclaiming(ClassFinder):
        """Class 2 also claims organ 1's pixels, less surely (logit 1 against class 1's 3)."""

        def predict(self, **kwargs):
            out = super().predict(**kwargs)
            if kwargs.get("class_ids") is not None:
                organ_1 = (kwargs["image_embeddings"][0, 0] - ORGAN_VALUES[1]).abs() < 0.05
                for row in torch.where(kwargs["class_ids"] == 2)[0].tolist():
                    out.masks[row, 0][organ_1] = 1.0
            return out

    seeds = auto_seeds(SliceSegmenter(Overclaiming(), backbone="tiny"), _volume(), [1, 2], seed_margin=0.0)
    # claiming organ 1 too, class 2's mask would be largest on slices 5-6 and half as large on 2-4, the first of
    # which (all as sure) would win: a seed on organ 1
    assert [(s.class_id, s.slice, s.box) for s in seeds][1] == (2, 5, (39.0, 33.0, 50.0, 46.0))


def test_the_key_slice_is_the_one_whose_neighbourhood_the_model_is_surest_of():
    class Unsure(ClassFinder):
        """Predicted IoU of every class on a slice: the slice's corner pixel."""

        def predict(self, **kwargs):
            out = super().predict(**kwargs)
            if kwargs.get("class_ids") is not None:
                out.iou_predictions[:] = kwargs["image_embeddings"][0, 0, 63, 63]
            return out

    image = _volume()
    image[0, 63, 63] = torch.tensor([0.1, 0.1, 0.9, 0.2, 0.6, 0.6, 0.6, 0.1, 0.1, 0.1])
    seeds = auto_seeds(SliceSegmenter(Unsure(), backbone="tiny"), image, [1])
    # slice 2 alone is surest (0.9), but between slices 1 and 3 (0.1, 0.2); slices 4-6 are sure together
    assert seeds[0].slice == 5


class EdgeFinder(ObjectInBox):
    """A stand-in class-conditioned SegMoTE for one class. Prompt-free: a mask on the organ's pixels (1.0) and, on
    slices flagged by pixel (63, 0), on a decoy structure's (0.8) too; its predicted IoU is pixel (63, 63). With a
    box: the bright pixels inside it, as :class:`ObjectInBox` (decoy included: both are bright)."""

    class_conditioned = True
    ppt = True

    def predict(self, *, image_embeddings, boxes=None, image_index=None, class_ids=None):
        if boxes is not None:
            return super().predict(image_embeddings=image_embeddings, boxes=boxes)
        e = image_embeddings[0, 0]
        claimed = ((e - 1.0).abs() < 0.05) | (((e - 0.8).abs() < 0.05) & bool(e[63, 0] > 0.2))
        masks = -torch.ones(1, 1, 64, 64)
        masks[0, 0][claimed] = 3.0
        return SimpleNamespace(masks=masks, iou_predictions=e[63, 63].reshape(1, 1), presence_logits=None)


def test_of_two_key_slices_the_one_whose_walk_lies_on_the_prompt_free_masks_seeds():
    image = torch.zeros(1, 64, 64, 10)
    image[0, 40:53, 40:51, 0:9] = 0.8  # a decoy structure on slices 0-8, 13 x 11 pixels
    image[0, 10:25, 8:23, 8:10] = 1.0  # the organ, at the volume's edge: slices 8-9, 15 x 15 pixels
    image[0, 63, 0, 7] = 0.3  # slice 7: the prompt-free mask lies on the decoy (143 pixels, eligible: >= 225 / 2)
    image[0, 63, 63] = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.6, 0.6, 0.6, 0.55])
    # surest neighbourhood: slice 7 (0.600, against 0.583 and 0.575); weighted by the mask's share of the
    # largest: slice 8 (0.583, against 0.381 for 7). The walk from 7 follows the decoy over slices 0-8 (Dice 0.15
    # with the prompt-free masks), the walk from 8 the organ (0.86).
    seeds = auto_seeds(SliceSegmenter(EdgeFinder(), backbone="tiny"), image, [1], seed_margin=0.0)
    assert [(s.slice, s.box) for s in seeds] == [(8, (7.0, 9.0, 23.0, 25.0))]  # organ: 8-22 x 10-24


def test_the_inferer_segments_a_volume_automatically_from_propagated_seeds_and_encodes_each_slice_once():
    image = MetaTensor(_volume()[None])
    image.meta[PROMPTS_META_KEY] = None
    model = ClassFinder()
    inferer = PromptedSliceInferer(backbone="tiny", auto_classes=[1, 2])
    out = inferer(image, model)[0, 0]
    truth = torch.zeros(64, 64, 10, dtype=torch.long)
    truth[_volume()[0] == ORGAN_VALUES[1]] = 1
    truth[_volume()[0] == ORGAN_VALUES[2]] = 2
    assert torch.equal(out.long(), truth)  # no decoy strip: the per-slice masks would have it on every slice
    assert inferer.last_reached == {1: [2, 3, 4, 5, 6], 2: [5, 6, 7, 8]}
    assert model.encoded == 10
    per_slice = PromptedSliceInferer(backbone="tiny", auto_classes=[1, 2], auto_propagate=False)(image, ClassFinder())
    assert bool((per_slice[0, 0, 54:62, 2:12] > 0).all())
    with pytest.raises(RequestError, match="min_area_fraction must be in"):  # refused before any image is read
        PromptedSliceInferer(backbone="tiny", auto_classes=[1, 2], auto_min_area_fraction=2.0)
    with pytest.raises(RequestError, match="seed_margin must be in"):
        PromptedSliceInferer(backbone="tiny", auto_classes=[1, 2], auto_seed_margin=1.5)
    with pytest.raises(RequestError, match=r"prompt_free_agreement must be in \[0, 1\] \(or null\), got 2"):
        PromptedSliceInferer(backbone="tiny", auto_classes=[1, 2], prompt_free_agreement=2)
    with pytest.raises(RequestError, match=r"prompt_free_rebox must be in \[0, 1\] \(or null\), got -1"):
        PromptedSliceInferer(backbone="tiny", auto_classes=[1, 2], prompt_free_rebox=-1)


def test_a_class_found_nowhere_gets_no_seed():
    image = _volume()
    image[image == ORGAN_VALUES[2]] = 0.0

    class Faint(ClassFinder):
        def predict(self, **kwargs):
            out = super().predict(**kwargs)
            if kwargs.get("class_ids") is not None:
                out.masks[kwargs["class_ids"] == 2] = -1.0  # nothing at all for class 2
            return out

    seeds = auto_seeds(SliceSegmenter(Faint(), backbone="tiny"), image, [1, 2])
    assert [s.class_id for s in seeds] == [1]


@pytest.mark.parametrize("kwargs,message", [
    ({"classes": []}, "at least one class"),
    ({"min_area_fraction": 1.5}, r"auto_min_area_fraction must be in \[0, 1\], got 1.5"),
    ({"seed_margin": -0.1}, r"auto_seed_margin must be in \[0, 1\], got -0.1"),
])
def test_refusals(kwargs, message):
    arguments = {"classes": [1], **kwargs}
    with pytest.raises(ValueError, match=message):
        auto_seeds(SliceSegmenter(ClassFinder(), backbone="tiny"), _volume(), arguments.pop("classes"), **arguments)


def test_a_model_without_class_conditioning_is_refused():
    model = ClassFinder()
    model.class_conditioned = False
    with pytest.raises(ValueError, match="class-conditioned model"):
        auto_seeds(SliceSegmenter(model, backbone="tiny"), _volume(), [1])
