from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from segmote_monai.transforms import (
    LabelToPrompts,
    RandClassTarget,
    RandPrompt,
    ResizeLongestSidePad,
    ScaleIntensityByModality,
    ToRGB,
    backbone_normalization,
    box_of_mask,
    scale_boxes,
)


def test_ct_window():
    out = ScaleIntensityByModality("CT", ct_window=(-100, 100))(torch.tensor([[-1000.0, -100.0, 0.0, 100.0, 3000.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 0.5, 1.0, 1.0]]))


def test_mr_percentiles():
    values = torch.arange(1001.0).reshape(1, 1001)
    out = ScaleIntensityByModality("MR", percentiles=(10, 90))(values)
    assert out.min() == 0 and out.max() == 1
    torch.testing.assert_close(out[0, 500], torch.tensor(0.5))


def test_bit_depth_scaling():
    eight = torch.tensor([[0, 128, 255]], dtype=torch.uint8)
    torch.testing.assert_close(ScaleIntensityByModality("XR")(eight), torch.tensor([[0.0, 128 / 255, 1.0]]))
    sixteen = MetaTensor(torch.tensor([[0.0, 2000.0, 4000.0]]), meta={"original_dtype": "uint16"})
    out = ScaleIntensityByModality("XR", percentiles=(0, 100))(sixteen)  # a 12-bit X-ray in 16 bits
    torch.testing.assert_close(out.as_tensor(), torch.tensor([[0.0, 0.5, 1.0]]))


def test_constant_image_is_zero():
    assert ScaleIntensityByModality("MR")(torch.full((1, 4, 4), 7.0)).abs().sum() == 0


@pytest.mark.parametrize("modality", ["CT", "MR", "XR"])
def test_scaling_leaves_a_float32_input_untouched(modality):
    image = torch.linspace(-500.0, 500.0, 64).reshape(1, 8, 8)
    before = image.clone()
    out = ScaleIntensityByModality(modality)(image)
    assert torch.equal(image, before) and out.data_ptr() != image.data_ptr()


@pytest.mark.parametrize(
    "modality,kwargs,message",
    [
        ("PET", {}, r"modality must be one of \['CT', 'MR', 'XR', 'RGB'\], got 'PET'"),
        ("CT", {"ct_window": (100, -100)}, r"ct_window must be \(low, high\) with low < high, got \(100, -100\)"),
        ("MR", {"percentiles": (5, 101)}, r"percentiles must be .* got \(5, 101\)"),
    ],
)
def test_scaling_bad_arguments(modality, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScaleIntensityByModality(modality, **kwargs)


@pytest.mark.parametrize("channels,expected", [(1, 3), (3, 3), (4, 3)])
def test_to_rgb(channels, expected):
    image = torch.rand(channels, 5, 6)
    out = ToRGB()(image)
    assert out.shape == (expected, 5, 6)
    assert torch.equal(out[0], image[0])


def test_to_rgb_refuses_two_channels():
    with pytest.raises(ValueError, match=r"expected 1 \(grey\), 3 \(RGB\) or 4 \(RGBA\) channels, got 2"):
        ToRGB()(torch.rand(2, 5, 6))


@pytest.mark.parametrize("hw,size,resized", [((512, 512), 256, (256, 256)), ((575, 765), 256, (192, 256)),
                                             ((100, 60), 256, (256, 154)), ((64, 64), 64, (64, 64))])
def test_resize_longest_side_pad_and_exact_inverse(hw, size, resized):
    label = MetaTensor(torch.randint(0, 3, (1, *hw)).float())
    transform = ResizeLongestSidePad(size, mode="nearest-exact")
    out = transform(label)
    assert tuple(out.shape) == (1, size, size)
    assert out[:, resized[0]:, :].abs().sum() == 0 and out[:, :, resized[1]:].abs().sum() == 0
    back = transform.inverse(out)
    assert tuple(back.shape) == (1, *hw)
    if size >= max(hw):  # upscaling with pixel-centred nearest and back loses nothing
        assert torch.equal(back.as_tensor(), label.as_tensor())


@pytest.mark.parametrize("hw,size", [((512, 512), 256), ((575, 765), 256), ((120, 80), 256), ((300, 200), 1024)])
def test_boxes_follow_the_resize_and_its_inverse(hw, size):
    label = torch.zeros(1, *hw)
    h, w = hw
    label[0, h // 5: h // 2, w // 3: 3 * w // 4] = 1
    box = box_of_mask(label[0] > 0)
    resized = ResizeLongestSidePad(size, mode="nearest-exact")(MetaTensor(label))
    resized_box = box_of_mask(resized[0] > 0)
    scaled = scale_boxes(box[None], hw, size)[0]
    s = size / max(hw)
    assert (scaled - resized_box).abs().max() <= max(1.0, s)  # nearest sampling: within one source pixel
    torch.testing.assert_close(scale_boxes(scaled[None], hw, size, inverse=True)[0], box)


def test_backbone_normalization():
    image = torch.full((3, 2, 2), 0.485)
    torch.testing.assert_close(backbone_normalization("sam_vit_b")(image)[0], torch.zeros(2, 2))
    torch.testing.assert_close(backbone_normalization("lite_medsam")(image), image)
    with pytest.raises(ValueError, match="backbone must be one of"):
        backbone_normalization("vit")


def _label():
    label = torch.zeros(1, 40, 50, dtype=torch.long)
    label[0, 5:15, 10:30] = 1
    label[0, 20:35, 35:45] = 3
    return label


def test_label_to_prompts_tight_boxes_per_present_class():
    out = LabelToPrompts([1, 2, 3])(_label())
    assert out["class_ids"].tolist() == [1, 3]
    assert out["boxes"].tolist() == [[10, 5, 29, 14], [35, 20, 44, 34]]


def test_jittered_boxes_are_seeded_and_bounded():
    make = lambda: LabelToPrompts([1, 3], jitter=0.1).set_random_state(7)  # noqa: E731
    first, second = make()(_label()), make()(_label())
    assert torch.equal(first["boxes"], second["boxes"])
    tight = torch.tensor([[10, 5, 29, 14], [35, 20, 44, 34]], dtype=torch.float32)
    size = torch.tensor([[20, 10, 20, 10], [10, 15, 10, 15]], dtype=torch.float32)
    assert not torch.equal(first["boxes"], tight)
    assert ((first["boxes"] - tight).abs() <= 0.1 * size + 1e-5).all()


def test_points_inside_and_outside():
    label = torch.zeros(1, 40, 50, dtype=torch.long)
    for row in range(5, 30):  # a triangle: its box holds background too
        label[0, row, 10:10 + row] = 1
    out = LabelToPrompts([1], num_positive=3, num_negative=2).set_random_state(0)(label)
    assert out["points"].shape == (1, 5, 2) and out["point_labels"].tolist() == [[1, 1, 1, 0, 0]]
    for (x, y), value in zip(out["points"][0].long().tolist(), out["point_labels"][0].tolist()):
        assert (label[0, y, x] == 1) == (value == 1)
        assert 10 <= x <= 38 and 5 <= y <= 29  # negatives inside the box, where a user would click


def test_points_on_a_rectangle_fall_back_to_the_background():
    out = LabelToPrompts([1], num_positive=1, num_negative=2).set_random_state(0)(_label())
    for (x, y), value in zip(out["points"][0].long().tolist(), out["point_labels"][0].tolist()):
        assert (_label()[0, y, x] == 1) == (value == 1)


def test_rand_prompt_picks_a_present_class():
    prompt = RandPrompt([1, 2, 3]).set_random_state(0)
    seen = {int(prompt(_label())["class_id"]) for _ in range(30)}
    assert seen == {1, 3}
    out = prompt(_label())
    assert out["mask"].shape == (1, 40, 50)
    assert torch.equal(out["mask"][0] > 0, _label()[0] == out["class_id"])
    assert torch.equal(out["box"], box_of_mask(out["mask"][0] > 0))


def _tapering() -> tuple[torch.Tensor, torch.Tensor]:
    """A [1, 12, 12] slice with class 1 in rows 4-7 and its two neighbours: class 1 in rows 2-9 below and
    nowhere above."""
    label = torch.zeros(1, 12, 12, dtype=torch.long)
    label[0, 4:8, 4:8] = 1
    neighbours = torch.zeros(2, 12, 12, dtype=torch.long)
    neighbours[0, 2:10, 3:9] = 1
    return label, neighbours


@pytest.mark.parametrize("share,neighbour_boxes", [(0.0, 0), (1.0, 20), (0.5, None)])
def test_rand_prompt_boxes_from_a_neighbouring_slice(share, neighbour_boxes):
    label, neighbours = _tapering()
    prompt = RandPrompt([1], neighbour_share=share).set_random_state(0)
    outs = [prompt(label, neighbours=neighbours) for _ in range(20)]
    boxes = [o["box"].tolist() for o in outs]
    assert set(map(tuple, boxes)) <= {(4.0, 4.0, 7.0, 7.0), (3.0, 2.0, 8.0, 9.0)}  # its own or the neighbour's
    drawn = sum(b == [3.0, 2.0, 8.0, 9.0] for b in boxes)
    assert drawn == neighbour_boxes if neighbour_boxes is not None else 0 < drawn < 20
    assert all(torch.equal(o["mask"], label.float()) for o in outs)  # the target stays this slice's


def test_rand_prompt_neighbour_share_keeps_the_random_stream_without_neighbours():
    label, _ = _tapering()
    plain = RandPrompt([1], jitter=0.2).set_random_state(0)
    shared = RandPrompt([1], jitter=0.2, neighbour_share=0.5).set_random_state(0)
    for _ in range(5):
        assert torch.equal(plain(label)["box"], shared(label)["box"])
    empty = torch.zeros(2, 12, 12, dtype=torch.long)  # the class on neither neighbour: its own box
    assert RandPrompt([1], neighbour_share=1.0).set_random_state(0)(label, neighbours=empty)["box"].tolist() == \
        [4.0, 4.0, 7.0, 7.0]


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_rand_prompt_refuses_a_neighbour_share_outside_0_1(share):
    with pytest.raises(ValueError, match=f"neighbour_share must be in \\[0, 1\\], got {share}"):
        RandPrompt([1], neighbour_share=share)


def test_rand_prompt_on_an_empty_slice():
    out = RandPrompt([2]).set_random_state(0)(torch.zeros(1, 8, 10))
    assert out["mask"].sum() == 0 and out["class_id"] == 2
    assert out["box"].tolist() == [0, 0, 9, 7]


@pytest.mark.parametrize("share,expected", [(1.0, {1, 3}), (0.0, {2, 4})])
def test_rand_class_target_draws_present_or_absent_classes(share, expected):
    target = RandClassTarget([1, 2, 3, 4], present_share=share).set_random_state(0)
    seen = set()
    for _ in range(30):
        out = target(_label())
        seen.add(int(out["auto_class_id"]))
        assert out["auto_mask"].shape == (1, 40, 50)
        assert torch.equal(out["auto_mask"][0] > 0, _label()[0] == out["auto_class_id"])
    assert seen == expected


def test_rand_class_target_falls_back_when_one_kind_is_missing():
    empty = RandClassTarget([2], present_share=1.0).set_random_state(0)(torch.zeros(1, 8, 10))
    assert int(empty["auto_class_id"]) == 2 and empty["auto_mask"].sum() == 0
    full = RandClassTarget([1, 3], present_share=0.0).set_random_state(0)(_label())
    assert int(full["auto_class_id"]) in (1, 3) and full["auto_mask"].sum() > 0


@pytest.mark.parametrize(
    "kwargs,message",
    [({"classes": [0]}, "classes must be a non-empty list of label values > 0"),
     ({"classes": [1], "present_share": 1.5}, r"present_share must be in \[0, 1\], got 1.5")],
)
def test_rand_class_target_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RandClassTarget(**kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"classes": []}, "classes must be a non-empty list of label values > 0"),
        ({"classes": [0, 1]}, "classes must be a non-empty list of label values > 0"),
        ({"classes": [1], "jitter": 1.5}, r"jitter must be in \[0, 1\), got 1.5"),
        ({"classes": [1], "num_positive": -1}, "point counts must be >= 0"),
    ],
)
def test_prompt_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LabelToPrompts(**kwargs)


def test_box_of_empty_mask():
    with pytest.raises(ValueError, match="needs a non-empty mask"):
        box_of_mask(torch.zeros(4, 4, dtype=torch.bool))
    assert np.array_equal(box_of_mask(torch.eye(4, dtype=torch.bool)).numpy(), [0, 0, 3, 3])
