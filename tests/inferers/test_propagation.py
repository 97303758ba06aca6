from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from segmote_monai.inferers import SliceSegmenter
from segmote_monai.inferers.propagation import PropagationSeed, propagate


class ObjectInBox(torch.nn.Module):
    """A stand-in SegMoTE that segments the bright pixels inside each box (its mask logit +1 there, -1 elsewhere)."""

    img_size = 64

    def __init__(self):
        super().__init__()
        self.decoder = torch.nn.Linear(1, 1)
        self.encoded = 0

    def embed_images(self, images):
        self.encoded += len(images)
        return images[:, :1]

    def predict(self, *, image_embeddings, boxes):
        masks = -torch.ones(len(boxes), 1, 64, 64)
        for row, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
            inside = torch.zeros(64, 64, dtype=torch.bool)
            inside[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1] = True
            masks[row, 0][inside & (image_embeddings[0, 0] > 0.5)] = 1.0
        return SimpleNamespace(masks=masks, iou_predictions=torch.ones(len(boxes), 1))


def _volume():
    """[1, 64, 64, 10]: organ 1 on slices 2-6 (drifting one pixel a slice), organ 2 on slices 5-8; slice 9 holds
    a bright patch far from both."""
    image = torch.zeros(1, 64, 64, 10)
    for z in range(2, 7):
        image[0, 10 + z:24 + z, 8:22, z] = 1.0
    for z in range(5, 9):
        image[0, 40:52, 40:50, z] = 1.0
    image[0, 2:6, 50:60, 9] = 1.0
    return image


def test_propagation_walks_both_ways_until_the_structure_ends_and_encodes_each_slice_once():
    model = ObjectInBox()
    segmenter = SliceSegmenter(model, backbone="tiny")
    seeds = [PropagationSeed(1, 4, (8.0, 14.0, 21.0, 27.0)), PropagationSeed(2, 6, (40.0, 40.0, 49.0, 51.0))]
    labels, reached = propagate(segmenter, _volume(), seeds)
    assert reached == {1: [2, 3, 4, 5, 6], 2: [5, 6, 7, 8]}
    assert labels.shape == (1, 64, 64, 10)
    truth = (_volume() > 0.5)[0]
    assert torch.equal(labels[0, :, :, 2:7] == 1, truth[:, :, 2:7] & (torch.arange(64)[None, :, None] < 32))
    assert not labels[0, :, :, 9].any()  # the far patch is never reached
    assert model.encoded == len({*reached[1], *reached[2], 1, 9})  # each tried slice once; 0 never tried


def test_a_range_keeps_the_propagation_inside_it():
    segmenter = SliceSegmenter(ObjectInBox(), backbone="tiny")
    _, reached = propagate(segmenter, _volume(), [PropagationSeed(1, 4, (8.0, 14.0, 21.0, 27.0), first=3, last=5)])
    assert reached == {1: [3, 4, 5]}


def test_a_jump_stops_the_propagation():
    """Where the structure ends but something else lies in the widened box, the mask jumps: the overlap rule stops."""
    image = _volume()
    image[0, :, :, 7] = 0.0
    image[0, 17:40, 8:22, 7] = 1.0  # a larger object below organ 1's last position, barely overlapping it
    segmenter = SliceSegmenter(ObjectInBox(), backbone="tiny")
    seed = [PropagationSeed(1, 4, (8.0, 14.0, 21.0, 27.0))]
    others_off = {"max_growth": None, "max_shift": None}
    assert propagate(segmenter, image, seed, margin=1.0, min_overlap=0.0, **others_off)[1][1][-1] == 7
    assert propagate(segmenter, image, seed, margin=1.0, min_overlap=0.7, **others_off)[1][1][-1] == 6


def test_a_second_opinion_that_agrees_carries_the_walk_past_a_jump():
    """The jump above, where the class's prompt-free masks (``agree``, [S, H, W]) also lie on the larger object: the
    walk goes on to slice 7; with no prompt-free mask there, or a stricter agreement, it stops at 6 as before."""
    image = _volume()
    image[0, :, :, 7] = 0.0
    image[0, 17:40, 8:22, 7] = 1.0
    segmenter = SliceSegmenter(ObjectInBox(), backbone="tiny")
    seed = [PropagationSeed(1, 4, (8.0, 14.0, 21.0, 27.0))]
    options = {"margin": 1.0, "min_overlap": 0.7, "max_growth": None, "max_shift": None}
    prompt_free = (image[0] == 1.0).permute(2, 0, 1)
    prompt_free[7, 32:] = False  # on slice 7, the object's upper 15 of 23 rows: IoU 0.65 with the walk's mask
    walked, reached = propagate(segmenter, image, seed, agree={1: prompt_free}, min_agreement=0.3, **options)
    assert reached[1][-1] == 7
    on_7 = walked[0, :, :, 7] == 1
    assert float((on_7 & prompt_free[7]).sum() / (on_7 | prompt_free[7]).sum()) == pytest.approx(15 / 23)
    assert propagate(segmenter, image, seed, agree={1: prompt_free}, min_agreement=0.99, **options)[1][1][-1] == 6
    absent = prompt_free.clone()
    absent[7] = False
    assert propagate(segmenter, image, seed, agree={1: absent}, min_agreement=0.3, **options)[1][1][-1] == 6
    assert propagate(segmenter, image, seed, agree={2: prompt_free}, min_agreement=0.3, **options)[1][1][-1] == 6


class ObjectInBoxWithQuality(ObjectInBox):
    """:class:`ObjectInBox` whose predicted IoU is the share of the slice's bright pixels its mask holds."""

    def predict(self, *, image_embeddings, boxes):
        out = super().predict(image_embeddings=image_embeddings, boxes=boxes)
        bright = (image_embeddings[0, 0] > 0.5).sum().clamp(min=1)
        out.iou_predictions = ((out.masks[:, 0] > 0).flatten(1).sum(1) / bright)[:, None]
        return out


def _shifted():
    """[1, 64, 64, 8]: a 14 x 14 object at columns 8-21 on slices 2-4, moved 5 columns right on slices 5-6."""
    image = torch.zeros(1, 64, 64, 8)
    for z in range(2, 7):
        x = 8 if z < 5 else 13
        image[0, 20:34, x:x + 14, z] = 1.0
    return image


@pytest.mark.parametrize("rebox_below, opinion_class, within_box, key_slices, columns_on_5, columns_on_6", [
    (None, 1, True, False, 10, 11),  # the walk's box, a pixel wider each slice, catches up one column a slice
    (0.95, 1, True, False, 12, 14),  # rated 10/14, then 13/14, < 0.95: the prompt-free mask near the last mask's box
    (0.5, 1, True, False, 10, 11),  # 10/14 >= 0.5: the walk's box is kept
    (0.95, 2, True, False, 10, 11),  # no prompt-free mask of this class
    (0.95, 1, False, False, 10, 11),  # a key-slice seed with rebox_key_slices off
    (0.95, 1, False, True, 12, 14),
    (0.95, 1, False, None, 12, 14),  # key-slice seeds are reboxed by default (since 0.6.7)
])
def test_a_drifting_box_is_replaced_by_the_prompt_free_masks_box_where_the_model_doubts_it(
        rebox_below, opinion_class, within_box, key_slices, columns_on_5, columns_on_6):
    image = _shifted()
    prompt_free = (image[0] > 0.5).permute(2, 0, 1)
    segmenter = SliceSegmenter(ObjectInBoxWithQuality(), backbone="tiny")
    # a 3D box spans the object's columns on every slice; a key-slice box its columns on slice 4
    seed = [PropagationSeed(1, 4, (8.0, 20.0, 26.0 if within_box else 21.0, 33.0), within_box=within_box)]
    labels, reached = propagate(segmenter, image, seed, agree={opinion_class: prompt_free}, min_agreement=0.3,
                                rebox_below=rebox_below, max_growth=None, max_shift=None, taper=None,
                                **({} if key_slices is None else {"rebox_key_slices": key_slices}))
    assert reached[1] == [2, 3, 4, 5, 6]
    for z, columns in ((5, columns_on_5), (6, columns_on_6)):
        assert torch.equal(labels[0, :, :, z] == 1, prompt_free[z] & (torch.arange(64) < 13 + columns))


@pytest.mark.parametrize("touching, strip_kept", [(True, False), (False, True)])
def test_the_rebox_ignores_prompt_free_blobs_apart_from_the_previous_mask(touching, strip_kept):
    """On slice 5 a bright strip two rows below the moved object, apart from slice 4's mask but inside the rebox
    window: with ``rebox_touching`` its prompt-free mask does not stretch the rebox box over it."""
    image = _shifted()
    image[0, 35:37, 10:21, 5] = 1.0
    prompt_free = (image[0] > 0.5).permute(2, 0, 1)
    segmenter = SliceSegmenter(ObjectInBoxWithQuality(), backbone="tiny")
    seed = [PropagationSeed(1, 4, (8.0, 20.0, 21.0, 33.0))]
    labels, _ = propagate(segmenter, image, seed, agree={1: prompt_free}, min_agreement=0.3, rebox_below=0.95,
                          rebox_key_slices=True, rebox_touching=touching, max_growth=None, max_shift=None, taper=None)
    strip = torch.zeros(64, 64, dtype=torch.bool)
    strip[35:37, 10:21] = True
    # either way the rebox box reaches the object's columns up to the window's edge (24), past the walk's box (22)
    expected = (prompt_free[5] & ~strip & (torch.arange(64) < 25)) | (strip if strip_kept else False)
    assert torch.equal(labels[0, :, :, 5] == 1, expected)


def test_a_mask_that_grows_again_after_shrinking_stops_the_propagation():
    """Slice 5 shrinks to 12 x 12; on slice 6 the mask fills its whole box (14 x 14, still overlapping by 0.73):
    past the organ's largest slice, 36% more is a spill (boxes not narrowed: the rule alone)."""
    image = _volume()
    image[0, :, :, 5] = 0.0
    image[0, 16:28, 9:21, 5] = 1.0
    image[0, :, :, 6] = 0.0
    image[0, 10:40, 4:26, 6] = 1.0
    segmenter = SliceSegmenter(ObjectInBox(), backbone="tiny")
    seed = PropagationSeed(1, 4, (8.0, 14.0, 21.0, 27.0))
    assert propagate(segmenter, image, [seed], max_growth=None, max_shift=None, taper=None)[1][1][-1] == 6
    assert propagate(segmenter, image, [seed], max_growth=0.1, max_shift=None, taper=None)[1][1][-1] == 5
    assert propagate(segmenter, image, [seed], max_growth=0.5, max_shift=None, taper=None)[1][1][-1] == 6
    bounded = PropagationSeed(1, 4, (0.0, 0.0, 63.0, 63.0), first=0, last=9, within_box=True)
    assert propagate(segmenter, image, [bounded], max_growth=0.1, max_shift=None, taper=None)[1][1][-1] == 6  # 3D boxes: no rule


def test_growth_before_the_largest_slice_does_not_stop_the_propagation():
    """A key slice that is not the organ's largest: the masks grow first, legitimately."""
    image = _volume()
    image[0, :, :, 5] = 0.0
    image[0, 13:33, 6:24, 5] = 1.0  # fills its box: 16 x 16 against the key slice's 14 x 14
    segmenter = SliceSegmenter(ObjectInBox(), backbone="tiny")
    seed = [PropagationSeed(1, 4, (8.0, 14.0, 21.0, 27.0))]
    # slice 6 is then ended by the overlap rule at 0.7 (its mask overlaps slice 5's by less), not by growth
    assert propagate(segmenter, image, seed, max_growth=0.1, max_shift=None, min_overlap=0.7)[1][1][-1] == 5


def test_a_mask_on_another_tissue_stops_the_propagation():
    image = _volume()
    image[0, :, :, 5] *= 0.6  # the same shape, another intensity (still above the stand-in model's threshold)
    segmenter = SliceSegmenter(ObjectInBox(), backbone="tiny")
    seed = [PropagationSeed(1, 4, (8.0, 14.0, 21.0, 27.0))]
    assert propagate(segmenter, image, seed, max_growth=None, max_shift=None)[1][1][-1] == 6
    assert propagate(segmenter, image, seed, max_growth=None, max_shift=2.0)[1][1][-1] == 4


def test_a_tapering_organ_gets_a_box_narrowed_as_the_last_step_shrank():
    """Slice 4: 20 x 20, slice 5: 18 x 18 (area x 0.81), slice 6: 16 x 16 beside a bright strip at row 20 that the
    slice-5 mask's box (rows and columns 20-39) still holds. Narrowed by sqrt(0.81) = 0.9 about its centre
    (21-38), the box leaves the strip out."""
    image = torch.zeros(1, 64, 64, 10)
    for z, (lo, hi) in {4: (20, 40), 5: (21, 39), 6: (22, 38)}.items():
        image[0, lo:hi, lo:hi, z] = 1.0
    image[0, 19:21, 19:41, 6] = 1.0
    segmenter = SliceSegmenter(ObjectInBox(), backbone="tiny")
    seed = [PropagationSeed(1, 4, (20.0, 20.0, 39.0, 39.0))]
    plain, reached = propagate(segmenter, image, seed, taper=None, max_shift=None)
    narrowed, reached_narrowed = propagate(segmenter, image, seed, taper=0.7, max_shift=None)
    assert reached == reached_narrowed == {1: [4, 5, 6]}
    assert plain[0, 20, 20:40, 6].eq(1).all()  # the strip joins the mask
    assert narrowed[0, 20, :, 6].eq(0).all() and narrowed[0, 22:38, 22:38, 6].eq(1).all()
    assert torch.equal(plain[..., :6], narrowed[..., :6])  # nothing shrank before slice 6


def _receding_organ():
    """Slices 2-6 of an organ (rows 20-40) that keeps its left edge (column 10) and loses 2 columns on the right
    each slice (to 40, 38, 36, ...); a model that records every box it is given; the organ's key-slice seed."""
    image = torch.zeros(1, 64, 64, 10)
    for z in range(2, 7):
        image[0, 20:41, 10:41 - 2 * (z - 2), z] = 1.0
    model = ObjectInBox()
    boxes = []
    predict = model.predict
    model.predict = lambda **kw: boxes.append(kw["boxes"][0].tolist()) or predict(**kw)
    return image, model, boxes, [PropagationSeed(1, 2, (10.0, 20.0, 40.0, 40.0), first=2, last=6)]


def test_follow_moves_each_box_edge_on_as_its_mask_edge_moved_the_step_before():
    """The organ keeps its left edge and loses 2 columns on the right each slice (columns 10 to 40, 38, 36, ...).
    Each box is the previous mask's box plus one pixel (margin 0); with ``follow`` its right edge also moves in by
    the 2 columns the last step took, from the second step on (the first has no step before it)."""
    image, model, boxes, seed = _receding_organ()
    off = {"max_growth": None, "max_shift": None, "taper": None}
    propagate(SliceSegmenter(model, backbone="tiny"), image, seed, **off)
    assert [b[2] for b in boxes] == [40, 41, 39, 37, 35]  # one slice behind: 2 columns more than the organ
    boxes.clear()
    labels, reached = propagate(SliceSegmenter(model, backbone="tiny"), image, seed, follow=1.0, **off)
    assert [b[2] for b in boxes] == [40, 41, 37, 35, 33] and [b[0] for b in boxes] == [10, 9, 9, 9, 9]
    assert reached == {1: [2, 3, 4, 5, 6]}
    assert torch.equal(labels[0] == 1, image[0] > 0.5)
    boxes.clear()
    propagate(SliceSegmenter(model, backbone="tiny"), image, seed, follow=1.0, **{**off, "taper": 0.95})
    # the floor: each side at least 0.95 of the unmoved box's (30, 28, 26 columns), kept about the moved centre
    assert [b[2] - b[0] for b in boxes[2:]] == pytest.approx([28.5, 26.6, 24.7])


def test_anchor_narrows_a_tapering_box_from_the_edges_that_receded():
    """The organ keeps its left, top and bottom edges and loses 2 columns on the right each slice. From the second
    step on (the first has no shrinking step before it) the box is narrowed by s = sqrt(area ratio): about its
    centre by default; with ``anchor`` the whole width cut comes off the right edge, the only one that receded, and
    the height cut (no edge moved) is shared about the centre."""
    image, model, boxes, seed = _receding_organ()
    off = {"max_growth": None, "max_shift": None, "taper": 0.7}
    scale = (29 / 31) ** 0.5  # slice 3's area after slice 2's: 29 x 21 after 31 x 21 pixels
    propagate(SliceSegmenter(model, backbone="tiny"), image, seed, **off)
    centred = boxes[2]
    assert centred == pytest.approx([9 + (1 - scale) * 15, 19 + (1 - scale) * 11, 39 - (1 - scale) * 15,
                                     41 - (1 - scale) * 11])
    boxes.clear()
    labels, reached = propagate(SliceSegmenter(model, backbone="tiny"), image, seed, anchor=True, **off)
    assert boxes[:2] == [[10.0, 20.0, 40.0, 40.0], [9.0, 19.0, 41.0, 41.0]]  # the key slice, then no narrowing
    assert boxes[2] == pytest.approx([9, centred[1], 39 - (1 - scale) * 30, centred[3]])
    assert all(box[0] == 9.0 for box in boxes[1:])
    assert reached == {1: [2, 3, 4, 5, 6]} and torch.equal(labels[0] == 1, image[0] > 0.5)


def test_a_followed_box_that_would_invert_inside_a_3d_box_falls_back_to_the_unfollowed_box():
    """Slice 2 fills the 3D box's columns 0-30; slices 3 and 4 keep only columns 28-30. Following the left edge's
    step of 28 columns would put it past the box's right side (an inverted box): the unfollowed box is used."""
    image = torch.zeros(1, 64, 64, 6)
    image[0, 20:41, 0:31, 2] = 1.0
    image[0, 20:41, 28:31, 3:5] = 1.0
    model = ObjectInBox()
    boxes = []
    predict = model.predict
    model.predict = lambda **kw: boxes.append(kw["boxes"][0].tolist()) or predict(**kw)
    seed = [PropagationSeed(1, 2, (0.0, 20.0, 30.0, 40.0), first=2, last=4, within_box=True)]
    off = {"min_overlap": 0.0, "max_growth": None, "max_shift": None}
    for taper in (None, 0.7):
        boxes.clear()
        labels, reached = propagate(SliceSegmenter(model, backbone="tiny"), image, seed, follow=1.0, taper=taper, **off)
        assert reached == {1: [2, 3, 4]}
        assert torch.equal(labels[0] == 1, image[0] > 0.5)
        assert all(x1 - x0 >= 1 and y1 - y0 >= 1 for x0, y0, x1, y1 in boxes)
        assert boxes[-1] == [27.0, 20.0, 30.0, 40.0]  # slice 3's mask box plus a pixel, inside the 3D box


def test_a_3d_box_keeps_every_propagated_box_inside_it():
    image = _volume()
    for z in range(2, 7):
        image[0, 10 + z:24 + z, 22:30, z] = 1.0  # the object now reaches past column 22 on every slice
    segmenter = SliceSegmenter(ObjectInBox(), backbone="tiny")
    bounded = PropagationSeed(1, 4, (8.0, 14.0, 21.0, 27.0), first=2, last=6, within_box=True)
    labels, _ = propagate(segmenter, image, [bounded], max_growth=None, max_shift=None)
    assert labels[0, :, 22:, :].eq(0).all() and labels[0, :, :22, 2:7].eq(1).any()
    free, _ = propagate(segmenter, image, [PropagationSeed(1, 4, (8.0, 14.0, 21.0, 27.0), first=2, last=6)],
                        max_growth=None, max_shift=None)
    assert free[0, :, 22:, :].eq(1).any()  # without the bound the boxes follow the object out


@pytest.mark.parametrize("kwargs,seed,message", [
    ({"margin": -0.1}, 4, "margin must be >= 0"),
    ({"min_pixels": 0}, 4, "min_pixels must be >= 1"),
    ({"min_overlap": 1.5}, 4, r"min_overlap must be in \[0, 1\]"),
    ({"min_agreement": -0.1}, 4, r"min_agreement must be in \[0, 1\] \(or None\), got -0.1"),
    ({"rebox_below": 1.5}, 4, r"rebox_below must be in \[0, 1\] \(or None\), got 1.5"),
    ({"rebox_window": -1}, 4, r"rebox_window must be >= 0, got -1"),
    ({}, 12, "seed slice 12 of class 1 is outside the image"),
])
def test_refusals(kwargs, seed, message):
    with pytest.raises(ValueError, match=message):
        propagate(SliceSegmenter(ObjectInBox(), backbone="tiny"), _volume(),
                  [PropagationSeed(1, seed, (8.0, 14.0, 21.0, 27.0))], **kwargs)


def test_boxes_per_slice_beside_a_seed_share_each_slices_encoding():
    model = ObjectInBox()
    segmenter = SliceSegmenter(model, backbone="tiny")
    prompts = [(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)) for _ in range(10)]
    for z in (5, 6):
        prompts[z] = (torch.tensor([[40.0, 40.0, 49.0, 51.0]]), torch.tensor([2]))
    labels, reached = propagate(segmenter, _volume(), [PropagationSeed(1, 4, (8.0, 14.0, 21.0, 27.0))],
                                prompts=prompts)
    assert reached == {1: [2, 3, 4, 5, 6]}  # the per-slice class is not a propagation
    assert labels[0, :, :, 5].eq(2).any() and labels[0, :, :, 5].eq(1).any() and not labels[0, :, :, 7].eq(2).any()
    assert model.encoded == len({1, 2, 3, 4, 5, 6, 7})  # 5 and 6 once, for both classes


def test_the_inferer_propagates_the_seeds_in_the_meta_and_reports_the_slices():
    from monai.data import MetaTensor

    from segmote_monai.inferers import PromptedSliceInferer
    from segmote_monai.transforms.prompts import PROMPTS_META_KEY, PROPAGATION_META_KEY

    image = MetaTensor(_volume()[None])
    image.meta[PROMPTS_META_KEY] = [(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))] * 10
    image.meta[PROPAGATION_META_KEY] = [PropagationSeed(2, 6, (40.0, 40.0, 49.0, 51.0))]
    inferer = PromptedSliceInferer(backbone="tiny", propagation={"min_overlap": 0.5})
    out = inferer(image, ObjectInBox())
    expected, reached = propagate(SliceSegmenter(ObjectInBox(), backbone="tiny"), _volume(),
                                  image.meta[PROPAGATION_META_KEY], min_overlap=0.5)
    assert torch.equal(out[0], expected) and inferer.last_reached == reached == {2: [5, 6, 7, 8]}
    image.meta[PROPAGATION_META_KEY] = []
    inferer(image, ObjectInBox())
    assert inferer.last_reached == {}


@pytest.mark.parametrize("kwargs,message", [
    ({"max_growth": -0.5}, "max_growth must be >= 0"),
    ({"max_shift": 0.0}, "max_shift must be > 0"),
    ({"taper": 0.0}, r"taper must be in \(0, 1\]"),
    ({"taper": 1.5}, r"taper must be in \(0, 1\]"),
    ({"follow": -0.5}, r"follow must be in \[0, 1\]"),
    ({"follow": 2.0}, r"follow must be in \[0, 1\]"),
])
def test_stopping_rule_refusals(kwargs, message):
    with pytest.raises(ValueError, match=message):
        propagate(SliceSegmenter(ObjectInBox(), backbone="tiny"), _volume(),
                  [PropagationSeed(1, 4, (8.0, 14.0, 21.0, 27.0))], **kwargs)


class ObjectInBoxRatedByTruth(ObjectInBox):
    """:class:`ObjectInBox` whose predicted IoU is its mask's IoU with the pixels of intensity 1.0 (the truth; the
    bright pixels of intensity 0.8 are a neighbour that a box reaching them also takes)."""

    def predict(self, *, image_embeddings, boxes):
        out = super().predict(image_embeddings=image_embeddings, boxes=boxes)
        truth, masks = image_embeddings[0, 0] == 1.0, out.masks[:, 0] > 0
        both, either = (masks & truth).flatten(1).sum(1), (masks | truth).flatten(1).sum(1)
        out.iou_predictions = (both / either.clamp(min=1))[:, None]
        return out


def test_a_reboxed_mask_smaller_than_the_last_does_not_count_as_the_organ_shrinking():
    """A 14 x 14 organ on slices 1-6, 10 columns wide on slice 3 where a neighbour fills the rest of the walk's box.
    Walking down from slice 4, slice 3's rebox keeps the organ alone (140 pixels, after 196), then slice 2's the
    organ's 13 columns inside the rebox window (182): 30% more than slice 3, but slice 3's smaller area came from the
    rebox, not from the walk's box, so the growth rule does not take the organ as past its widest slice."""
    image = torch.zeros(1, 64, 64, 8)
    image[0, 20:34, 8:22, 1:7] = 1.0
    image[0, 20:34, 18:22, 3] = 0.8
    prompt_free = (image[0] == 1.0).permute(2, 0, 1)
    segmenter = SliceSegmenter(ObjectInBoxRatedByTruth(), backbone="tiny")
    seed = [PropagationSeed(1, 4, (8.0, 20.0, 21.0, 33.0))]
    labels, walked = propagate(segmenter, image, seed, agree={1: prompt_free}, min_agreement=0.3, rebox_below=0.9,
                               rebox_key_slices=True, max_growth=0.1, max_shift=None, taper=None)
    assert walked[1] == [1, 2, 3, 4, 5, 6]
    assert int((labels[0, :, :, 3] == 1).sum()) == 140 and int((labels[0, :, :, 2] == 1).sum()) == 182
