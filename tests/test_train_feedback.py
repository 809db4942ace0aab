"""What xelm train tells its user: the progress bar before and after the first logged step,
a --device it cannot use refused in one line before anything is written, and --tokens that
do not fill whole steps."""

from pathlib import Path

import pytest
from conftest import SHARED_DATA
from rich.console import Console
from xelm_trainer.loop import TrainProgress

from xelm_cli.cli import run
from xelm_cli.data.prepare import prepare


def shown(bar: TrainProgress) -> str:
    console = Console(width=120, record=True, force_terminal=False)
    console.print(bar.progress.get_renderable())
    return console.export_text()


def test_nothing_measured_shows_no_loss_until_a_logged_step() -> None:
    bar = TrainProgress(total=20, done=0, shown=False)
    bar.update(3)  # not a logged step
    assert "loss -" in shown(bar) and "0.0000" not in shown(bar)
    bar.update(10, loss=2.71828, speed=12345.6)
    assert "loss 2.7183  12,346 tok/s" in shown(bar)
    bar.update(11)  # until the next logged step, the last measured values stay
    assert "loss 2.7183" in shown(bar) and "11/20" in shown(bar)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> Path:
    out = tmp_path_factory.mktemp("feedback") / "shards"
    prepare(SHARED_DATA / "corpus" / "valid", seed_bundle, out, langs=["en"], token_caps=3000)
    return out


def train(seed: Path, shards: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(seed), "--data", str(shards), "-o", str(out), "--langs", "en",
            "--block-size", "32", "--batch-size", "4", *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("tpu", "unknown --device 'tpu'; use auto, cpu, cuda or cuda:N"),
        ("meta", "--device meta: xelm trains on cpu, cuda or mps; use one of them"),
        ("cuda", "--device cuda: this torch sees no cuda device; use --device cpu"),
    ],
)
def test_a_device_it_cannot_use_is_one_line_before_anything_is_written(
    seed_bundle: Path, shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    device: str, expected: str,
) -> None:  # fmt: skip
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    out = tmp_path / "out"
    assert run(train(seed_bundle, shards, out, "--tokens", "256", "--device", device)) == 2
    err = capsys.readouterr().err
    assert err == f"xelm: error: {expected}\n"
    assert list(tmp_path.iterdir()) == []


def test_tokens_that_do_not_fill_whole_steps_are_said(
    seed_bundle: Path, shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"  # a step: 4 x 32 = 128 tokens; 300 tokens are 2 whole steps
    assert run(train(seed_bundle, shards, out, "--tokens", "300", "--device", "cpu")) == 0
    err = capsys.readouterr().err
    assert "xelm: --tokens 300 is 2 whole steps of 128 tokens: training 256 " in err
    assert run(train(seed_bundle, shards, tmp_path / "one", "--tokens", "128")) == 0
    out, err = capsys.readouterr()
    assert "whole step" not in err and ": 1 step, 128 tokens" in out
