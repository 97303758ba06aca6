from __future__ import annotations

import pytest
import torch

from segmote_monai.errors import CheckpointMismatchError, InputFileError
from segmote_monai.networks import (
    build_from_checkpoint,
    build_segmote,
    load_trainable,
    save_trainable,
    trainable_state_dict,
)
from tests.conftest import TINY_WIDTHS, tiny_segmote

IMAGES = torch.rand(2, 3, 64, 64)
BOXES = torch.tensor([[4.0, 4.0, 40.0, 40.0], [10.0, 8.0, 60.0, 50.0]])


def _trained(**options):
    model = tiny_segmote(**options)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_round_trip_reproduces_outputs_exactly(tmp_path):
    model = _trained()
    path = save_trainable(model, tmp_path / "segmote.pt")
    fresh = tiny_segmote().eval()
    assert not torch.equal(fresh.predict(images=IMAGES, boxes=BOXES).masks, model.predict(images=IMAGES, boxes=BOXES).masks)
    load_trainable(fresh, path)
    assert torch.equal(fresh.predict(images=IMAGES, boxes=BOXES).masks, model.predict(images=IMAGES, boxes=BOXES).masks)
    assert torch.equal(fresh(IMAGES), model(IMAGES))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_holds_only_the_trainable_part_and_is_weights_only(tmp_path):
    model = _trained()
    path = save_trainable(model, tmp_path / "segmote.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["backbone"] == {"name": "tiny", "weights_sha256": model.backbone_sha256}
    assert payload["config"] == model.config()
    keys = set(payload["model"])
    assert keys == set(trainable_state_dict(model))
    assert not any(k.startswith(("image_encoder.", "prompt_encoder.", "decoder.mask_decoder.")) for k in keys)
    assert any(k.startswith("decoder.mote_blocks.") for k in keys) and any(k.startswith("ppt.") for k in keys)
    assert "decoder.hypernetwork.layers.0.weight" in keys and "decoder.expert_tokens.weight" in keys


def test_unfrozen_decoder_is_saved_too(tmp_path):
    model = _trained(train_decoder=True)
    keys = set(torch.load(save_trainable(model, tmp_path / "c.pt"), weights_only=True)["model"])
    assert "decoder.mask_decoder.iou_token.weight" in keys


def test_half_storage(tmp_path):
    model = _trained()
    path = save_trainable(model, tmp_path / "half.pt", half=True)
    state = torch.load(path, weights_only=True)["model"]
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    fresh = load_trainable(tiny_segmote().eval(), path)
    torch.testing.assert_close(fresh(IMAGES), model(IMAGES), rtol=1e-2, atol=1e-2)


def test_other_configuration_is_refused(tmp_path):
    path = save_trainable(_trained(), tmp_path / "segmote.pt")
    with pytest.raises(CheckpointMismatchError, match=rf"^{path}: configuration differs: num_experts=4 in the file, 8 here"):
        load_trainable(tiny_segmote(num_experts=8), path)
    with pytest.raises(CheckpointMismatchError, match="combine='topk' in the file, 'top1' here"):
        load_trainable(tiny_segmote(combine="top1"), path)


def test_other_backbone_is_refused(tmp_path):
    path = save_trainable(_trained(), tmp_path / "segmote.pt")
    other = build_segmote("lite_medsam", random_weights=True, **TINY_WIDTHS)
    with pytest.raises(CheckpointMismatchError, match=rf"^{path}: trained on backbone tiny .* this model uses lite_medsam"):
        load_trainable(other, path)


def test_same_name_other_weights_is_refused(tmp_path):
    model = _trained()
    path = save_trainable(model, tmp_path / "segmote.pt")
    model.backbone_sha256 = "0" * 64
    with pytest.raises(CheckpointMismatchError, match=r"weights sha256 000000000000\)$"):
        load_trainable(model, path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(InputFileError, match=rf"^{path}: not a readable SegMoTE checkpoint"):
        load_trainable(tiny_segmote(), path)
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(InputFileError, match=rf"^{path}: not a SegMoTE trainable checkpoint"):
        load_trainable(tiny_segmote(), path)
    with pytest.raises(FileNotFoundError, match="missing.pt: SegMoTE checkpoint not found"):
        load_trainable(tiny_segmote(), tmp_path / "missing.pt")


def test_build_segmote_loads_a_checkpoint(tmp_path):
    model = _trained()
    path = save_trainable(model, tmp_path / "segmote.pt")
    rebuilt = build_segmote("tiny", trainable_checkpoint=path, **TINY_WIDTHS).eval()
    assert torch.equal(rebuilt(IMAGES), model(IMAGES))


def test_version_1_files_load_as_the_papers_layout(tmp_path):
    """Files written before the decoder options existed (the shipped checkpoint among them) predict what they
    predicted: the shared sequence and the routed head, the router's noise without a bias."""
    from segmote_monai.networks.checkpoint import read_trainable, trainable_payload

    torch.manual_seed(0)
    old = tiny_segmote(expert_attention="shared", mask_head="routed").eval()
    payload = trainable_payload(old)
    payload["version"] = 1
    payload["config"] = {k: v for k, v in payload["config"].items()
                         if k not in ("expert_attention", "mask_head", "experts_write_image")}
    payload["state_dict"] = {k: v for k, v in payload.pop("model").items() if not k.endswith("router.noise.bias")}
    torch.save(payload, tmp_path / "v1.pt")
    read = read_trainable(tmp_path / "v1.pt")
    assert read["version"] == 3 and read["config"]["expert_attention"] == "shared" and "state_dict" not in read
    assert read["config"]["mask_head"] == "routed" and not read["config"]["experts_write_image"]
    assert not read["model"]["decoder.mote_blocks.0.router.noise.bias"].any()
    new = build_segmote("tiny", **{**TINY_WIDTHS, **read["config"]}, trainable_checkpoint=tmp_path / "v1.pt").eval()
    images, boxes = torch.rand(1, 3, 64, 64), torch.tensor([[5.0, 6.0, 40.0, 50.0]])
    torch.testing.assert_close(new.predict(images=images, boxes=boxes).masks, old.predict(images=images, boxes=boxes).masks)


def test_unknown_versions_are_refused(tmp_path):
    from segmote_monai.networks.checkpoint import trainable_payload

    torch.save({**trainable_payload(tiny_segmote()), "version": 4}, tmp_path / "v4.pt")
    with pytest.raises(InputFileError, match="checkpoint version 4, this package reads 1, 2, 3"):
        load_trainable(tiny_segmote(), tmp_path / "v4.pt")


def test_version_2_files_read_with_weights_under_model(tmp_path):
    from segmote_monai.networks.checkpoint import read_trainable, trainable_payload

    model = tiny_segmote()
    payload = trainable_payload(model)
    payload["version"], payload["state_dict"] = 2, payload.pop("model")
    torch.save(payload, tmp_path / "v2.pt")
    read = read_trainable(tmp_path / "v2.pt")
    assert read["version"] == 3 and "state_dict" not in read and set(read["model"]) == set(payload["state_dict"])
    load_trainable(tiny_segmote(), tmp_path / "v2.pt")


@pytest.mark.parametrize("option, value", [("num_condition_classes", 3), ("presence_head", True)])
def test_files_from_before_an_option_load_without_it(tmp_path, option, value):
    from segmote_monai.networks.checkpoint import trainable_payload

    payload = trainable_payload(tiny_segmote())
    del payload["config"][option]
    torch.save(payload, tmp_path / "old.pt")
    load_trainable(tiny_segmote(), tmp_path / "old.pt")
    default = {"num_condition_classes": 0, "presence_head": False}[option]
    with pytest.raises(CheckpointMismatchError, match=f"{option}={default} in the file, {value} here"):
        load_trainable(tiny_segmote(**{option: value}), tmp_path / "old.pt")


def test_presence_head_round_trip(tmp_path):
    model = _trained(num_condition_classes=3, presence_head=True)
    save_trainable(model, tmp_path / "p.pt")
    loaded = build_from_checkpoint(tmp_path / "p.pt", backbone="tiny")
    torch.testing.assert_close(loaded.presence.mlp[0].weight, model.presence.mlp[0].weight)
    assert loaded.config()["presence_head"]


def test_class_conditioned_round_trip(tmp_path):
    model = _trained(num_condition_classes=3)
    save_trainable(model, tmp_path / "c.pt")
    loaded = build_segmote("tiny", trainable_checkpoint=tmp_path / "c.pt", **{**TINY_WIDTHS, "num_condition_classes": 3})
    torch.testing.assert_close(loaded.ppt.condition.weight, model.ppt.condition.weight)


def test_monai_checkpoint_loader_reads_the_file_under_model(tmp_path):
    """The file loads with MONAI's CheckpointLoader as MONAI Label's training adds it (``strict=False``)."""
    from ignite.engine import Engine
    from monai.handlers import CheckpointLoader

    torch.manual_seed(0)
    trained = tiny_segmote()
    for p in trained.parameters():
        if p.requires_grad:
            p.data.add_(1.0)
    save_trainable(trained, tmp_path / "model.pt")
    fresh = tiny_segmote()
    CheckpointLoader(load_path=str(tmp_path / "model.pt"), load_dict={"model": fresh}, strict=False)(Engine(lambda e, b: None))
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], value, msg=name)
