"""Data parallelism: `torchrun --nproc-per-node 2` on CPU (gloo) against one process."""

import contextlib
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from ddp_helpers import TOLERANCE, launch, max_difference, xelm_train
from train_helpers import Killed, StopsAt
from xelm_trainer.loop import TrainingRun

from xelm_cli.bundle.store import Bundle, verify_bundle
from xelm_cli.plugin.contracts import TrainRequest, checkpoint_dir

# 8 steps of a 256-token global batch (8 blocks of 32): 2 ranks x 2 blocks x 2 accumulated
# micro-batches under torchrun, 4 blocks x 2 micro-batches in one process.
COMMON = ["--block-size", "32", "--global-batch", "256", "--tokens", "2048", "--lr", "3e-3"]
COMMON += ["--checkpoint-every", "4", "--log-every", "1", "--seed", "1", "--device", "cpu"]


def test_two_ranks_match_one_process_with_the_same_global_batch(
    seed_bundle: Path,
    train_shards: Path,
    valid_shards: Path,
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
        StopsAt(4).train(TrainRequest(seed_bundle, train_shards, killed, 2048, options=options))
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
    train_shards: Path,
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
    train_shards: Path,
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
        StopsAt(4).train(
            TrainRequest(Path(bundle), Path(data), Path(out), 2048, options=json.loads(options))
        )


def test_under_torchrun_a_refusal_is_one_line_from_local_rank_0(
    seed_bundle: Path, train_shards: Path, tmp_path: Path
) -> None:
    """A usage error was said by every rank; an output that rank 0 alone checks and refuses
    got a second line from rank 1, stopped by torchrun: 'terminated (SIGTERM): run the same
    command with --resume', which would be refused again."""
    base = [str(seed_bundle), "--data", str(train_shards), *COMMON, "--batch-size", "2"]
    done = xelm_train([*base, "--bogus", "-o", str(tmp_path / "a")], tmp_path, ranks=2)
    errors = [line for line in done.stderr.splitlines() if line.startswith("xelm: error:")]
    assert done.returncode != 0 and errors == [
        "xelm: error: No such option: --bogus (see 'xelm train -h')"
    ], done.stderr[-3000:]
    existing = shutil.copytree(seed_bundle, tmp_path / "existing")
    done = xelm_train([*base, "-o", str(existing)], tmp_path, ranks=2)
    errors = [line for line in done.stderr.splitlines() if line.startswith("xelm: error:")]
    assert done.returncode != 0 and len(errors) == 1, done.stderr[-3000:]
    assert "already exists" in errors[0]
