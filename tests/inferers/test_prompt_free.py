from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from monai.data import MetaTensor

from segmote_monai.inferers import PromptedSliceInferer, SliceSegmenter
from segmote_monai.inferers.prompt_free import PromptFreeMasks, second_opinion
from segmote_monai.transforms.prompts import PROMPTS_META_KEY, PROPAGATION_META_KEY, PropagationSeed
from tests.inferers.test_auto_seeds import ClassFinder
from tests.inferers.test_auto_seeds import _volume as _two_organs
from tests.inferers.test_propagation import ObjectInBox, _shifted
from tests.inferers.test_propagation import _volume as _walked


def test_masks_are_decoded_on_the_slices_read_once_for_every_class_and_exclusive():
    model = ClassFinder()
    embeddings: dict[int, torch.Tensor] = {}
    masks = PromptFreeMasks(SliceSegmenter(model, backbone="tiny"), _two_organs(), [1, 2], embeddings=embeddings)
    assert list(masks) == [1, 2] and len(masks) == 2 and masks.get(3) is None and masks.decoded == []
    organ_2 = torch.zeros(64, 64, dtype=torch.bool)
    organ_2[34:46, 40:50] = True
    # the decoy strip both classes claim as faintly goes to the first: exclusive, class 2's mask is its organ alone
    assert torch.equal(masks[2][5], organ_2)
    assert masks[1][5][54:62, 2:12].all() and not (masks[1][5] & masks[2][5]).any()
    assert masks.decoded == [5] and sorted(embeddings) == [5] and model.encoded == 1
    masks[1][5]
    assert masks.decoded == [5] and model.encoded == 1
    embeddings[3] = torch.as_tensor(_two_organs())[None, :, :, :, 3]
    assert masks[1][3][10:24, 8:22].all() and model.encoded == 1  # an encoder output given is not recomputed


def test_masks_not_exclusive_decode_only_the_class_read_as_the_model_gives_it():
    model = ClassFinder()
    asked: list[list[int]] = []
    predict = model.predict

    def recording(**kwargs):
        if kwargs.get("class_ids") is not None:
            asked.append(kwargs["class_ids"].tolist())
        return predict(**kwargs)

    model.predict = recording
    masks = PromptFreeMasks(SliceSegmenter(model, backbone="tiny"), _two_organs(), [1, 2], embeddings={},
                            exclusive=False)
    organ_2 = torch.zeros(64, 64, dtype=torch.bool)
    organ_2[34:46, 40:50] = True
    organ_2[54:62, 2:12] = True  # the decoy strip, which the exclusive masks give to class 1
    assert torch.equal(masks[2][5], organ_2) and asked == [[2]] and masks.decoded == [5]
    masks[2][5]
    assert asked == [[2]]
    assert masks.on_slice(5)[0][54:62, 2:12].all() and asked == [[2], [1]] and masks.decoded == [5]


def test_a_model_without_class_prompts_is_refused():
    with pytest.raises(ValueError, match="need a class-conditioned model"):
        PromptFreeMasks(SliceSegmenter(ObjectInBox(), backbone="tiny"), _two_organs(), [1], embeddings={})
    with pytest.raises(ValueError, match="at least one class"):
        PromptFreeMasks(SliceSegmenter(ClassFinder(), backbone="tiny"), _two_organs(), [], embeddings={})


class BrightFinder(ObjectInBox):
    """A stand-in class-conditioned SegMoTE whose prompt-free mask of class 1 is every bright pixel of the slice;
    with a box, the bright pixels inside it (:class:`ObjectInBox`). Counts its prompt-free calls."""

    class_conditioned = True
    ppt = True

    def __init__(self):
        super().__init__()
        self.prompt_free_calls = 0

    def predict(self, *, image_embeddings, boxes=None, image_index=None, class_ids=None):
        if boxes is not None:
            return super().predict(image_embeddings=image_embeddings, boxes=boxes)
        self.prompt_free_calls += 1
        masks = -torch.ones(len(class_ids), 1, 64, 64)
        masks[:, 0][:, image_embeddings[0, 0] > 0.5] = 1.0
        return SimpleNamespace(masks=masks, iou_predictions=torch.ones(len(class_ids), 1), presence_logits=None)


@pytest.mark.parametrize("auto_classes,agreement,last,prompt_free_calls", [
    ([1], 0.3, 7, 1),  # the prompt-free mask on slice 7 vouches for the jump; decoded there alone
    ([1], 0.9, 6, 1),  # it agrees, but not enough
    ([1], None, 6, 0),  # no second opinion asked
    (None, 0.3, 6, 0),  # the inferer's model has no classes to ask for
])
def test_a_users_box_walk_takes_the_prompt_free_masks_as_a_second_opinion(auto_classes, agreement, last,
                                                                           prompt_free_calls):
    image = _walked()
    image[0, :, :, 7] = 0.0
    image[0, 17:40, 8:22, 7] = 1.0  # organ 1's jump of test_propagation's test_a_jump_stops_the_propagation
    image[0, 40:52, 40:50, 7] = 1.0  # organ 2, outside the walk's box: the prompt-free mask agrees by IoU 0.73
    volume = MetaTensor(image[None])
    volume.meta[PROMPTS_META_KEY] = [(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))] * 10
    volume.meta[PROPAGATION_META_KEY] = [PropagationSeed(1, 4, (8.0, 14.0, 21.0, 27.0))]
    model = BrightFinder()
    inferer = PromptedSliceInferer(backbone="tiny", auto_classes=auto_classes, prompt_free_agreement=agreement,
                                   propagation={"margin": 1.0, "min_overlap": 0.7, "max_growth": None,
                                                "max_shift": None})
    out = inferer(volume, model)
    assert inferer.last_reached[1] == list(range(2, last + 1))
    assert out[0, 0, :, :, 7].eq(1).sum() == (23 * 14 if last == 7 else 0)
    assert model.prompt_free_calls == prompt_free_calls
    assert model.encoded == len(range(1, last + 2))  # each slice tried once, its prompt-free mask read or not


class DoubtfulBrightFinder(BrightFinder):
    """:class:`BrightFinder` whose predicted IoU of a box's mask is the share of the slice's bright pixels it holds."""

    def predict(self, *, image_embeddings, boxes=None, image_index=None, class_ids=None):
        out = super().predict(image_embeddings=image_embeddings, boxes=boxes, image_index=image_index,
                              class_ids=class_ids)
        if boxes is not None:
            bright = (image_embeddings[0, 0] > 0.5).sum().clamp(min=1)
            out.iou_predictions = ((out.masks[:, 0] > 0).flatten(1).sum(1) / bright)[:, None]
        return out


@pytest.mark.parametrize("agreement,rebox,last,columns_on_6", [
    (0.3, 0.95, 6, 14),  # slice 6's mask holds 13 of the object's 14 columns, rated 13/14: the prompt-free box wins
    # the prompt-free box on slice 5 overlaps slice 4's mask by 9/17 columns < min_overlap, and with no agreement
    # asked for nothing vouches for it: the walk stops
    (None, 0.95, 4, 0),
    (0.3, None, 6, 11),  # the walk's own box, a pixel wider each slice
])
def test_a_users_3d_box_walk_takes_the_prompt_free_masks_box_where_the_model_doubts_its_own(agreement, rebox,
                                                                                          last, columns_on_6):
    image = _shifted()
    volume = MetaTensor(image[None])
    volume.meta[PROMPTS_META_KEY] = [(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))] * image.shape[-1]
    volume.meta[PROPAGATION_META_KEY] = [PropagationSeed(1, 4, (8.0, 20.0, 26.0, 33.0), 2, 6, within_box=True)]
    inferer = PromptedSliceInferer(backbone="tiny", auto_classes=[1], prompt_free_agreement=agreement,
                                   prompt_free_rebox=rebox,
                                   propagation={"max_growth": None, "max_shift": None, "taper": None})
    out = inferer(volume, DoubtfulBrightFinder())
    assert inferer.last_reached[1] == list(range(2, last + 1))
    assert out[0, 0, :, :, 6].eq(1).sum() == 14 * columns_on_6


@pytest.mark.parametrize("classes,agreement,rebox,keys", [
    ([1, 2], 0.3, 0.9, {"agree", "min_agreement", "rebox_below"}),
    ([1, 2], None, 0.9, {"agree", "min_agreement", "rebox_below"}),
    ([1, 2], None, None, set()),  # nothing asked of the prompt-free masks: none built
    (None, 0.3, 0.9, set()),  # a model without classes
])
def test_second_opinion_gives_propagate_the_prompt_free_masks_only_where_asked(classes, agreement, rebox, keys):
    segmenter = SliceSegmenter(ClassFinder(), backbone="tiny")
    opinion = second_opinion(segmenter, _two_organs(), classes, embeddings={}, agreement=agreement, rebox=rebox)
    assert set(opinion) == keys
    if keys:
        assert list(opinion["agree"]) == classes and opinion["agree"].decoded == []  # nothing decoded yet
        assert (opinion["min_agreement"], opinion["rebox_below"]) == (agreement, rebox)
