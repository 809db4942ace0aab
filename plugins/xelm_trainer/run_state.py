"""The data a run carries between its parts: its checked ``Inputs`` and the ``RunState`` a
checkpoint stores."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xelm_cli.api import Bundle, Shards

from .options import TrainOptions


@dataclass
class RunState:
    """What a checkpoint stores besides tensors: enough to continue exactly."""

    step: int = 0
    cursor: int = 0  # blocks of the stream consumed so far (the data position)
    loss_curve: list[list[float]] = field(default_factory=list)
    valid_curve: list[list[float]] = field(default_factory=list)
    seconds: float = 0.0  # in steps: what throughput is measured by
    wall_seconds: float = 0.0  # everything from the start of the loop: validations, checkpoints
    # this process's time from the trainer's start to its loop (loading, sharding, resuming)
    setup_seconds: float = 0.0


@dataclass
class Inputs:
    bundle: Bundle
    shards: Shards
    valid: Shards | None
    languages: list[str]
    options: TrainOptions
    steps: int
    framing: Any  # xelm_cli.bundle.framing.Framing: the start and end tokens of every document
    # --resume: the (step, directory) of the checkpoint rank 0 found, which every rank reads
    resume_from: tuple[int, Path] | None = None
