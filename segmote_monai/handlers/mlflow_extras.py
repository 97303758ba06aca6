"""What MONAI's MLFlowHandler does not log by itself: the run's hyper-parameters and the trainable
checkpoint. Works through the MLFlowHandler that ``--tracking mlflow`` attaches to the same engine; does
nothing without one."""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler

__all__ = ["MLflowExtras"]


def _tracking_handler(engine: Engine) -> MLFlowHandler | None:
    """The MLFlowHandler attached to ``engine``, found through its registered callbacks."""
    for callbacks in engine._event_handlers.values():  # ignite keeps no public registry of handler objects
        for callback, _, _ in callbacks:
            owner = getattr(callback, "__self__", None)
            if isinstance(owner, MLFlowHandler):
                return owner
    return None


class MLflowExtras:
    """Logs ``params`` (plain values, no paths) into the tracked run once it has started, and the files that
    ``artifacts`` (paths or glob patterns) match when training completes, e.g. the trainable checkpoint and the
    executed config ``--tracking`` writes. Attach to the trainer, before the MLFlowHandler that
    ``--tracking mlflow`` appends (it closes the run on completion)."""

    def __init__(self, params: Mapping[str, Any], artifacts: list[str | os.PathLike] = ()) -> None:
        self.params = {k: str(v) for k, v in params.items()}
        self.artifacts = [str(a) for a in artifacts]
        self._logged = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._log_params)
        engine.add_event_handler(Events.COMPLETED, self._log_artifacts)

    @staticmethod
    def _run(engine: Engine) -> tuple[Any, str] | None:
        tracker = _tracking_handler(engine)
        if tracker is None or tracker.cur_run is None:
            return None
        return tracker.client, tracker.cur_run.info.run_id

    def _log_params(self, engine: Engine) -> None:
        run = None if self._logged else self._run(engine)
        if run is not None:
            client, run_id = run
            for key, value in self.params.items():
                client.log_param(run_id, key, value)
            self._logged = True

    def _log_artifacts(self, engine: Engine) -> None:
        run = self._run(engine)
        if run is not None:
            client, run_id = run
            for pattern in self.artifacts:
                for path in sorted(glob.glob(pattern)):
                    if Path(path).is_file():
                        client.log_artifact(run_id, path)
