"""Every rank's own random stream (dropout masks differ across ranks): a run seeds torch with
``seed`` on rank 0 and a seed drawn from ``(seed, rank)`` on the others; a checkpoint keeps
each rank's generator states, and a run resumed on as many ranks continues every rank's
stream exactly (spec/training.md section 8, Seeds)."""

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from .distributed import Ranks


def seed_rank(seed: int, ranks: Ranks) -> None:
    """Rank 0 (one process) seeds with ``seed`` itself, rank r > 0 with a seed drawn from
    ``(seed, r)``: not ``seed + r``, which would be rank 0's stream of the run seeded
    ``seed + r``."""
    torch.manual_seed(seed if ranks.main else fresh_seed(seed, ranks.rank, 0))


def rank_rng_file(rank: int) -> str:
    """Rank ``rank``'s states in a checkpoint; rank 0's are the checkpoint's ``rng.safetensors``."""
    return f"rng.rank-{rank}.safetensors"


def other_ranks_rng(ranks: Ranks, device: torch.device) -> dict[str, dict[str, torch.Tensor]]:
    """On rank 0: every other rank's CPU generator state and its device's, by the checkpoint
    file that keeps them (written with rank 0's files, in one atomic checkpoint); elsewhere
    empty. Every rank must call it (a gather)."""
    if not ranks.launched:
        return {}
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    gathered: list[dict[str, torch.Tensor]] | None = (
        [{} for _ in range(ranks.world)] if ranks.main else None
    )
    torch.distributed.gather_object(states, gathered, dst=0)
    if gathered is None:
        return {}
    return {rank_rng_file(rank): gathered[rank] for rank in range(1, ranks.world)}


def restore_rank_rng(
    checkpoint: Path, saved_world: int, seed: int, step: int, ranks: Ranks, device: torch.device
) -> None:
    """After ``load_checkpoint`` set rank 0's states on every rank: this rank's own. On another
    number of ranks (or without the rank's file: a checkpoint of an earlier version) a fresh
    stream drawn from ``(seed, rank, step)``."""
    path = checkpoint / rank_rng_file(ranks.rank)
    if saved_world != ranks.world or not (ranks.main or path.is_file()):
        torch.manual_seed(fresh_seed(seed, ranks.rank, step))
    elif not ranks.main:
        states = load_file(str(path))
        torch.set_rng_state(states["torch"])
        if "cuda" in states and device.type == "cuda":
            torch.cuda.set_rng_state(states["cuda"], device)


def fresh_seed(seed: int, rank: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0])
