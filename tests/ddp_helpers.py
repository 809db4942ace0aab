"""Runs under `torchrun --nproc-per-node N` on the CPU (gloo) and the measure that compares
their weights with one process's, for the data-parallel and FSDP tests."""

import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

# Measured (torch 2.13, CPU): the DDP and one-process weights differ by 1.1e-6 at most, float32
# sums in another order (DDP averages two ranks' gradients instead of summing one batch's),
# amplified a little by AdamW's normalised updates over 8 steps. The same run with another data
# order (--seed 2) differs by 2.6e-2, so 1e-5 (10x the noise, 2600x below a real change)
# tells "the same optimiser updates" from "other blocks or another batch".
TOLERANCE = 1e-5


def xelm_train(args: list[str], cwd: Path, ranks: int | None) -> subprocess.CompletedProcess[str]:
    """``xelm train ARGS`` in ``cwd``, under torchrun with ``ranks`` (one process: None)."""
    return launch(["-m", "xelm_cli", "train", *args], cwd, ranks)


def launch(program: list[str], cwd: Path, ranks: int | None) -> subprocess.CompletedProcess[str]:
    """``python PROGRAM`` (``-m module ...`` or ``script ...``), under torchrun with ``ranks``."""
    launcher = [sys.executable]
    if ranks is not None:
        # --standalone: the rendezvous store binds a free port itself (picking one here first
        # left a window in which another connection could take it)
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env |= {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [*launcher, *program],
        cwd=cwd,  # not the checkout, whose stale xelm.egg-info would shadow the entry points
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def max_difference(a: Path, b: Path) -> float:
    """The largest absolute difference between two bundles' weights (same tensor names)."""
    wa, wb = (load_file(str(path / "model.safetensors")) for path in (a, b))
    assert wa.keys() == wb.keys()
    return max(float((wa[name] - wb[name]).abs().max()) for name in wa)
