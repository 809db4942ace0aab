"""Training runs for the tests of several modules: small trainer options, a request built from
them, and a run that stops at a chosen step as a killed process would."""

from dataclasses import replace
from pathlib import Path

from xelm_trainer.loop import TrainingRun

from xelm_cli.plugin.contracts import TrainRequest

SMALL_OPTIONS = {"block_size": 32, "batch_size": 4, "lr": 3e-3, "log_every": 4}
# `xelm plan --train-args` of small runs: the block and batch sizes above.
TRAIN_ARGS = "--block-size 32 --batch-size 4"


def request(seed_bundle: Path, data: Path, out: Path, **changes: object) -> TrainRequest:
    """A 2048-token request with ``SMALL_OPTIONS`` (updated by ``options``) and ``changes``."""
    options = {**SMALL_OPTIONS, **changes.pop("options", {})}  # type: ignore[dict-item]
    base = TrainRequest(seed_bundle, data, out, tokens=2048, options=options, command="test")
    return replace(base, **changes)  # type: ignore[arg-type]


class Killed(Exception):
    """Raised by a run the test stops, standing for the process being killed."""


class StopsAt(TrainingRun):
    """A training run killed (``Killed``) at the end of step ``step``."""

    def __init__(self, step: int) -> None:
        self.stop = step

    def on_step_end(self, step: int) -> None:
        if step == self.stop:
            raise Killed
