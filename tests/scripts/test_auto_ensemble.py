from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_segmote

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def auto_ensemble(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import auto_ensemble

    yield auto_ensemble
    for name in ("auto_ensemble", "accuracy", "benchmark_data", "common"):
        sys.modules.pop(name, None)


def heads(count: int):
    """Tiny models on one frozen backbone, their trainable parts moved apart as different seeds' training would."""
    out = []
    for k in range(count):
        head = tiny_segmote().eval()
        generator = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for p in head.parameters():
                if p.requires_grad:
                    p.add_(0.1 * torch.randn(p.shape, generator=generator))
        out.append(head)
    return out


@pytest.mark.parametrize("count", [2, 3])
def test_predict_is_the_mean_of_the_heads(auto_ensemble, count):
    members = heads(count)
    ensemble = auto_ensemble.HeadEnsemble(heads=members)
    images = torch.randn(1, 3, 64, 64)
    embeddings = ensemble.embed_images(images)
    boxes = torch.tensor([[8.0, 8.0, 40.0, 40.0], [20.0, 10.0, 60.0, 50.0]])
    with torch.no_grad():
        out = ensemble.predict(image_embeddings=embeddings, boxes=boxes)
        alone = [m.predict(image_embeddings=embeddings, boxes=boxes) for m in members]
    assert out.masks.shape == alone[0].masks.shape == (2, 1, 64, 64)
    torch.testing.assert_close(out.masks, torch.stack([a.masks for a in alone]).mean(0))
    torch.testing.assert_close(out.iou_predictions, torch.stack([a.iou_predictions for a in alone]).mean(0))
    assert not torch.equal(alone[0].masks, alone[1].masks)  # the heads differ, so the mean is not one of them


def test_copies_of_one_head_give_that_head(auto_ensemble):
    head = heads(1)[0]
    ensemble = auto_ensemble.HeadEnsemble(heads=[head, copy.deepcopy(head)])
    embeddings = head.embed_images(torch.randn(1, 3, 64, 64))
    boxes = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    with torch.no_grad():
        torch.testing.assert_close(ensemble.predict(image_embeddings=embeddings, boxes=boxes).masks,
                                   head.predict(image_embeddings=embeddings, boxes=boxes).masks)


def test_heads_on_other_encoders_are_refused(auto_ensemble):
    a, b = heads(2)
    with torch.no_grad():
        next(b.image_encoder.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="head 1 has another image encoder than head 0"):
        auto_ensemble.HeadEnsemble(heads=[a, b])


def test_one_head_is_no_ensemble(auto_ensemble):
    with pytest.raises(ValueError, match="at least 2 heads, got 1"):
        auto_ensemble.HeadEnsemble(heads=heads(1))


def test_training_samples_from_the_runs_record(auto_ensemble, tmp_path):
    checkpoint = tmp_path / "run" / "models" / "segmote_latest.pt"
    checkpoint.parent.mkdir(parents=True)
    assert auto_ensemble.training_samples(checkpoint) is None
    command = ["-m", "monai.bundle", "run", "training", "--max_epochs", "20", "--samples_per_epoch", "150"]
    (tmp_path / "run" / "done.json").write_text(json.dumps({"command": command}))
    assert auto_ensemble.training_samples(checkpoint) == 3000


def test_a_class_conditioned_head_beside_a_plain_one_is_refused(auto_ensemble):
    plain, conditioned = tiny_segmote(), tiny_segmote(num_condition_classes=3)
    with pytest.raises(ValueError, match="head 1 class_conditioned=True, head 0 False"):
        auto_ensemble.HeadEnsemble(heads=[plain, conditioned])
