from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from segmote_monai.transforms import AffineVariant, FixedAffine, RandFixedVariantd, affine_variants


def _block(height: int = 20, width: int = 30, rows=(8, 12), cols=(13, 17), value: float = 1.0) -> torch.Tensor:
    img = torch.zeros(1, height, width)
    img[0, rows[0]:rows[1], cols[0]:cols[1]] = value
    return img


def _extent(img: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = torch.nonzero(img[0], as_tuple=True)
    return int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())


def test_variants_are_fixed_by_their_seed_and_within_their_ranges():
    first = affine_variants(16, rotate=10.0, zoom=(0.9, 1.1), gamma=(0.8, 1.25), seed=3)
    assert first == affine_variants(16, rotate=10.0, zoom=(0.9, 1.1), gamma=(0.8, 1.25), seed=3)
    assert first != affine_variants(16, rotate=10.0, zoom=(0.9, 1.1), gamma=(0.8, 1.25), seed=4)
    assert len(first) == 16 and len({v.angle for v in first}) == 16
    assert all(abs(v.angle) <= 10 and 0.9 <= v.zoom <= 1.1 and 0.8 <= v.gamma <= 1.25 for v in first)
    assert affine_variants(0) == []


@pytest.mark.parametrize("kwargs,message", [
    ({"count": -1}, "count must be >= 0, got -1"),
    ({"count": 2, "rotate": 200.0}, "rotate must be in [0, 180] degrees, got 200.0"),
    ({"count": 2, "zoom": (1.2, 0.8)}, "zoom must be (low, high) with 0 < low <= high, got (1.2, 0.8)"),
    ({"count": 2, "gamma": (0.0, 1.0)}, "gamma must be (low, high) with 0 < low <= high, got (0.0, 1.0)"),
    ({"count": 2, "gamma": (1.0,)}, "gamma must be (low, high)"),
])
def test_bad_variant_ranges_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        affine_variants(**kwargs)


@pytest.mark.parametrize("variant,extent", [
    (AffineVariant(), (8, 11, 13, 16)),
    # a centred 4 x 4 block doubled about the image centre (row 9.5, column 14.5)
    (AffineVariant(zoom=2.0), (6, 13, 11, 18)),
    (AffineVariant(zoom=0.5), (9, 10, 14, 15)),
])
def test_zoom_acts_about_the_centre(variant, extent):
    assert _extent(FixedAffine(variant, mode="nearest")(_block())) == extent


def test_rotation_is_counter_clockwise_in_pixel_units():
    """A block up and to the left of the centre of a 20 x 30 image goes down and to the left: (dx, dy) ->
    (dy, -dx) with y down, in pixels (a non-square image is not sheared)."""
    out = FixedAffine(AffineVariant(angle=90.0), mode="nearest")(_block(rows=(2, 6), cols=(3, 8)))
    assert _extent(out) == (17, 19, 7, 10)  # rows 17-21 before the frame's edge, columns 7-10
    assert int(out.sum()) == 3 * 4


def test_labels_keep_their_values_and_images_get_gamma():
    label = _block(value=3.0).to(torch.uint8)
    moved = FixedAffine(AffineVariant(angle=33.0, zoom=1.3), mode="nearest")(label)
    assert moved.dtype == torch.uint8 and set(torch.unique(moved).tolist()) == {0, 3}
    image = torch.full((3, 8, 8), 0.25)
    out = FixedAffine(AffineVariant(gamma=2.0))(image)
    torch.testing.assert_close(out, torch.full((3, 8, 8), 0.0625))
    assert torch.equal(FixedAffine(AffineVariant(gamma=2.0), mode="nearest")(label), label)  # no gamma on labels


def test_metatensor_in_plain_tensor_out():
    out = FixedAffine(AffineVariant(angle=5.0))(MetaTensor(torch.rand(3, 16, 16)))
    assert type(out) is torch.Tensor and out.shape == (3, 16, 16)


@pytest.mark.parametrize("kwargs,shape,message", [
    ({"mode": "bicubic"}, (1, 8, 8), "mode must be 'bilinear' (images) or 'nearest' (labels), got 'bicubic'"),
    ({}, (8, 8), "expected a [C, H, W] image, got shape (8, 8)"),
])
def test_fixed_affine_errors(kwargs, shape, message):
    with pytest.raises(ValueError) as error:
        FixedAffine(AffineVariant(angle=1.0), **kwargs)(torch.zeros(shape))
    assert str(error.value) == message


def _sample() -> dict:
    label = torch.zeros(1, 40, 50, dtype=torch.uint8)
    label[0, 12:24, 15:30] = 1
    label[0, 16:20, 20:25] = 2
    image = torch.rand(3, 40, 50) * 0.5 + label.float() * 0.2
    return {"image": image, "label": label, "label_neighbours": torch.stack([label[0], label[0]])}


def test_share_zero_and_no_variants_pass_samples_unchanged():
    data = _sample()
    for transform in (RandFixedVariantd(("image", "label"), variants=4, share=0.0),
                      RandFixedVariantd(("image", "label"), variants=0, share=1.0)):
        out = transform.set_random_state(0)(data)
        assert all(out[k] is data[k] for k in data)


def test_each_sample_is_one_of_at_most_variants_plus_one_inputs():
    """What makes the augmentation cacheable: over many draws an image takes at most variants + 1 forms, each
    bit-identical whenever it recurs."""
    data = _sample()
    transform = RandFixedVariantd(("image", "label", "label_neighbours"), variants=3, share=0.75).set_random_state(0)
    seen = {}
    for _ in range(60):
        out = transform(data)
        seen.setdefault(out["image"].numpy().tobytes(), out)
    assert len(seen) == 4
    for out in seen.values():  # image, label and neighbours moved alike: the label still marks the bright block
        assert torch.equal(out["label_neighbours"][0], out["label"][0])
        inside = out["image"][0][out["label"][0] > 0].mean()
        outside = out["image"][0][(out["label"][0] == 0) & (out["image"][0] > 0)].mean()
        assert inside > outside


def test_a_variant_that_pushes_a_class_out_of_the_frame_is_not_used():
    label = torch.zeros(1, 40, 40, dtype=torch.uint8)
    label[0, 0:4, 0:4] = 1  # a class in the corner: zooming in by 2 moves it out
    data = {"image": torch.rand(3, 40, 40), "label": label}
    transform = RandFixedVariantd(("image", "label"), variants=1, share=1.0, zoom=(2.0, 2.0), rotate=0.0)
    out = transform.set_random_state(0)(data)
    assert out["image"] is data["image"] and out["label"] is data["label"]
    label[0, 18:22, 18:22] = 2  # only the centred class: kept, the variant applies
    out = transform(data | {"label": label.clone().masked_fill(label == 1, 0)})
    assert int((out["label"] == 2).sum()) == 64


def test_labels_stay_nearest_without_the_image_key():
    label = _sample()["label"]
    out = RandFixedVariantd(("image", "label"), variants=1, share=1.0, rotate=30.0).set_random_state(0)({"label": label})
    assert set(torch.unique(out["label"]).tolist()) <= {0, 1, 2} and not torch.equal(out["label"], label)


def test_share_is_validated():
    with pytest.raises(ValueError, match=r"share must be in \[0, 1\], got 1.5"):
        RandFixedVariantd(share=1.5)
