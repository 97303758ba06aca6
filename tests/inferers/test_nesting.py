"""The label map's overlap rule on a real kidney with an implanted tumour: the shipped model on embedded data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.transforms import Compose

from segmote_monai.data.lesions import implant_lesion
from segmote_monai.inferers import SliceSegmenter
from segmote_monai.networks import build_from_checkpoint
from segmote_monai.transforms import LoadPaird, ScaleIntensityByModalityd

pytestmark = pytest.mark.slow

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
TUMOUR = 5


def _box(mask):
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())]


def _dice(pred, target):
    return 2 * (pred & target).sum().item() / (pred.sum().item() + target.sum().item())


@pytest.fixture(scope="module")
def model():
    return build_from_checkpoint(trainable_checkpoint=BUNDLE / "models" / "model.pt", backbone="lite_medsam").eval()


@pytest.fixture(scope="module")
def patient21():
    load = Compose([LoadPaird(label_values=[0, 1, 2, 3, 4]), ScaleIntensityByModalityd(keys="image", modality="MR")])
    name = "chaos_t2_case21.nii.gz"
    return load({"image": str(BUNDLE / "data/chaos_t2/images" / name), "label": str(BUNDLE / "data/chaos_t2/labels" / name)})


@pytest.mark.parametrize("kidney, intensity", [(2, 0.95), (3, 0.05)])
def test_a_tumour_inside_its_kidney_keeps_its_own_mask_on_the_label_map(model, patient21, kidney, intensity):
    z = int((patient21["label"][0] == kidney).sum(dim=(0, 1)).argmax())
    organ = patient21["label"][0, :, :, z] == kidney
    image, tumour = implant_lesion(patient21["image"][..., z], organ, intensity=intensity)
    prompts = [(torch.tensor([_box(organ), _box(tumour)], dtype=torch.float32), torch.tensor([kidney, TUMOUR]))]
    merged, own = SliceSegmenter(model, backbone="lite_medsam")(image[..., None], prompts, class_masks=True)
    merged = merged[0, ..., 0]
    own_dice = _dice(own[TUMOUR][0, ..., 0], tumour)
    assert own[kidney][0, ..., 0][tumour].float().mean() > 0.5  # the kidney's mask covers the tumour: they overlap
    assert _dice(merged == TUMOUR, tumour) == pytest.approx(own_dice) and own_dice > 0.85
    assert _dice(merged == kidney, organ & ~tumour) > 0.85
    # the rule is the cause: the highest logit gives most of the tumour to the kidney
    highest = SliceSegmenter(model, backbone="lite_medsam", overlap="logit")(image[..., None], prompts)[0, ..., 0]
    assert _dice(highest == TUMOUR, tumour) < own_dice - 0.3
