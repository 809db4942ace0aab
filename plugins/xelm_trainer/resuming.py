"""Checkpoints of a run and resuming from them: the run's identity, writing a checkpoint, and
reading one back (refusing one of another run) on every rank."""

import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from xelm_cli.api import (
    Bundle,
    TrainRequest,
    UsageError,
    XelmError,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint_state,
    save_checkpoint,
)

from .distributed import Ranks, gather_for_checkpoint, unwrap
from .options import TrainOptions, batch_size_for
from .rng import other_ranks_rng, restore_rank_rng
from .run_state import Inputs, RunState

# Options that change the numbers a run computes: a resumed run must have the same ones. Not
# --batch-size (nor the world size): a step reads the same global batch of blocks from the
# cursor however it is split into micro-batches, so after an out-of-memory a run continues
# with a smaller --batch-size at the same --global-batch.
RUN_IDENTITY = (
    "block_size", "global_batch_tokens", "lr", "schedule", "warmup_steps",
    "beta1", "beta2", "eps", "weight_decay", "clip", "seed", "lean_loss", "attention",
    "aux_loss", "router_only", "eval_blocks",
)  # fmt: skip
# What runs had of the identity's later keys before they were added: a checkpoint without one
# resumes when the option is at this value.
IDENTITY_BEFORE_ADDED: dict[str, Any] = {"aux_loss": None, "router_only": False}
# Keys added later whose value an older checkpoint's run cannot be known to have had: such a
# checkpoint (or one of a run without held-out shards) resumes with any.
IDENTITY_UNKNOWN_BEFORE = ("valid", "eval_blocks")


def run_identity(request: TrainRequest, inputs: Inputs) -> dict[str, Any]:
    resolved = inputs.options.as_dict()
    return {
        "bundle": inputs.bundle.digest,
        "data": inputs.shards.digest,
        "languages": inputs.languages,
        "tokens": request.tokens,
        # what the validation curve measures: a resume on other held-out blocks would mix two
        "valid": None if inputs.valid is None else inputs.valid.digest,
        **{name: resolved[name] for name in RUN_IDENTITY},
    }


def start_fresh(request: TrainRequest) -> None:
    if request.checkpoint_dir.exists():  # --force over an earlier run's checkpoints
        shutil.rmtree(request.checkpoint_dir)


def resume(
    request: TrainRequest,
    inputs: Inputs,
    model: Any,
    optimizer: Any,
    ranks: Ranks,
    device: torch.device,
) -> RunState:
    """The run state of the checkpoint rank 0 chose (``inputs.resume_from``), its weights into
    ``model`` and its optimiser state into ``optimizer``; without a ``model`` (FSDP's ranks
    that receive rank 0's) neither is read. Rank 0 decides the refusals (another run; a
    checkpoint it cannot read, which every rank reads at once): it says why in one line, the
    other ranks exit with its code."""
    assert inputs.resume_from is not None  # train() resumes only from a checkpoint rank 0 found
    step, path = inputs.resume_from
    refusal: XelmError | None = None
    if ranks.main:
        try:
            require_same_run(request, inputs, path)
        except XelmError as exc:
            refusal = exc
    follow_main(refusal, ranks)
    try:
        saved = read_checkpoint(path, model, optimizer)
    except XelmError as exc:
        refusal = exc
    follow_main(refusal, ranks)
    if refusal is not None:  # this rank alone could not read what rank 0 read
        raise refusal
    # checkpoints without world_size were written by one process or kept rank 0's states alone
    saved_world = saved.get("world_size", 1)
    restore_rank_rng(path, saved_world, inputs.options.seed, saved["step"], ranks, device)
    if ranks.main:
        print(f"xelm: resuming from step {step} ({path})", file=sys.stderr)
    return RunState(
        step=saved["step"],
        cursor=saved["cursor"],
        loss_curve=saved["loss_curve"],
        valid_curve=saved["valid_curve"],
        seconds=saved["seconds"],
        # a checkpoint written before wall_seconds: its time in steps, the nearest known
        wall_seconds=saved.get("wall_seconds", saved["seconds"]),
    )


def follow_main(refusal: XelmError | None, ranks: Ranks) -> None:
    """Rank 0's ``refusal`` (a collective): raised on rank 0, the other ranks exit with its
    code and say nothing (one line, not one a rank)."""
    code = ranks.from_main(None if refusal is None else refusal.exit_code)
    if ranks.main and refusal is not None:
        raise refusal
    if code is not None:
        raise SystemExit(code)  # rank 0 said why


def read_checkpoint(path: Path, model: Any, optimizer: Any) -> dict[str, Any]:
    """The checkpoint's JSON state, and with a ``model`` its weights and optimiser state."""
    if model is None:
        return read_checkpoint_state(path)
    return load_checkpoint(path, model=model, optimizer=optimizer)


def require_same_run(request: TrainRequest, inputs: Inputs, path: Path) -> None:
    """Refuse, in one line naming each difference with both values and the way back, a
    checkpoint of a run with other inputs or options than this one's."""
    identity = run_identity(request, inputs)
    unknown = {name: identity[name] for name in IDENTITY_UNKNOWN_BEFORE}
    recorded = read_checkpoint_state(path).get("identity") or {}
    if recorded.get("valid") is None:  # no held-out set before: validation may start now
        recorded = {k: v for k, v in recorded.items() if k not in IDENTITY_UNKNOWN_BEFORE}
    saved_identity = IDENTITY_BEFORE_ADDED | unknown | recorded
    # only the keys this version compares: older checkpoints also stored batch_size
    changed = sorted(k for k in identity if saved_identity.get(k) != identity[k])
    if changed:
        differences = ", ".join(
            f"{k} (checkpoint {shown(saved_identity.get(k))}, now {shown(identity[k])})"
            for k in changed
        )
        raise UsageError(
            f"cannot resume {path}: the run differs in {differences}; "
            f"{same_run(changed, saved_identity, inputs.options)}, or --force to start over"
        )


def shown(value: Any) -> str:
    """An identity value in a message: a digest by its first 12 digits (``sha256:`` kept)."""
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, str) and len(value) > 24:
        return value[: value.find(":") + 13] + "..."
    return str(value)


def latest_checkpoint(request: TrainRequest, ranks: Ranks) -> tuple[int, Path] | None:
    """Rank 0's newest complete checkpoint, None without one (on other ranks: None; they take
    rank 0's with ``Ranks.from_main``, once, and read it or fail)."""
    if not ranks.main:
        return None
    found = list_checkpoints(request.checkpoint_dir)
    return found[-1] if found else None


def same_run(changed: list[str], saved_identity: dict[str, Any], options: TrainOptions) -> str:
    """The way back to the checkpoint's run: its --global-batch when that differs (a
    --batch-size alone changes it when --global-batch is not given), with a --batch-size
    that makes it on this run's ranks when the current one does not."""
    if "global_batch_tokens" not in changed:
        return "use the same inputs and options"
    tokens = int(saved_identity["global_batch_tokens"])
    step = f"--global-batch {tokens}"
    if changed != ["global_batch_tokens"]:
        return f"use the same inputs and options ({step})"
    world = options.world_size
    fits = batch_size_for(tokens, options.block_size, world, options.batch_size)
    if fits is None:  # not a whole number of blocks on each rank
        blocks = tokens // options.block_size
        return (
            f"its {step} ({blocks:,} blocks a step) cannot be split over {world} ranks: resume "
            f"on a number of ranks that divides {blocks:,}"
        )
    if fits != options.batch_size:
        step += f" --batch-size {fits}"
    return f"pass {step} (the checkpoint's tokens per step)"


def checkpoint(
    request: TrainRequest,
    inputs: Inputs,
    model: Any,
    optimizer: Any,
    state: RunState,
    ranks: Ranks,
    device: torch.device,
) -> None:
    """Rank 0 writes (DDP keeps every rank's weights and optimiser state equal; FSDP gathers
    them first, all ranks together), with every rank's RNG states; the others wait."""
    model, saved = unwrap(model), optimizer
    if inputs.options.fsdp:
        weights, saved = gather_for_checkpoint(model, optimizer)
        if ranks.main:
            model = unsharded_copy(inputs.bundle, weights)
    rng_files = other_ranks_rng(ranks, device)
    if ranks.main:
        save_checkpoint(
            request.checkpoint_dir, state.step, model=model, optimizer=saved,
            state=checkpoint_state(request, inputs, state), tensor_files=rng_files,
        )  # fmt: skip
    ranks.barrier()


def unsharded_copy(bundle: Bundle, weights: dict[str, Any]) -> Any:
    """The model on the CPU with ``weights`` (gathered from FSDP shards)."""
    with torch.random.fork_rng(devices=[]):  # loading must not move rank 0's RNG
        model = bundle.load_model(verify=False, dtype=torch.float32)
    model.load_state_dict(weights)
    return model


def checkpoint_state(request: TrainRequest, inputs: Inputs, state: RunState) -> dict[str, Any]:
    return dict(
        identity=run_identity(request, inputs),
        cursor=state.cursor,
        loss_curve=state.loss_curve,
        valid_curve=state.valid_curve,
        seconds=state.seconds,
        wall_seconds=state.wall_seconds,
        world_size=inputs.options.world_size,  # whose RNG states it holds (rng.py)
    )
