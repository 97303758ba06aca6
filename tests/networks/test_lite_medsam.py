"""SegMoTE on the real LiteMedSAM weights and real CHAOS T2 MRI slices (../shared/data)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import ScaleIntensityRangePercentiles

from segmote_monai.losses import DiceBalanceLoss
from segmote_monai.networks import build_segmote
from tests.conftest import shared_data

pytestmark = pytest.mark.slow

LIVER = 1


@pytest.fixture(scope="module")
def chaos_case():
    """Three labelled slices of one CHAOS patient: normalised images, labels, one tight box per organ."""
    folder = shared_data("mri_abdomen_chaos_t2")
    image = nib.load(folder / "images" / "chaos_t2_case02.nii.gz").get_fdata()
    label = nib.load(folder / "labels" / "chaos_t2_case02.nii.gz").get_fdata().astype(np.int64)
    image = np.asarray(ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)(image))
    liver_area = (label == LIVER).sum(axis=(0, 1))
    slices = [int(np.argmax(liver_area)), 11, 19]
    images = torch.as_tensor(image[..., slices], dtype=torch.float32).permute(2, 0, 1)[:, None].repeat(1, 3, 1, 1)
    boxes, index, classes, masks = [], [], [], []
    for i, z in enumerate(slices):
        for c in range(1, 5):
            mask = label[..., z] == c
            if mask.sum() < 20:
                continue
            ys, xs = np.nonzero(mask)
            boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
            index.append(i)
            classes.append(c)
            masks.append(torch.from_numpy(mask).float())
    return {
        "images": images, "boxes": torch.tensor(boxes, dtype=torch.float32), "index": torch.tensor(index),
        "classes": classes, "labels": torch.stack(masks)[:, None],
    }


@pytest.fixture(scope="module")
def embeddings(chaos_case):
    return build_segmote("lite_medsam", num_expert_tokens=0, num_ppt_queries=0).embed_images(chaos_case["images"])


def _dice(logits, label):
    pred = logits > 0
    return float(2 * (pred & (label > 0)).sum() / (pred.sum() + (label > 0).sum()))


def test_experts_off_reproduces_sams_mask_decoder(chaos_case, embeddings):
    model = build_segmote("lite_medsam", num_expert_tokens=0, num_ppt_queries=0).eval()
    boxes, index = chaos_case["boxes"], chaos_case["index"]
    ours = model.predict(image_embeddings=embeddings, boxes=boxes, image_index=index)
    sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
    sam = model.decoder.mask_decoder
    with torch.no_grad():
        for row in range(len(boxes)):
            masks, iou = sam(
                image_embeddings=embeddings[index[row]][None], image_pe=model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse[row][None], dense_prompt_embeddings=dense[row][None],
                multimask_output=False,
            )
            torch.testing.assert_close(ours.low_res_masks[row], masks[0], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(ours.iou_predictions[row], iou[0], rtol=1e-4, atol=1e-4)


def test_liver_with_a_box_from_the_label(chaos_case, embeddings):
    model = build_segmote("lite_medsam").eval()  # experts on, untrained: starts at SAM's prediction
    row = chaos_case["classes"].index(LIVER)
    out = model.predict(image_embeddings=embeddings, boxes=chaos_case["boxes"][row:row + 1],
                        image_index=chaos_case["index"][row:row + 1])
    assert _dice(out.masks[0, 0], chaos_case["labels"][row, 0]) > 0.8


def test_fifty_steps_lower_the_loss(chaos_case, embeddings):
    model = build_segmote("lite_medsam", num_ppt_queries=0)
    loss_fn = DiceBalanceLoss()
    prompts = {"image_embeddings": embeddings, "boxes": chaos_case["boxes"], "image_index": chaos_case["index"]}

    def held_loss():
        model.eval()
        with torch.no_grad():
            return loss_fn(model.predict(**prompts), chaos_case["labels"]).item()

    before = held_loss()
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    for _ in range(50):
        loss = loss_fn(model.predict(**prompts), chaos_case["labels"])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = held_loss()
    assert after < 0.8 * before, (before, after)
