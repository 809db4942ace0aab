"""Timing a run (training speed, wall time, waiting for the device) and its metrics log."""

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from xelm_cli.api import write_bytes_atomic


def _step_of(line: str) -> float:
    """The step of a metrics line; infinite (dropped on resume) for a line torn by a kill."""
    try:
        record = json.loads(line)
        return float(record.get("step", 0)) if isinstance(record, dict) else math.inf
    except (ValueError, TypeError):
        return math.inf


class Interval:
    """Training speed between two logged steps (wall time, so it includes what the device did
    while the host ran ahead), less the validations and checkpoints in between."""

    def __init__(self, step: int, batch_tokens: int) -> None:
        self.step, self.batch_tokens = step, batch_tokens
        self.time = time.perf_counter()

    def leave_out(self, seconds: float) -> None:
        """Not count ``seconds`` (a validation, a checkpoint) in the current interval."""
        self.time += seconds

    def speed(self, step: int) -> float:
        now = time.perf_counter()
        tokens = (step - self.step) * self.batch_tokens
        speed = tokens / max(now - self.time, 1e-9)
        self.step, self.time = step, now
        return speed


def wait_for(device: torch.device) -> None:
    """Return once ``device`` has run the work queued on it (CUDA and MPS run behind the host)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class WallClock:
    """Seconds since it started plus ``before`` (a resumed run's time until its checkpoint)."""

    def __init__(self, before: float) -> None:
        self.before, self.started = before, time.perf_counter()

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.started


class MetricsLog:
    """``.OUT.ckpt/metrics.jsonl``: one JSON object per line; a resumed run drops later lines
    (and a last line torn by a kill)."""

    def __init__(self, path: Path, resumed_at: int, writes: bool = True) -> None:
        self.path = path
        self.writes = writes  # rank 0 only
        if not writes:
            return
        if path.exists():
            kept = [
                line
                for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
                if _step_of(line) <= resumed_at
            ]
            write_bytes_atomic(path, "".join(f"{line}\n" for line in kept).encode())

    def write(self, record: dict[str, Any]) -> None:
        if not self.writes:
            return
        # made at the first record: a run stopped before it leaves no empty .OUT.ckpt behind
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
