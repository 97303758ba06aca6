"""Validation Dice per class, by name: what StatsHandler prints and MLflow records each epoch."""

from __future__ import annotations

from collections import defaultdict

from ignite.engine import Engine, Events

__all__ = ["ClassDiceMetrics"]


class ClassDiceMetrics:
    """Averages the evaluator output's ``dice`` (class -> Dice, per volume) over the epoch into
    ``engine.state.metrics["val_dice_<name>"]``; with ``groups`` (a name -> its class ids, e.g. the datasets of a
    :class:`~segmote_monai.data.joint.JointDatalist`) also ``val_mean_dice_<group>``, the mean of its classes'.
    Under DDP each rank reports its own shard."""

    def __init__(self, labels: dict, groups: dict[str, list[int]] | None = None) -> None:
        self.labels = {int(k): str(v).replace(" ", "_") for k, v in labels.items()}
        self.groups = {str(k): [int(c) for c in v] for k, v in (groups or {}).items()}
        self._values: dict[int, list[float]] = defaultdict(list)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self._values.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def _accumulate(self, engine: Engine) -> None:
        output = engine.state.output
        for c, value in (output.get("dice", {}) if isinstance(output, dict) else {}).items():
            self._values[int(c)].append(float(value))

    def _publish(self, engine: Engine) -> None:
        means = {c: sum(values) / len(values) for c, values in sorted(self._values.items())}
        for c, mean in means.items():
            engine.state.metrics[f"val_dice_{self.labels.get(c, c)}"] = mean
        if len(self.groups) > 1:
            for name, classes in self.groups.items():
                scored = [means[c] for c in classes if c in means]
                if scored:
                    engine.state.metrics[f"val_mean_dice_{name}"] = sum(scored) / len(scored)
