"""`xelm plan`'s memory check: the batch a refusal names is one `xelm train` takes at the
plan's steps, the device the estimate is of is never a guess, and on CUDA a reserve stays
free; with --moe-tokens the headline says what each system trains."""

import json
from pathlib import Path

import pytest

from xelm_cli.bundle.store import Bundle
from xelm_cli.cli import run
from xelm_cli.cluster.allocation import write_allocation
from xelm_cli.training.estimates import (
    CUDA_RESERVE_BYTES,
    ModelShape,
    largest_batch,
    training_memory,
    usable_memory,
)
from xelm_cli.training.planning import batch_for_step, planned_options


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> Path:
    """Token shards of the test languages, with the seed's tokenizer."""
    from corpus_helpers import corpus_slice

    from xelm_cli.data.prepare import prepare

    root = tmp_path_factory.mktemp("plan-fits-shards")
    prepare(corpus_slice("train", 100, root / "corpus"), seed_bundle, root / "shards")
    return root / "shards"


def _plan(tmp_path: Path, seed: Path, shards: Path, *extra: str) -> list[str]:
    alloc = tmp_path / "alloc.json"
    if not alloc.exists():
        write_allocation(alloc, clusterer="typology", experts=[["en"], ["tr"]])
    return ["plan", "--budget", "1M", "--allocation", str(alloc), "--seed-bundle", str(seed),
            "--data", str(shards), "-o", str(tmp_path / "runs"), *extra]  # fmt: skip


def test_the_largest_batch_named_divides_the_step_so_xelm_train_takes_it(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, shards: Path, tmp_path: Path
) -> None:
    """Batches of 12 x 32 where 5 fit: a step of 384 tokens is no whole number of 5-block
    micro-batches (`xelm train --batch-size 5 --global-batch 384` refuses it), so the plan names
    --batch-size 4 --global-batch 384, and the 5 that fits alone at its own smaller steps; with
    --global-batch 768 given, --batch-size 4 at it. The plan takes each batch it names."""
    shape = ModelShape.of(Bundle.open(seed_bundle))
    five, six = (training_memory(shape, b, 32, cuda=False).total for b in (5, 6))
    limit = (five + six) // 2
    assert largest_batch(shape, 32, limit, cuda=False)[0] == 5
    args = _plan(tmp_path, seed_bundle, shards, "--memory", str(limit), "--json")
    cpu = "--block-size 32 --device cpu"
    assert run([*args, "--train-args", f"{cpu} --batch-size 12"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith(
        "; the largest that fits at steps of 384 tokens is --batch-size 4 --global-batch 384 in "
        "--train-args (or --batch-size 5 alone, at steps of 160 tokens)\n"
    )
    for named in ("--batch-size 4 --global-batch 384", "--batch-size 5"):
        assert run([*args, "--train-args", f"{cpu} {named}"]) == 0
        capsys.readouterr()
    assert run([*args, "--train-args", f"{cpu} --batch-size 5 --global-batch 384"]) == 2
    assert "must be a multiple of one micro-batch" in capsys.readouterr().err
    assert run([*args, "--train-args", f"{cpu} --batch-size 12 --global-batch 768"]) == 2
    err = capsys.readouterr().err
    assert err.endswith(
        "; the largest that fits at --global-batch 768 is --batch-size 4 in --train-args\n"
    )
    assert run([*args, "--train-args", f"{cpu} --batch-size 4 --global-batch 768"]) == 0


def test_the_batch_for_a_step_is_the_trainers_own_rule() -> None:
    """``batch_for_step`` (the plan's, through the trainer's option check) and the trainer's
    ``batch_size_for`` (its hint on --global-batch) name the same batch everywhere."""
    from xelm_trainer.options import batch_size_for

    for block in (32, 128):
        planned = planned_options(f"--block-size {block}")
        for ranks in (1, 2, 3):
            for blocks in (1, 6, 12, 30, 49):
                step = blocks * block * ranks
                for at_most in (1, 4, 5, 7, 50):
                    expected = batch_size_for(step, block, ranks, at_most)
                    assert batch_for_step(planned, step, ranks, at_most) == expected


def test_memory_without_a_gpu_here_needs_the_device_named(
    capsys: pytest.CaptureFixture[str],
    seed_bundle: Path,
    shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--device auto trains on a GPU where there is one: on a machine without one, --memory
    80GB could be the GPU's (the estimate would be CUDA's) or the machine's RAM (the CPU's,
    twice or more as large): refused in one line asking which. The output names the device
    the estimate is of, and where it comes from."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = _plan(tmp_path, seed_bundle, shards, "--train-args", "--block-size 32")
    assert run([*args, "--memory", "80GB"]) == 2
    assert capsys.readouterr().err == (
        "xelm: error: --memory 80.0 GB with --device auto (the default of --train-args), which "
        "trains on a GPU where there is one, and this machine has none: say which device that "
        "memory is, --train-args '--device cuda' (the GPU that will train) or '--device cpu'\n"
    )
    assert run(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert " on the CPU (--device auto: this machine has no GPU)" in out
    for device, words in (("cpu", "the CPU"), ("cuda", "CUDA")):
        train_args = f"--block-size 32 --device {device}"
        assert run([*args[:-1], train_args, "--memory", "80GB"]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert f" on {words} (--device {device})" in out
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert run([*args, "--memory", "80GB", "--json"]) == 0
    estimate = json.loads(capsys.readouterr().out)["estimate"]
    assert (estimate["device"], estimate["device_option"]) == ("cuda", "auto")
    assert run([*args, "--memory", "80GB"]) == 0
    assert " on CUDA (--device auto: this machine's GPU)" in capsys.readouterr().out


def test_cuda_keeps_a_reserve_for_the_context_workspaces_and_fragmentation(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, shards: Path, tmp_path: Path
) -> None:
    """On CUDA an estimate may fill the device's memory less the larger of 1.5 GiB and 5% (80
    GB: 76 usable; 20 GB: 20 less 1.5 GiB); a CPU's is all its own. A batch between the usable
    memory and the whole is refused, saying both."""
    assert usable_memory(80 * 10**9, cuda=True) == 76 * 10**9
    assert usable_memory(20 * 10**9, cuda=True) == 20 * 10**9 - CUDA_RESERVE_BYTES
    assert CUDA_RESERVE_BYTES == 1.5 * 2**30
    assert usable_memory(20 * 10**9, cuda=False) == 20 * 10**9
    assert usable_memory(10**9, cuda=True) == 0

    shape = ModelShape.of(Bundle.open(seed_bundle))
    needs = training_memory(shape, 8, 32, cuda=True).total
    memory = needs + CUDA_RESERVE_BYTES // 2  # the whole fits; less the reserve it does not
    base = _plan(tmp_path, seed_bundle, shards)
    cuda = ["--train-args", "--block-size 32 --device cuda"]
    assert run([*base, "--memory", str(memory), *cuda]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and " on CUDA (--device cuda), which has 0 GB usable of " in err
    assert "kept for the CUDA context, workspaces and fragmentation); not even" in err
    assert run([*base, "--memory", "80GB", *cuda, "--json"]) == 0
    estimate = json.loads(capsys.readouterr().out)["estimate"]
    assert (estimate["memory_limit"], estimate["memory_usable"]) == (80 * 10**9, 76 * 10**9)
    assert run([*base, "--memory", "80GB", *cuda]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert (
        "of 76.0 GB usable of 80.0 GB (4.0 GB kept for the CUDA context, workspaces and "
        "fragmentation) on CUDA (--device cuda)"
    ) in out
    assert run([*base, "--memory", "80GB", "--train-args", "--block-size 32 --device cpu"]) == 0
    assert "of 80.0 GB on the CPU (--device cpu)" in " ".join(capsys.readouterr().out.split())


def test_with_moe_tokens_the_headline_says_what_each_system_trains(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, shards: Path, tmp_path: Path
) -> None:
    """With --moe-tokens M the dense run trains B and the MoE its experts' B - M and its
    fine-tune's M, but the ensemble and the averaged model only the experts' B - M: the
    headline says so, not one count for every system (each rounded to steps of 8,192)."""
    args = _plan(tmp_path, seed_bundle, shards, "--train-args", "--device cpu")
    assert run(args) == 0
    assert "equal compute: 999,424 tokens a system (budget 1,000,000), k = 2" in " ".join(
        capsys.readouterr().out.split()
    )
    assert run([*args, "--moe-tokens", "200K"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert (
        "equal compute for dense and MoE: 983,040 tokens each (MoE: experts 786,432 + fine-tune "
        "196,608); ensemble and averaged model: the experts' 786,432 (budget 1,000,000, "
        "--moe-tokens 200,000), k = 2"
    ) in out
    assert "tokens a system" not in out
