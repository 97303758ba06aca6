from __future__ import annotations

import pytest
import torch

from segmote_monai.networks import MoTEMaskDecoder, build_backbone
from segmote_monai.networks.two_way import block_with_readers, few_query_attention, sam_few_query_attention


def _inputs(backbone, n=3):
    emb = torch.randn(1, 32, 16, 16)
    boxes = torch.tensor([[4.0, 4.0, 40.0, 40.0], [10.0, 8.0, 60.0, 50.0], [0.0, 0.0, 63.0, 63.0]])[:n]
    sparse, dense = backbone.prompt_encoder(points=None, boxes=boxes, masks=None)
    return emb, backbone.prompt_encoder.get_dense_pe(), sparse, dense


def _sam(backbone, emb, pe, sparse, dense):
    with torch.no_grad():
        return backbone.mask_decoder(image_embeddings=emb, image_pe=pe, sparse_prompt_embeddings=sparse,
                                     dense_prompt_embeddings=dense, multimask_output=False)


def _decode(decoder, emb, pe, sparse, dense, **kwargs):
    with torch.no_grad():
        return decoder(image_embeddings=emb, image_pe=pe, sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                       image_index=torch.zeros(len(sparse), dtype=torch.long), **kwargs)


def test_experts_off_is_sams_own_output():
    backbone = build_backbone("tiny")
    decoder = MoTEMaskDecoder(mask_decoder=backbone.mask_decoder, num_expert_tokens=0)
    emb, pe, sparse, dense = _inputs(backbone)
    ref_masks, ref_iou = _sam(backbone, emb, pe, sparse, dense)
    out = _decode(decoder, emb, pe, sparse, dense)
    torch.testing.assert_close(out.low_res_masks, ref_masks, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.iou_predictions, ref_iou, rtol=1e-5, atol=1e-5)
    assert out.routing == []
    assert decoder.hypernetwork is None and len(decoder.mote_blocks) == 0


@pytest.mark.parametrize("options", [{}, {"num_experts": 0}, {"experts_write_image": True},
                                     {"trainable_reader": True}])
def test_a_new_model_predicts_exactly_what_sam_predicts(options):
    """Read-only experts and zero-initialised corrections: training starts at SAM's own output."""
    backbone = build_backbone("tiny")
    decoder = MoTEMaskDecoder(mask_decoder=backbone.mask_decoder, expert_hidden_dim=16, **options)
    emb, pe, sparse, dense = _inputs(backbone)
    ref_masks, ref_iou = _sam(backbone, emb, pe, sparse, dense)
    out = _decode(decoder.eval(), emb, pe, sparse, dense)
    torch.testing.assert_close(out.low_res_masks, ref_masks, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.iou_predictions, ref_iou, rtol=0, atol=1e-6)


def test_read_only_experts_never_change_sams_path():
    """Whatever the expert tokens and the correction are, expert_scale 0 is SAM; 1 differs from it."""
    backbone = build_backbone("tiny")
    decoder = MoTEMaskDecoder(mask_decoder=backbone.mask_decoder, expert_hidden_dim=16).eval()
    with torch.no_grad():
        for p in (decoder.expert_tokens.weight, *decoder.hypernetwork.parameters(), decoder.mote_blocks[0].experts.w2):
            p.normal_()
    emb, pe, sparse, dense = _inputs(backbone)
    ref_masks, _ = _sam(backbone, emb, pe, sparse, dense)
    torch.testing.assert_close(_decode(decoder, emb, pe, sparse, dense, expert_scale=0.0).low_res_masks, ref_masks,
                               rtol=0, atol=1e-6)
    assert (_decode(decoder, emb, pe, sparse, dense).low_res_masks - ref_masks).abs().max() > 1e-2


def test_experts_that_write_the_image_start_at_sam_and_scale_to_it():
    backbone = build_backbone("tiny")
    decoder = MoTEMaskDecoder(mask_decoder=backbone.mask_decoder, expert_hidden_dim=16, experts_write_image=True).eval()
    emb, pe, sparse, dense = _inputs(backbone)
    ref_masks, _ = _sam(backbone, emb, pe, sparse, dense)
    torch.testing.assert_close(_decode(decoder, emb, pe, sparse, dense).low_res_masks, ref_masks, rtol=0, atol=1e-6)
    with torch.no_grad():
        decoder.image_update.attention.out_proj.weight.normal_()
    assert (_decode(decoder, emb, pe, sparse, dense).low_res_masks - ref_masks).abs().max() > 1e-3
    torch.testing.assert_close(_decode(decoder, emb, pe, sparse, dense, expert_scale=0.0).low_res_masks, ref_masks,
                               rtol=0, atol=1e-6)
    assert decoder.image_update.attention.q_proj.weight.requires_grad
    assert not backbone.mask_decoder.transformer.layers[-1].cross_attn_image_to_token.q_proj.weight.requires_grad


def test_image_reads_experts_equals_sams_attention():
    from segment_anything.modeling.transformer import Attention

    from segmote_monai.networks.two_way import ImageReadsExperts

    module = ImageReadsExperts(Attention(32, 4, downsample_rate=2))
    torch.nn.init.normal_(module.attention.out_proj.weight)
    torch.nn.init.normal_(module.attention.out_proj.bias)
    image, image_pe, experts, expert_pe = torch.randn(2, 50, 32), torch.randn(1, 50, 32), torch.randn(2, 4, 32), \
        torch.randn(2, 4, 32)
    torch.testing.assert_close(module(image, image_pe, experts, expert_pe),
                               module.attention(q=image + image_pe, k=experts + expert_pe, v=experts),
                               rtol=1e-4, atol=1e-5)


def test_shared_attention_is_the_papers_layout():
    """In the shared sequence SAM's tokens see the expert tokens: the prediction moves even at init."""
    backbone = build_backbone("tiny")
    decoder = MoTEMaskDecoder(mask_decoder=backbone.mask_decoder, expert_attention="shared", mask_head="routed",
                              expert_hidden_dim=16).eval()
    emb, pe, sparse, dense = _inputs(backbone)
    ref_masks, _ = _sam(backbone, emb, pe, sparse, dense)
    out = _decode(decoder, emb, pe, sparse, dense)
    assert out.low_res_masks.shape == ref_masks.shape and (out.low_res_masks - ref_masks).abs().max() > 1e-3


def test_token_initialisation_and_norms():
    backbone = build_backbone("tiny")
    sam = backbone.mask_decoder
    decoder = MoTEMaskDecoder(mask_decoder=sam, num_expert_tokens=6, expert_hidden_dim=16, token_init_noise=0.0)
    for t in range(6):  # token t from SAM's mask token t mod 4
        assert torch.equal(decoder.expert_tokens.weight[t], sam.mask_tokens.weight[t % 4])
    first = MoTEMaskDecoder(mask_decoder=sam, num_expert_tokens=3, expert_hidden_dim=16, token_init="sam_first_token",
                            token_init_noise=0.0)
    assert torch.equal(first.expert_tokens.weight, sam.mask_tokens.weight[:1].expand(3, -1))
    for mote, layer in zip(decoder.mote_blocks, sam.transformer.layers):  # tokens leave a block through norm3
        assert torch.equal(mote.norm.weight, layer.norm3.weight) and torch.equal(mote.norm.bias, layer.norm3.bias)
    other = MoTEMaskDecoder(mask_decoder=sam, expert_hidden_dim=16, mote_norm="norm4")
    assert torch.equal(other.mote_blocks[1].norm.weight, sam.transformer.layers[1].norm4.weight)
    assert len(decoder.mote_blocks) == len(sam.transformer.layers) == 2


@pytest.mark.parametrize("mask_head", ["residual", "routed"])
def test_hypernetwork_initialisation(mask_head):
    backbone = build_backbone("tiny")
    sam_mlp = backbone.mask_decoder.output_hypernetworks_mlps[0]
    decoder = MoTEMaskDecoder(mask_decoder=backbone.mask_decoder, expert_hidden_dim=16, mask_head=mask_head)
    new, old = list(decoder.hypernetwork.layers), list(sam_mlp.layers)
    for a, b in zip(new[:-1], old[:-1]):
        assert torch.equal(a.weight, b.weight) and a.weight is not b.weight and a.weight.requires_grad
    if mask_head == "residual":  # the correction starts at zero
        assert not new[-1].weight.any() and not new[-1].bias.any()
    else:
        assert torch.equal(new[-1].weight, old[-1].weight)


def test_one_routing_per_block_and_ppt_tokens():
    backbone = build_backbone("tiny")
    decoder = MoTEMaskDecoder(mask_decoder=backbone.mask_decoder, num_expert_tokens=4, expert_hidden_dim=16).eval()
    emb, pe, sparse, dense = _inputs(backbone, n=2)
    out = _decode(decoder, emb, pe, sparse, dense, ppt_tokens=torch.randn(2, 2, 32))
    assert out.low_res_masks.shape == (2, 1, 64, 64) and out.iou_predictions.shape == (2, 1)
    assert len(out.routing) == 2 and out.routing[0].gates.shape == (2, 4, 4)
    assert out.expert_tokens.shape == (2, 4, 32)


def test_no_mote_control_has_tokens_but_no_router():
    backbone = build_backbone("tiny")
    decoder = MoTEMaskDecoder(mask_decoder=backbone.mask_decoder, num_experts=0).eval()
    emb, pe, sparse, dense = _inputs(backbone, n=2)
    out = _decode(decoder, emb, pe, sparse, dense)
    assert len(decoder.mote_blocks) == 0 and out.routing == [] and out.expert_tokens.shape == (2, 4, 32)


@pytest.mark.parametrize("heads,internal", [(1, 8), (2, 16), (4, 8)])
def test_few_query_attention_equals_sams_attention(heads, internal):
    from segment_anything.modeling.transformer import Attention

    attention = Attention(16, heads, downsample_rate=16 // internal)
    q, k, v = torch.randn(3, 5, 16), torch.randn(3, 40, 16), torch.randn(3, 40, 16)
    pe = torch.randn(1, 40, 16)
    torch.testing.assert_close(sam_few_query_attention(attention, q, k, v), attention(q=q, k=k, v=v))
    torch.testing.assert_close(sam_few_query_attention(attention, q, k, v, key_pe=pe), attention(q=q, k=k + pe, v=v))


def test_few_query_attention_equals_torch_multihead_attention():
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    q, k, v = torch.randn(2, 3, 16), torch.randn(2, 30, 16), torch.randn(2, 30, 16)
    w, b = mha.in_proj_weight, mha.in_proj_bias
    ours = few_query_attention(q, k, v, q_proj=(w[:16], b[:16]), k_weight=w[16:32], v_proj=(w[32:], b[32:]),
                               out_proj=mha.out_proj, num_heads=4)
    torch.testing.assert_close(ours, mha(q, k, v, need_weights=False)[0])


def test_block_with_readers_is_sams_block_and_reads_like_a_shared_sequence():
    """SAM's rows and the image are what SAM's block returns without the readers; a reader's update is what the
    block gives it when it sits in the sequence (where SAM's rows would change)."""
    backbone = build_backbone("tiny")
    for layer in backbone.mask_decoder.transformer.layers:
        sam_tokens, sam_pe, readers = torch.randn(2, 5, 32), torch.randn(2, 5, 32), torch.randn(2, 3, 32)
        keys, key_pe = torch.randn(2, 256, 32), torch.randn(1, 256, 32)
        alone_q, alone_k = layer(queries=sam_tokens, keys=keys, query_pe=sam_pe, key_pe=key_pe.expand(2, -1, -1))
        every, every_pe = torch.cat([sam_tokens, readers], dim=1), torch.cat([sam_pe, readers], dim=1)
        shared, _ = layer(queries=every, keys=keys, query_pe=every_pe, key_pe=key_pe.expand(2, -1, -1))
        q, k, ours = block_with_readers(layer, queries=sam_tokens, query_pe=sam_pe, readers=readers,
                                        reader_pe=readers, keys=keys, key_pe=key_pe)
        torch.testing.assert_close(q, alone_q, rtol=0, atol=1e-5)
        torch.testing.assert_close(k, alone_k, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours, shared[:, 5:], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(shared[:, :5], alone_q, atol=1e-3)  # in a shared sequence SAM's rows would move


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"num_expert_tokens": -1}, ValueError, r"num_expert_tokens must be >= 0 \(0 switches experts off\), got -1"),
        ({"num_expert_tokens": 2.0}, TypeError, "num_expert_tokens must be an int, got float"),
        ({"num_experts": -2}, ValueError, r"num_experts must be >= 0 \(0: expert tokens without MoTE\), got -2"),
        ({"combine": "all"}, ValueError, "combine must be one of"),
        ({"top_k": 9}, ValueError, r"top_k must be in \[1, num_experts=4\], got 9"),
        ({"token_init_noise": -0.5}, ValueError, "token_init_noise must be >= 0, got -0.5"),
        ({"expert_attention": "cross"}, ValueError, r"expert_attention must be one of \['read_only', 'shared'\], got 'cross'"),
        ({"mask_head": "sam"}, ValueError, r"mask_head must be one of \['residual', 'routed'\], got 'sam'"),
        ({"token_init": "random"}, ValueError, r"token_init must be one of \['sam_mask_tokens', 'sam_first_token'\]"),
        ({"mote_norm": "norm1"}, ValueError, r"mote_norm must be one of \['norm3', 'norm4'\], got 'norm1'"),
        ({"router_noise_std": 0.0}, ValueError, "noise_std must be > 0, got 0.0"),
        ({"experts_write_image": True, "expert_attention": "shared"}, ValueError, "experts_write_image needs expert"),
        ({"trainable_reader": True, "num_expert_tokens": 0}, ValueError, "trainable_reader needs expert tokens"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    backbone = build_backbone("tiny")
    with pytest.raises(error, match=message):
        MoTEMaskDecoder(mask_decoder=backbone.mask_decoder, **kwargs)


def test_needs_a_sam_mask_decoder():
    with pytest.raises(TypeError, match="mask_decoder must be a segment_anything MaskDecoder, got Linear"):
        MoTEMaskDecoder(mask_decoder=torch.nn.Linear(2, 2))
