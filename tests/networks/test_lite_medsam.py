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


def test_an_untrained_segmote_predicts_exactly_what_sam_predicts(chaos_case, embeddings):
    """Training starts at SAM's own output on real weights and scans: every organ box, every pixel's logit."""
    model = build_segmote("lite_medsam").eval()
    boxes, index = chaos_case["boxes"], chaos_case["index"]
    ours = model.predict(image_embeddings=embeddings, boxes=boxes, image_index=index)
    sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
    sam = model.decoder.mask_decoder
    with torch.no_grad():
        for row in range(len(boxes)):  # SAM's MaskDecoder takes one image at a time
            masks, _ = sam(image_embeddings=embeddings[index[row]][None], image_pe=model.prompt_encoder.get_dense_pe(),
                           sparse_prompt_embeddings=sparse[row][None], dense_prompt_embeddings=dense[row][None],
                           multimask_output=False)
            torch.testing.assert_close(ours.low_res_masks[row], masks[0], rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def acdc_myocardium():
    """Myocardium slices of 4 ACDC training patients and 2 other (held-out) patients: embeddings, boxes, masks."""
    from PIL import Image

    from segmote_monai.transforms.array import box_of_mask

    folder = shared_data("mri_cardiac_acdc")
    model = build_segmote("lite_medsam", num_expert_tokens=0, num_ppt_queries=0)
    out = {}
    for part, patients in (("train", ("patient003", "patient007", "patient010", "patient014")),
                           ("held_out", ("patient005", "patient015"))):
        files = sorted(p for p in (folder / "images").glob("*.png") if p.name.startswith(patients))
        images, masks = [], []
        for path in files:
            grey = np.asarray(Image.open(path), dtype=np.float32) / 255.0
            label = np.asarray(Image.open(folder / "masks" / path.name))
            h, w = grey.shape
            pad = ((0, 256 - h), (0, 256 - w))
            images.append(torch.from_numpy(np.pad(grey, pad))[None].repeat(3, 1, 1))
            masks.append(torch.from_numpy(np.pad(label == 2, pad)))
        embeddings = torch.cat([model.embed_images(image[None]) for image in images])
        masks = torch.stack(masks)
        out[part] = {"embeddings": embeddings, "masks": masks[:, None].float(),
                     "boxes": torch.stack([box_of_mask(m) for m in masks])}
    return out


def test_training_on_some_patients_helps_other_patients(acdc_myocardium):
    """The frozen model takes the myocardium box for the whole disc; 60 steps on four patients' slices must
    lift the myocardium Dice of two patients it never saw well above SAM's."""
    torch.manual_seed(0)
    model = build_segmote("lite_medsam", num_ppt_queries=0)
    train, held_out = acdc_myocardium["train"], acdc_myocardium["held_out"]

    def held_out_dice():
        model.eval()
        with torch.no_grad():
            out = model.predict(image_embeddings=held_out["embeddings"], boxes=held_out["boxes"])
        return np.mean([_dice(m[0], t[0]) for m, t in zip(out.masks, held_out["masks"])])

    before = held_out_dice()
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss_fn = DiceBalanceLoss()
    for _ in range(60):
        model.train()
        loss = loss_fn(model.predict(image_embeddings=train["embeddings"], boxes=train["boxes"]), train["masks"])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = held_out_dice()
    assert before < 0.3 and after > before + 0.3, (before, after)
