"""Data parallelism: `torchrun --nproc-per-node 2` on CPU (gloo) against one process."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_train import train_shards, valid_shards  # noqa: F401  (fixtures)
from xelm_trainer.loop import TrainingRun

from xelm_cli.bundle.store import Bundle, verify_bundle
from xelm_cli.plugin.contracts import TrainRequest, checkpoint_dir

# 8 steps of a 256-token global batch (8 blocks of 32): 2 ranks x 2 blocks x 2 accumulated
# micro-batches under torchrun, 4 blocks x 2 micro-batches in one process.
COMMON = ["--block-size", "32", "--global-batch", "256", "--tokens", "2048", "--lr", "3e-3"]
COMMON += ["--checkpoint-every", "4", "--log-every", "1", "--seed", "1", "--device", "cpu"]
# Measured (torch 2.13, CPU): the DDP and one-process weights differ by 1.1e-6 at most, float32
# sums in another order (DDP averages two ranks' gradients instead of summing one batch's),
# amplified a little by AdamW's normalised updates over 8 steps. The same run with another data
# order (--seed 2) differs by 2.6e-2, so 1e-5 (10x the noise, 2600x below a real change)
# tells "the same optimiser updates" from "other blocks or another batch".
TOLERANCE = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def xelm_train(args: list[str], cwd: Path, ranks: int | None) -> subprocess.CompletedProcess[str]:
    return launch(["-m", "xelm_cli", "train", *args], cwd, ranks)


def launch(program: list[str], cwd: Path, ranks: int | None) -> subprocess.CompletedProcess[str]:
    """``python PROGRAM`` (``-m module ...`` or ``script ...``), under torchrun with ``ranks``."""
    launcher = [sys.executable]
    if ranks is not None:
        launcher += ["-m", "torch.distributed.run", "--nproc-per-node", str(ranks)]
        launcher += ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
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
    wa, wb = (load_file(str(path / "model.safetensors")) for path in (a, b))
    assert wa.keys() == wb.keys()
    return max(float((wa[name] - wb[name]).abs().max()) for name in wa)


class Killed(Exception):
    pass


class StopsAt4(TrainingRun):
    def on_step_end(self, step: int) -> None:
        if step == 4:
            raise Killed


def test_two_ranks_match_one_process_with_the_same_global_batch(
    seed_bundle: Path,
    train_shards: Path,  # noqa: F811
    valid_shards: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = [str(seed_bundle), "--data", str(train_shards), *COMMON, "--valid", str(valid_shards)]
    base += ["--eval-blocks", "7", "--eval-every", "4"]  # 4 + 3 blocks on the two ranks
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    done = xelm_train([*base, "--batch-size", "2", "-o", str(ddp)], tmp_path, ranks=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1  # rank 0 reports
    done = xelm_train([*base, "--batch-size", "4", "-o", str(single)], tmp_path, ranks=None)
    assert done.returncode == 0, done.stderr[-3000:]

    assert verify_bundle(ddp) == []
    diff = max_difference(ddp, single)
    print(f"max abs weight difference, DDP vs one process: {diff:.3g}")
    assert diff < TOLERANCE, diff
    assert max_difference(ddp, seed_bundle) > 1000 * TOLERANCE  # it trained

    records = [Bundle.open(path).manifest.training or {} for path in (ddp, single)]
    assert [r["steps"] for r in records] == [8, 8]
    assert [r["hardware"]["world_size"] for r in records] == [2, 1]
    curves = [torch.tensor([loss for _, loss in r["loss_curve"]]) for r in records]
    assert torch.allclose(curves[0], curves[1], atol=1e-4), curves  # the all-reduced mean loss
    valid = [torch.tensor(r["valid_curve"]) for r in records]
    assert valid[0][:, 0].tolist() == [0, 4, 8]
    assert torch.allclose(valid[0], valid[1], atol=1e-4), valid  # sharded, then summed
    # one writer: one bundle, one metrics file with one line per step, no stray checkpoints
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.lstrip(".").startswith("ddp")) == [
        ".ddp.ckpt",
        "ddp",
    ]
    lines = (checkpoint_dir(ddp) / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [row["step"] for row in rows if "loss" in row] == list(range(1, 9))
    assert [row["step"] for row in rows if "valid_loss" in row] == [0, 4, 8]
    assert not list(checkpoint_dir(ddp).glob("step-*"))

    # resume under DDP and FSDP: one process (same per-rank options, so 4 micro-batches) is
    # killed after its step-4 checkpoint; 2 ranks read it and finish like the uninterrupted run
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    killed = tmp_path / "killed"
    options: dict[str, Any] = {
        "block_size": 32,
        "batch_size": 2,
        "global_batch_tokens": 256,
        "lr": 3e-3,
    }
    options |= {"checkpoint_every": 4, "log_every": 1, "seed": 1, "device": "cpu"}
    with pytest.raises(Killed):
        StopsAt4().train(TrainRequest(seed_bundle, train_shards, killed, 2048, options=options))
    assert not killed.exists() and (checkpoint_dir(killed) / "step-000000004").is_dir()
    sharded = tmp_path / "sharded"  # the same checkpoint, resumed with FSDP below
    shutil.copytree(checkpoint_dir(killed), checkpoint_dir(sharded))
    for out, extra in ((killed, []), (sharded, ["--fsdp"])):
        resumed = [*base, "--batch-size", "2", "-o", str(out), "--resume", *extra]
        done = xelm_train(resumed, tmp_path, ranks=2)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stderr.count("resuming from step 4") == 1  # rank 0 says so; both read it
        diff = max_difference(ddp, out)
        print(f"max abs weight difference, resumed {' '.join(extra) or 'DDP'} vs DDP: {diff:.3g}")
        assert diff < TOLERANCE, diff
        assert verify_bundle(out) == []


def test_fsdp_without_torchrun_is_refused_in_one_line(
    seed_bundle: Path,
    train_shards: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from xelm_cli.cli import run

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = tmp_path / "out"
    args = ["train", str(seed_bundle), "--data", str(train_shards), "--tokens", "4096"]
    code = run([*args, "-o", str(out), "--block-size", "32", "--batch-size", "4", "--fsdp"])
    stdout, stderr = capsys.readouterr()
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1 and "--fsdp needs torchrun" in stderr
    assert not out.exists() and not checkpoint_dir(out).exists()


def test_fsdp_checkpoint_of_two_ranks_resumes_in_one_process(
    seed_bundle: Path,
    train_shards: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The other direction: 2 FSDP ranks stop after their step-4 checkpoint (this file run
    under torchrun, below); one process reads it and finishes like an uninterrupted run."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    options: dict[str, Any] = {
        "block_size": 32,
        "batch_size": 2,
        "global_batch_tokens": 256,
        "lr": 3e-3,
    }
    options |= {"checkpoint_every": 4, "log_every": 1, "seed": 1, "device": "cpu"}
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    fsdp = json.dumps(options | {"fsdp": True})
    program = [__file__, str(seed_bundle), str(train_shards), str(sharded), fsdp]
    done = launch(program, tmp_path, ranks=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in checkpoint_dir(sharded).glob("step-*")] == ["step-000000004"]
    assert not sharded.exists()

    request = TrainRequest(seed_bundle, train_shards, sharded, 2048, options=options, resume=True)
    TrainingRun().train(request)
    assert "resuming from step 4" in capsys.readouterr().err
    TrainingRun().train(replace(request, output=single, resume=False))
    diff = max_difference(sharded, single)
    print(f"max abs weight difference, FSDP 2 ranks -> 1 process vs 1 process: {diff:.3g}")
    assert diff < TOLERANCE, diff
    assert max_difference(sharded, seed_bundle) > 1000 * TOLERANCE  # it trained
    assert verify_bundle(sharded) == []
    records = [Bundle.open(path).manifest.training or {} for path in (sharded, single)]
    assert records[0]["hardware"]["world_size"] == 1 and records[0]["steps"] == 8
    curves = [torch.tensor([loss for _, loss in r["loss_curve"]]) for r in records]
    assert torch.allclose(curves[0], curves[1], atol=1e-4), curves  # steps 1-4 came from FSDP


if __name__ == "__main__":  # under torchrun: a run that stops after its step-4 checkpoint
    bundle, data, out, options = sys.argv[1:]
    with contextlib.suppress(Killed):
        StopsAt4().train(
            TrainRequest(Path(bundle), Path(data), Path(out), 2048, options=json.loads(options))
        )
