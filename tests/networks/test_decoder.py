from __future__ import annotations

import pytest
import torch

from segmote_monai.networks import MoTEMaskDecoder, build_backbone


def _inputs(backbone, n=3):
    emb = torch.randn(1, 32, 16, 16)
    boxes = torch.tensor([[4.0, 4.0, 40.0, 40.0], [10.0, 8.0, 60.0, 50.0], [0.0, 0.0, 63.0, 63.0]])[:n]
    sparse, dense = backbone.prompt_encoder(points=None, boxes=boxes, masks=None)
    return emb, backbone.prompt_encoder.get_dense_pe(), sparse, dense


def test_experts_off_is_sams_own_output():
    backbone = build_backbone("tiny")
    decoder = MoTEMaskDecoder(mask_decoder=backbone.mask_decoder, num_expert_tokens=0)
    emb, pe, sparse, dense = _inputs(backbone)
    with torch.no_grad():
        ref_masks, ref_iou = backbone.mask_decoder(
            image_embeddings=emb, image_pe=pe, sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=False,
        )
        out = decoder(image_embeddings=emb, image_pe=pe, sparse_prompt_embeddings=sparse,
                      dense_prompt_embeddings=dense, image_index=torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(out.low_res_masks, ref_masks, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.iou_predictions, ref_iou, rtol=1e-5, atol=1e-5)
    assert out.routing == []
    assert decoder.hypernetwork is None and len(decoder.mote_blocks) == 0


def test_token_offsets_and_initialisation():
    backbone = build_backbone("tiny")
    decoder = MoTEMaskDecoder(mask_decoder=backbone.mask_decoder, num_expert_tokens=3, expert_hidden_dim=16)
    assert (decoder.expert_token_start, decoder.expert_token_end) == (5, 8)
    sam_token = backbone.mask_decoder.mask_tokens.weight[0]
    assert (decoder.expert_tokens.weight - sam_token).abs().max() < 0.2
    for p_new, p_sam in zip(decoder.hypernetwork.parameters(), backbone.mask_decoder.output_hypernetworks_mlps[0].parameters()):
        assert torch.equal(p_new, p_sam) and p_new is not p_sam and p_new.requires_grad
    for mote, layer in zip(decoder.mote_blocks, backbone.mask_decoder.transformer.layers):
        assert torch.equal(mote.norm.weight, layer.norm4.weight)
    assert len(decoder.mote_blocks) == len(backbone.mask_decoder.transformer.layers) == 2


def test_one_routing_per_block_and_ppt_tokens():
    backbone = build_backbone("tiny")
    decoder = MoTEMaskDecoder(mask_decoder=backbone.mask_decoder, num_expert_tokens=4, expert_hidden_dim=16).eval()
    emb, pe, sparse, dense = _inputs(backbone, n=2)
    out = decoder(image_embeddings=emb, image_pe=pe, sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                  image_index=torch.zeros(2, dtype=torch.long), ppt_tokens=torch.randn(2, 2, 32))
    assert out.low_res_masks.shape == (2, 1, 64, 64) and out.iou_predictions.shape == (2, 1)
    assert len(out.routing) == 2 and out.routing[0].gates.shape == (2, 4, 4)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"num_expert_tokens": -1}, ValueError, r"num_expert_tokens must be >= 0 \(0 switches experts off\), got -1"),
        ({"num_expert_tokens": 2.0}, TypeError, "num_expert_tokens must be an int, got float"),
        ({"combine": "all"}, ValueError, "combine must be one of"),
        ({"top_k": 9}, ValueError, r"top_k must be in \[1, num_experts=4\], got 9"),
        ({"token_init_noise": -0.5}, ValueError, "token_init_noise must be >= 0, got -0.5"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    backbone = build_backbone("tiny")
    with pytest.raises(error, match=message):
        MoTEMaskDecoder(mask_decoder=backbone.mask_decoder, **kwargs)


def test_needs_a_sam_mask_decoder():
    with pytest.raises(TypeError, match="mask_decoder must be a segment_anything MaskDecoder, got Linear"):
        MoTEMaskDecoder(mask_decoder=torch.nn.Linear(2, 2))
