"""Under torchrun, which rank says an error: a refusal every rank makes alike, an interruption
and the loss of a peer are said by local rank 0 alone; an error of a rank's own by that rank
(spec/training.md section 8). Real torchrun runs: tests/test_train_ddp.py."""

from typing import Any

import pytest

from xelm_cli.cli import run
from xelm_cli.common.errors import IntegrityError, UsageError
from xelm_cli.training import cli as training_cli

ARGV = ["train", "seed", "--data", "shards", "--tokens", "1K", "-o", "out"]
PEER_LOST = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [::1]:1")


def _rank(monkeypatch: pytest.MonkeyPatch, local: int) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(local))
    monkeypatch.setenv("LOCAL_RANK", str(local))


def _raising(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    def stopped(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(training_cli, "train_verb", stopped)


@pytest.mark.parametrize(
    ("error", "code", "rank_0_says"),
    [
        (UsageError("output out already exists"), 2, "output out already exists"),
        (KeyboardInterrupt(), 130, "interrupted: run the same command with --resume"),
        (PEER_LOST, 1, "another rank stopped first (its own line, or torchrun's report, says"),
    ],
)
def test_what_every_rank_meets_alike_is_said_by_local_rank_0(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    error: BaseException,
    code: int,
    rank_0_says: str,
) -> None:
    _raising(monkeypatch, error)
    _rank(monkeypatch, 1)
    assert run(ARGV) == code
    assert capsys.readouterr().err == ""
    _rank(monkeypatch, 0)
    assert run(ARGV) == code
    err = capsys.readouterr().err
    assert err.startswith(f"xelm: error: {rank_0_says}") and err.count("\n") == 1, err


def test_a_usage_error_is_said_by_local_rank_0_alone(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _rank(monkeypatch, 1)
    assert run([*ARGV, "--bogus"]) == 2
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (IntegrityError("shards/en.tokens.bin: size 3 bytes"), "shards/en.tokens.bin: size 3"),
        (OSError(28, "No space left on device"), "No space left on device"),
        (RuntimeError("CUDA error: an illegal memory access"), "internal error: RuntimeError"),
    ],
)
def test_an_error_of_a_ranks_own_is_said_by_that_rank(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    error: BaseException,
    says: str,
) -> None:
    _raising(monkeypatch, error)
    _rank(monkeypatch, 1)
    assert run(ARGV) != 0
    err = capsys.readouterr().err
    assert err.startswith("xelm: error: ") and says in err and err.count("\n") == 1, err
