"""What the trainer tells its user: a progress bar (a plain line per logged step where stderr is
no terminal), a note when a run passes over its data more than once or a block is longer than
the model's positions, out of memory, a block longer than a learned position table and a
missing FlashAttention package as one line naming the way out."""

import importlib.util
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from xelm_cli.api import (
    Shards,
    TrainRequest,
    UsageError,
    declared_positions,
    list_checkpoints,
    past_positions_line,
    stderr_progress,
)

from .options import TrainOptions

# --attention: (module transformers looks for, package, how to install it)
FLASH_PACKAGES = {
    "flash_attention_2": ("flash_attn", "flash-attn", "pip install flash-attn"),
    "flash_attention_3": (
        "flash_attn_interface",
        "flash-attn-3",
        "build it from hopper/ in github.com/Dao-AILab/flash-attention",
    ),
}


def require_attention_package(attention: str) -> None:
    """FlashAttention needs its own package: refused before the model is read."""
    if attention not in FLASH_PACKAGES:
        return
    module, package, install = FLASH_PACKAGES[attention]
    if importlib.util.find_spec(module) is None:
        raise UsageError(
            f"--attention {attention} needs the {package} package: {install}, "
            "or use --attention sdpa"
        )


def passes_note(tokens: int, shards: Shards, languages: list[str], framing: Any) -> str | None:
    """A line when ``tokens`` are more than one pass over the shards' documents of the run's
    languages as the block stream packs them, with each document's start and end tokens
    (``framing``, a ``Framing``; ``BlockStream.epoch_tokens``): the stream then repeats
    every document."""
    framed = sum(token is not None for token in (framing.start, framing.end))
    documents = sum(shards.stats[lang].documents for lang in languages)
    held = shards.tokens_in(languages) + framed * documents
    if tokens <= held:
        return None
    passes = tokens / held
    about = f"{passes:.1f}" if passes < 10 else f"{passes:,.0f}"
    return (
        f"xelm: --tokens {tokens:,} is about {about} passes over the {held:,} tokens of these "
        f"shards' documents in {', '.join(languages)}, with their start and end tokens (the "
        "paper trains one pass)"
    )


def positions_note(block_size: int, bundle: Path) -> str | None:
    """A line when a block is longer than the positions the model declares."""
    return past_positions_line(block_size, declared_positions(bundle), "--block-size {}")


def out_of_memory(exc: RuntimeError) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError ("can't allocate memory")."""
    return isinstance(exc, torch.OutOfMemoryError) or bool(
        re.search(r"can(no|')t allocate memory", str(exc), re.IGNORECASE)
    )


def out_of_memory_line(request: TrainRequest, options: TrainOptions, done: int) -> str:
    line = (
        f"out of memory in step {done + 1} at --batch-size {options.batch_size} x --block-size "
        f"{options.block_size}: "
    )
    smaller = smaller_batch(options.batch_size)
    # neither --batch-size, --gradient-checkpointing nor --fsdp is in the run's identity
    # (RUN_IDENTITY in resuming.py): --global-batch and --block-size are
    if smaller:
        line += (
            f"use a smaller --batch-size with --global-batch {options.batch_tokens} (gradient "
            "accumulation keeps the step size) or --gradient-checkpointing; `xelm plan "
            "--memory SIZE` finds the largest batch that fits"
        )
        resumes = (
            f"--resume --batch-size {smaller} --global-batch {options.batch_tokens} continues "
            "from it (or --resume --gradient-checkpointing)"
        )
    else:  # a micro-batch of one block: less memory per block, or the model sharded
        ways = [] if options.gradient_checkpointing else ["--gradient-checkpointing"]
        ways += [] if options.fsdp else ["--fsdp (under torchrun)"]
        line += (
            f"a micro-batch is one block already: use {_either([*ways, 'a smaller --block-size'])}"
        )
        resumes = (
            f"{_either([f'--resume {way}' for way in ways])} continues from it" if ways else ""
        )
    if kept := list_checkpoints(request.checkpoint_dir):
        line += f"; the checkpoint of step {kept[-1][0]} stays"
        if resumes:
            line += f": {resumes}"
    return line


def _either(ways: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return ways[0] if len(ways) == 1 else f"{', '.join(ways[:-1])} or {ways[-1]}"


def smaller_batch(batch_size: int) -> int | None:
    """The largest micro-batch up to half of ``batch_size`` that divides it (so it divides the
    global batch too); None for a batch of 1."""
    return max(
        (size for size in range(1, batch_size // 2 + 1) if batch_size % size == 0), default=None
    )


class TrainProgress:
    """A rich progress bar on stderr with loss and tokens/s on terminals; elsewhere (logs,
    pipes, batch jobs) a plain line per logged step."""

    def __init__(self, total: int, done: int, shown: bool = True) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        self.progress = stderr_progress(
            TextColumn("train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
            shown=shown and sys.stderr.isatty(),  # a log gets the step lines instead
        )  # fmt: skip
        # nothing measured until the first logged step
        self.task = self.progress.add_task("train", total=total, completed=done, stats="loss -")
        self.lines = shown and not sys.stderr.isatty()
        self.total, self.done, self.started = total, done, time.perf_counter()

    def __enter__(self) -> "TrainProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, step: int, loss: float | None = None, speed: float | None = None) -> None:
        """Advance to ``step``; the loss and speed shown change on logged steps only."""
        if loss is None or speed is None:
            self.progress.update(self.task, completed=step)
        else:
            stats = f"loss {loss:.4f}  {speed:,.0f} tok/s"
            self.progress.update(self.task, completed=step, stats=stats)
            if self.lines:
                print(self.line(step, loss, speed), file=sys.stderr, flush=True)

    def line(self, step: int, loss: float, speed: float) -> str:
        """``step 300/781  loss 3.412  12,345 tok/s  1m02s elapsed, 1m38s left``: the time
        left at this run's pace so far."""
        elapsed = time.perf_counter() - self.started
        left = elapsed / (step - self.done) * (self.total - step)
        return (
            f"step {step}/{self.total}  loss {loss:.3f}  {speed:,.0f} tok/s  "
            f"{clock(elapsed)} elapsed, {clock(left)} left"
        )


def clock(seconds: float) -> str:
    """``45s``, ``1m02s``, ``3h07m``."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
