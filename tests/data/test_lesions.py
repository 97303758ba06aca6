from __future__ import annotations

import pytest
import torch

from segmote_monai.data.lesions import implant_lesion


def _bean():
    rows, cols = torch.meshgrid(torch.arange(40), torch.arange(50), indexing="ij")
    organ = ((rows - 20) / 14) ** 2 + ((cols - 25) / 20) ** 2 <= 1
    return organ & ~(((rows - 20) ** 2 + (cols - 5) ** 2) <= 64)  # a notch, like a kidney's hilum


@pytest.mark.parametrize("intensity", [0.05, 0.95])
def test_lesion_lies_inside_the_organ_with_its_intensity(intensity):
    organ = _bean()
    image = torch.full((1, 40, 50), 0.5)
    out, lesion = implant_lesion(image, organ, intensity=intensity, noise=0.0)
    assert lesion.any() and not (lesion & ~organ).any()
    assert (lesion.sum() < 0.6 * organ.sum()) and (out[0][lesion] == intensity).all() and (out[0][~lesion] == 0.5).all()
    assert image.eq(0.5).all()  # the input is not changed


def test_the_same_seed_gives_the_same_texture():
    organ = _bean()
    image = torch.rand(3, 40, 50)
    a, _ = implant_lesion(image, organ, intensity=0.9, seed=3)
    b, _ = implant_lesion(image, organ, intensity=0.9, seed=3)
    assert torch.equal(a, b) and a.shape == image.shape


@pytest.mark.parametrize("image, organ, kwargs, message", [
    (torch.zeros(40, 50), _bean(), {}, r"expected image \[C, H, W\] and organ \[H, W\], got \(40, 50\)"),
    (torch.zeros(1, 40, 50), torch.zeros(40, 50, dtype=torch.bool), {}, "the organ mask is empty"),
    (torch.zeros(1, 40, 50), _bean(), {"radius_fraction": 1.5}, r"radius_fraction must be in \(0, 1\], got 1.5"),
])
def test_refusals(image, organ, kwargs, message):
    with pytest.raises(ValueError, match=message):
        implant_lesion(image, organ, intensity=0.5, **kwargs)
