"""Where training's weights land: the bundle's model.pt gets the best validated weights, or the last ones when
no validation ran (MONAI Label with no validation split); a finished run is not resumed."""

from __future__ import annotations

from ignite.engine import Engine, Events

from segmote_monai.handlers import TrainableCheckpointSaver, TrainingResume
from segmote_monai.networks import read_trainable
from tests.conftest import tiny_segmote


def _engines(metrics):
    """A trainer of ``len(metrics)`` epochs whose evaluator reports ``metrics[epoch - 1]`` (None: no validation)."""
    trainer = Engine(lambda e, b: None)
    evaluator = Engine(lambda e, b: e.state.metrics.update(val_mean_dice=metrics[trainer.state.epoch - 1]))

    @trainer.on(Events.EPOCH_COMPLETED)
    def validate(engine):
        if metrics[engine.state.epoch - 1] is not None:
            evaluator.run([0])

    return trainer, evaluator


def test_model_path_gets_the_best_validated_weights(tmp_path):
    model = tiny_segmote()
    trainer, evaluator = _engines([0.5, 0.7, 0.6])
    TrainableCheckpointSaver(tmp_path / "out", model, evaluator=evaluator, model_path=tmp_path / "model.pt",
                             metadata={"labels": {"1": "organ"}}).attach(trainer)
    saved = []
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: saved.append((tmp_path / "model.pt").read_bytes()))
    for p in model.parameters():  # each epoch's weights differ, so the file tells which epoch wrote it
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda e, p=p: p.data.add_(0.1) if p.requires_grad else None)
    trainer.run([0], max_epochs=3)
    assert saved[0] != saved[1] == saved[2]  # written at 0.5 and 0.7, not at 0.6
    assert read_trainable(tmp_path / "model.pt")["metadata"]["labels"] == {"1": "organ"}
    assert (tmp_path / "out" / "segmote_best.pt").is_file() and (tmp_path / "out" / "segmote_latest.pt").is_file()


def test_without_validation_model_path_gets_the_last_weights(tmp_path):
    trainer, evaluator = _engines([None, None])
    TrainableCheckpointSaver(tmp_path / "out", tiny_segmote(), evaluator=evaluator,
                             model_path=tmp_path / "model.pt").attach(trainer)
    trainer.run([0], max_epochs=2)
    assert (tmp_path / "model.pt").is_file() and not (tmp_path / "out" / "segmote_best.pt").exists()


def test_a_finished_run_trains_anew_and_an_unfinished_one_resumes(tmp_path, caplog):
    import torch

    model = tiny_segmote()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    trainer = Engine(lambda e, b: None)
    TrainingResume(tmp_path, model, optimizer).attach(trainer)
    trainer.run([0], max_epochs=2)
    epochs = []
    again = Engine(lambda e, b: None)
    TrainingResume(tmp_path, model, optimizer).attach(again)
    again.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    with caplog.at_level("INFO"):
        again.run([0], max_epochs=2)
    assert epochs == [1, 2] and "finished (epoch 2 of 2): starting a new run" in caplog.text
    longer = Engine(lambda e, b: None)
    TrainingResume(tmp_path, model, optimizer).attach(longer)
    longer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    longer.run([0], max_epochs=3)
    assert epochs[2:] == [3]  # the saved run of 2 epochs continues to a third
