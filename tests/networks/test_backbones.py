from __future__ import annotations

import pytest
import torch

from segmote_monai.errors import InputFileError
from segmote_monai.networks import BACKBONE_NAMES, build_backbone


def test_names():
    assert set(BACKBONE_NAMES) == {"lite_medsam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "tiny"}


def test_unknown_name():
    with pytest.raises(ValueError, match=r"backbone must be one of .*got 'sam_vit_x'"):
        build_backbone("sam_vit_x")


def test_random_weights_must_be_bool():
    with pytest.raises(TypeError, match="random_weights must be a bool, got str"):
        build_backbone("tiny", random_weights="yes")


def test_sam_needs_a_checkpoint_unless_random():
    with pytest.raises(ValueError, match="needs a checkpoint path"):
        build_backbone("sam_vit_b")


def test_missing_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "sam_vit_b_01ec64.pth"
    with pytest.raises(InputFileError, match=rf"{path}: no such file: the sam_vit_b checkpoint \(bundle/large_files.yml"):
        build_backbone("sam_vit_b", checkpoint=path)


def test_checkpoint_of_another_model(tmp_path):
    path = tmp_path / "other.pth"
    tiny = build_backbone("tiny")
    torch.save({f"mask_decoder.{k}": v for k, v in tiny.mask_decoder.state_dict().items()}, path)
    with pytest.raises(InputFileError, match=rf"^{path}: does not hold a 'lite_medsam' model: \d+ missing keys"):
        build_backbone("lite_medsam", checkpoint=path)


def test_checkpoint_with_wrong_shapes(tmp_path):
    real = build_backbone("lite_medsam", random_weights=True)
    state = {f"{part}.{k}": v for part in ("image_encoder", "prompt_encoder", "mask_decoder")
             for k, v in getattr(real, part).state_dict().items()}
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 8)
    path = tmp_path / "shapes.pth"
    torch.save(state, path)
    with pytest.raises(InputFileError, match="1 shape mismatches, e.g. mask_decoder.iou_token.weight"):
        build_backbone("lite_medsam", checkpoint=path)


def test_unreadable_checkpoint(tmp_path):
    path = tmp_path / "truncated.pth"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InputFileError, match=rf"^{path}: not a readable checkpoint for backbone .lite_medsam."):
        build_backbone("lite_medsam", checkpoint=path)


def test_lite_medsam_loads_every_key_and_is_frozen():
    backbone = build_backbone("lite_medsam")
    assert backbone.img_size == 256
    assert backbone.pixel_mean == (0.0, 0.0, 0.0) and backbone.pixel_std == (1.0, 1.0, 1.0)
    for part in (backbone.image_encoder, backbone.prompt_encoder, backbone.mask_decoder):
        assert not part.training
        assert not any(p.requires_grad for p in part.parameters())
    # A random build differs, so the hash identifies the loaded weights.
    assert backbone.weights_sha256 != build_backbone("lite_medsam", random_weights=True).weights_sha256


def test_sam_vit_b_random_weights():
    backbone = build_backbone("sam_vit_b", random_weights=True)
    assert backbone.img_size == 1024
    assert backbone.pixel_mean == pytest.approx((0.485, 0.456, 0.406))
    assert sum(p.numel() for p in backbone.image_encoder.parameters()) > 85_000_000


def test_tiny_is_a_fixed_fixture():
    torch.manual_seed(1)
    first = build_backbone("tiny").weights_sha256
    torch.manual_seed(2)
    assert build_backbone("tiny").weights_sha256 == first
