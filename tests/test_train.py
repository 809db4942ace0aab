"""Training: packing, the causal-LM trainer, bitwise resume, plans and refusals."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_helpers import xelm
from conftest import SHARED_DATA, TEST_LANGS, same_weights, train_tokenizer, weights
from train_helpers import Killed, StopsAt, request
from xelm_trainer import CausalLMTrainer

from xelm_cli.bundle.store import Bundle, verify_bundle
from xelm_cli.cli import run
from xelm_cli.cluster.allocation import write_allocation
from xelm_cli.common.errors import FormatError, UsageError
from xelm_cli.common.units import parse_token_count
from xelm_cli.data.prepare import prepare
from xelm_cli.data.shards import Shards
from xelm_cli.plugin.contracts import checkpoint_dir
from xelm_cli.training.checkpoints import (
    BlockStream,
    list_checkpoints,
    load_checkpoint,
    plan_budgets,
    restore_rng_states,
    save_checkpoint,
)

# --- packing -------------------------------------------------------------------------------------


def test_blocks_pack_bos_doc_eos_in_a_seeded_order(train_shards: Path) -> None:
    shards = Shards.open(train_shards)
    stream = BlockStream(shards, ["tr", "en"], 16, seed=3, bos=0, eos=1)
    order = stream.epoch_order(0)
    rows = [(["tr", "en"][lang], int(doc)) for lang, doc in stream._documents[order]]
    expected = np.concatenate([[0, *shards.document(lang, doc).tolist(), 1] for lang, doc in rows])
    n = stream.epoch_tokens // 16
    assert np.array_equal(stream.blocks(0, n).ravel(), expected[: n * 16])
    assert np.array_equal(stream.blocks(5, 2), stream.blocks(0, n)[5:7])
    # the next epoch continues the stream in another order; same seed, same blocks
    assert np.array_equal(stream.blocks(n, 3), stream.blocks(n, 3))
    assert not np.array_equal(stream.epoch_order(1), order)
    other = BlockStream(shards, ["tr", "en"], 16, seed=4, bos=0, eos=1)
    assert not np.array_equal(other.epoch_order(0), order)


def test_a_ranks_strided_share_is_every_world_th_block(train_shards: Path) -> None:
    stream = BlockStream(Shards.open(train_shards), ["tr", "en"], 16, seed=3, bos=0, eos=1)
    start = stream.epoch_tokens // 16 - 5  # the shares cross into the second epoch
    both_epochs = stream.blocks(start, 4 * 3)
    for rank in range(3):
        assert np.array_equal(stream.strided(start + rank, 4, 3), both_epochs[rank::3])
    assert np.array_equal(stream.strided(start, 4, 1), both_epochs[:4])


def test_token_counts_and_equal_compute_budgets() -> None:
    assert parse_token_count("20M") == 20_000_000
    assert parse_token_count("1.5B") == 1_500_000_000
    assert parse_token_count("300K") == 300_000
    runs = plan_budgets(20_000_000, [["en", "ru"], ["tr"], ["ar"]])
    assert [(r.name, r.tokens) for r in runs] == [
        ("expert-0", 6_666_666),
        ("expert-1", 6_666_666),
        ("expert-2", 6_666_666),
        ("dense", 19_999_998),  # what the experts train together
    ]
    assert runs[-1].languages == ("en", "ru", "tr", "ar")
    # `xelm train` trains whole steps: 10,000 tokens each is 2 steps of 4,096
    runs = plan_budgets(40_000, [["en"], ["ru"], ["tr"], ["ar"]], step=4096)
    assert [r.tokens for r in runs] == [8192, 8192, 8192, 8192, 32_768]
    with pytest.raises(UsageError, match="less than one step of 4,096 tokens"):
        plan_budgets(16_000, [["en"], ["ru"], ["tr"], ["ar"]], step=4096)


# --- the trainer ----------------------------------------------------------------------------------


def test_training_lowers_validation_loss_and_writes_a_child_bundle(
    seed_bundle: Path, train_shards: Path, valid_shards: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    parent = Bundle.open(seed_bundle)
    out = tmp_path / "trained"
    req = request(seed_bundle, train_shards, out, tokens=4096, valid=valid_shards)
    started = time.perf_counter()
    trained = CausalLMTrainer().train(replace(req, options={**req.options, "eval_every": 16}))
    took = time.perf_counter() - started

    record = trained.manifest.training
    assert record is not None
    curve = record["valid_curve"]
    assert [step for step, _ in curve] == [0, 16, 32]
    assert curve[-1][1] < curve[0][1] - 0.5, curve
    assert (record["tokens"], record["steps"], record["command"]) == (4096, 32, "test")
    assert record["data_digest"] == Shards.open(train_shards).digest
    assert record["options"]["global_batch_tokens"] == 128
    assert record["options"]["languages"] == list(TEST_LANGS)
    assert record["loss_curve"][-1][0] == 32
    # seconds: the 32 steps alone; wall_seconds also the 3 validations and the checkpoint
    assert 0 < record["seconds"] < record["wall_seconds"] <= took
    assert verify_bundle(out) == []
    assert trained.manifest.lineage[-1]["relation"] == "train"
    assert trained.manifest.lineage[-1]["parents"] == [parent.ref]
    assert trained.manifest.role == "dense"
    AutoModelForCausalLM.from_pretrained(out)
    # the parent is untouched: same manifest, every file verifies, different weights
    assert Bundle.open(seed_bundle).digest == parent.digest
    assert verify_bundle(seed_bundle) == []
    assert not torch.equal(*(weights(b)["lm_head.weight"] for b in (seed_bundle, out)))
    lines = (checkpoint_dir(out) / "metrics.jsonl").read_text().splitlines()
    assert sum("tokens_per_s" in json.loads(line) for line in lines) == 8  # every log_every
    assert record["implementation"] == {
        "attention": "sdpa", "loss": "chunked", "optimizer": "adamw", "autocast": None,
    }  # fmt: skip
    assert not list(checkpoint_dir(out).glob("step-*"))  # removed once the bundle is written


def test_a_bf16_seed_stays_bf16_on_disk_unless_asked(
    seed_bundle: Path, train_shards: Path, tmp_path: Path
) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from xelm_cli.bundle.seed import init_from_hf

    hf = tmp_path / "hf"
    AutoModelForCausalLM.from_pretrained(seed_bundle, dtype=torch.bfloat16).save_pretrained(hf)
    Bundle.open(seed_bundle).load_tokenizer().save_pretrained(hf)
    seed = init_from_hf(str(hf), tmp_path / "bf16", languages=list(TEST_LANGS)).path
    assert weights(seed)["lm_head.weight"].dtype == torch.bfloat16

    def dtypes(bundle: Path) -> set[str]:
        with safe_open(str(bundle / "model.safetensors"), "pt") as f:
            return {f.get_slice(name).get_dtype() for name in f.keys()}  # noqa: SIM118

    kept = CausalLMTrainer().train(request(seed, train_shards, tmp_path / "kept", tokens=256))
    assert dtypes(kept.path) == {"BF16"}
    assert kept.manifest.training["saved_dtype"] == "bfloat16"
    assert kept.manifest.training["options"]["save_dtype"] == "auto"
    assert not torch.equal(weights(seed)["lm_head.weight"], weights(kept.path)["lm_head.weight"])
    wide = request(
        seed, train_shards, tmp_path / "fp32", tokens=256, options={"save_dtype": "float32"}
    )
    assert dtypes(CausalLMTrainer().train(wide).path) == {"F32"}


@pytest.mark.parametrize("killed_at", [5, 6])  # just after a checkpoint, and between two
def test_resume_after_a_kill_gives_bitwise_identical_weights(
    seed_bundle: Path, train_shards: Path, tmp_path: Path, killed_at: int
) -> None:
    options = {
        "checkpoint_every": 5,
        "schedule": "cosine",
        "warmup_steps": 2,
        "global_batch_tokens": 256,
    }
    full = request(seed_bundle, train_shards, tmp_path / "full", tokens=256 * 12, options=options)
    CausalLMTrainer().train(full)
    killed = replace(full, output=tmp_path / "killed")
    with pytest.raises(Killed):
        StopsAt(killed_at).train(killed)
    assert not killed.output.exists()
    resumed = CausalLMTrainer().train(replace(killed, resume=True))
    assert same_weights(full.output, killed.output)
    assert resumed.manifest.training == {
        **Bundle.open(full.output).manifest.training,  # type: ignore[dict-item]
        "seconds": resumed.manifest.training["seconds"],
        "wall_seconds": resumed.manifest.training["wall_seconds"],
        "setup_seconds": resumed.manifest.training["setup_seconds"],
        "command": "test",
    }


def test_a_run_resumes_with_a_smaller_batch_size_at_the_same_global_batch(
    seed_bundle: Path, train_shards: Path, tmp_path: Path
) -> None:
    """What an out-of-memory asks for: the checkpoint of a run at --batch-size 4 continues at
    --batch-size 2 with twice the accumulation. A step reads the same blocks, so the run ends
    where the uninterrupted one does, up to the order of float sums; a checkpoint whose
    identity still holds batch_size (older versions wrote it) resumes too."""
    options = {"checkpoint_every": 3, "global_batch_tokens": 256, "log_every": 1}
    full = request(seed_bundle, train_shards, tmp_path / "full", tokens=256 * 6, options=options)
    CausalLMTrainer().train(full)
    killed = replace(full, output=tmp_path / "killed")
    with pytest.raises(Killed):
        StopsAt(4).train(killed)
    state = checkpoint_dir(killed.output) / "step-000000003" / "state.json"
    saved = json.loads(state.read_text())
    assert "batch_size" not in saved["identity"]
    saved["identity"]["batch_size"] = 4
    state.write_text(json.dumps(saved))
    halved = replace(killed, resume=True, options={**killed.options, "batch_size": 2})
    other_step = replace(halved, options={**halved.options, "global_batch_tokens": 128})
    refusal = (
        f"cannot resume {state.parent}: the run differs in global_batch_tokens (checkpoint "
        "256, now 128); pass --global-batch 256 (the checkpoint's tokens per step), or --force "
        "to start over"
    )
    with pytest.raises(UsageError, match=f"^{re.escape(refusal)}$"):
        CausalLMTrainer().train(other_step)
    state.write_text(json.dumps(saved | {"format_version": 2}))  # the version is read first
    with pytest.raises(FormatError, match="checkpoint format version 2 is not supported"):
        CausalLMTrainer().train(other_step)
    state.write_text(json.dumps(saved))
    resumed = CausalLMTrainer().train(halved).manifest.training
    expected = Bundle.open(full.output).manifest.training
    assert resumed is not None and expected is not None
    assert resumed["options"]["batch_size"] == 2 and resumed["steps"] == expected["steps"] == 6
    assert [s for s, _ in resumed["loss_curve"]] == [s for s, _ in expected["loss_curve"]]
    assert resumed["loss_curve"][:3] == expected["loss_curve"][:3]  # read from the checkpoint
    np.testing.assert_allclose(resumed["loss_curve"], expected["loss_curve"], rtol=1e-5)
    for name, tensor in weights(full.output).items():  # measured: at most 8.4e-9 apart
        torch.testing.assert_close(weights(killed.output)[name], tensor, rtol=0, atol=1e-6)


def test_a_checkpoint_of_an_unknown_format_version_is_refused_naming_force(
    tmp_path: Path,
) -> None:
    """state.json says its format version; one without it (written before it) is version 1
    and loads, another version is refused in one line before anything is restored."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    path = save_checkpoint(tmp_path, 3, model=model, optimizer=optimizer, state={"cursor": 7})
    state = json.loads((path / "state.json").read_text())
    assert (state["format"], state["format_version"]) == ("xelm-checkpoint", 1)
    del state["format_version"]
    (path / "state.json").write_text(json.dumps(state))
    fresh = torch.nn.Linear(2, 2)
    restored = load_checkpoint(path, model=fresh, optimizer=torch.optim.AdamW(fresh.parameters()))
    assert (restored["step"], restored["cursor"]) == (3, 7)
    assert torch.equal(fresh.weight, model.weight)

    (path / "state.json").write_text(json.dumps(state | {"format_version": 2}))
    other = torch.nn.Linear(2, 2)
    before = other.weight.clone()
    refusal = (
        f"{path}: checkpoint format version 2 is not supported by this xelm (reads 1); resume "
        "with the xelm that wrote it, or pass --force to start over"
    )
    with pytest.raises(FormatError, match=f"^{re.escape(refusal)}$"):
        load_checkpoint(path, model=other, optimizer=torch.optim.AdamW(other.parameters()))
    assert torch.equal(other.weight, before)


def test_save_checkpoint_keeps_the_newest_and_refuses_to_keep_none(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model=model, optimizer=optimizer, state={}, keep=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 3]
    with pytest.raises(ValueError, match="keep must be at least 1"):  # [:-0] would keep all
        save_checkpoint(tmp_path, 4, model=model, optimizer=optimizer, state={}, keep=0)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 3]


def test_a_resume_on_fewer_gpus_restores_the_visible_ones_rng_states() -> None:
    """A checkpoint saved with two more GPUs than this machine shows (none here): the CPU
    generator and each visible GPU's are restored, the missing GPUs' states skipped (all of
    them were set, an IndexError on the first missing)."""
    visible = torch.cuda.device_count()
    cuda = [torch.cuda.get_rng_state(i) for i in range(visible)]
    rng = {"torch": torch.get_rng_state()}
    rng |= {f"cuda.{i}": state for i, state in enumerate(cuda + [torch.get_rng_state()] * 2)}
    expected = torch.rand(3)
    expected_cuda = torch.rand(3, device="cuda") if visible else None
    restore_rng_states(rng)
    assert torch.equal(torch.rand(3), expected)
    if expected_cuda is not None:
        assert torch.equal(torch.rand(3, device="cuda"), expected_cuda)


def test_sigkilled_cli_run_resumes_to_identical_weights(
    seed_bundle: Path, train_shards: Path, tmp_path: Path
) -> None:
    args = [str(seed_bundle), "--data", str(train_shards), "--tokens", "40K"]
    args += ["--block-size", "32", "--batch-size", "4", "--lr", "3e-3", "--checkpoint-every", "20"]
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "xelm_cli", "train", *args, "-o", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tmp_path,  # not the checkout, whose stale xelm.egg-info would shadow the entry points
    )
    deadline = time.monotonic() + 60
    while not list(checkpoint_dir(killed).glob("step-*/state.json")):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no checkpoint appeared: {process.communicate()[1].decode()}")
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not killed.exists()
    assert run(["train", *args, "-o", str(killed), "--resume"]) == 0
    assert run(["train", *args, "-o", str(tmp_path / "full")]) == 0
    assert same_weights(tmp_path / "full", killed)


def test_an_expert_reads_only_its_languages_tokens(
    seed_bundle: Path,
    train_shards: Path,
    valid_shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read: set[str] = set()
    original = Shards.tokens

    def recording(self: Shards, language: str) -> np.ndarray:
        read.add(language)
        return original(self, language)

    monkeypatch.setattr(Shards, "tokens", recording)
    req = request(seed_bundle, train_shards, tmp_path / "tr", languages=("tr",), valid=valid_shards)
    trained = CausalLMTrainer().train(req)
    assert read == {"tr"}
    assert trained.manifest.languages == ["tr"]
    # and the documents the run consumed are Turkish documents of the data index
    shards = Shards.open(train_shards)
    stream = BlockStream(shards, ["tr"], 32, bos=0, eos=1)
    consumed = stream.documents_in(0, trained.manifest.training["steps"] * 4)
    assert {lang for lang, _ in consumed} == {"tr"}
    assert all(0 <= doc < shards.stats["tr"].documents for _, doc in consumed)


# --- the CLI -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards made with another tokenizer than the seed's."""
    root = tmp_path_factory.mktemp("other")
    tokenizer = train_tokenizer(root / "tok", vocab_size=300)
    out = root / "shards"
    prepare(SHARED_DATA / "corpus" / "valid", tokenizer, out, languages=["en"], token_caps=500)
    return out


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("tokenizer", "was prepared with"),
        ("language", "has no documents in de"),
        ("tokens", "smaller than one global batch of 128 tokens"),
        ("unwritable", "is not a writable directory"),
        ("exists", "already exists"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    capsys: pytest.CaptureFixture[str],
    seed_bundle: Path,
    train_shards: Path,
    other_shards: Path,
    tmp_path: Path,
    case: str,
    expected: str,
) -> None:
    out = tmp_path / "out"
    data, tokens, extra = train_shards, "4096", []
    if case == "tokenizer":
        data = other_shards
    elif case == "language":
        extra = ["--langs", "en,de"]
    elif case == "tokens":
        tokens = "100"
    elif case == "unwritable":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
    elif case == "exists":
        out.mkdir()
    before = sorted(tmp_path.rglob("*"))
    code, stdout, stderr = xelm(
        capsys, "train", seed_bundle, "--data", data, "--tokens", tokens, "-o", out,
        "--block-size", "32", "--batch-size", "4", *extra,
    )  # fmt: skip
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("xelm: error: ") and expected in stderr
    assert sorted(tmp_path.rglob("*")) == before


def test_plan_prints_equal_compute_budgets_and_commands(
    capsys: pytest.CaptureFixture[str],
    seed_bundle: Path,
    train_shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    alloc = tmp_path / "alloc.json"
    write_allocation(alloc, clusterer="typology", experts=[["en", "ru"], ["tr"], ["ar"]])
    common = ["--allocation", alloc, "--seed-bundle", seed_bundle, "--data", train_shards,
              "-o", "runs"]  # fmt: skip
    code, stdout, _ = xelm(capsys, "plan", "--budget", "20M", *common, "--json")
    assert code == 0
    plan = json.loads(stdout)
    tokens = {run["name"]: run["tokens"] for run in plan["runs"]}
    # 20M / 3 in whole steps of 8 x 1024 tokens: 813 steps, 6,660,096 tokens an expert
    assert tokens == {"expert-0": 6_660_096, "expert-1": 6_660_096, "expert-2": 6_660_096,
                      "dense": 19_980_288}  # fmt: skip
    expert = plan["runs"][1]["commands"]
    assert expert[0][:3] == ["xelm", "bundle", "branch"] and "--expert" in expert[0]
    assert expert[1][:3] == ["xelm", "train", "runs/branches/expert-1"]
    assert expert[1][expert[1].index("--tokens") + 1] == "6660096"
    code, stdout, _ = xelm(capsys, "plan", "--budget", "20M", *common)
    assert code == 0 and "6,660,096" in stdout
    assert f"xelm train {seed_bundle} --langs en,ru,tr,ar --role dense" in stdout

    (tmp_path / "plan.json").write_text(json.dumps(plan))
    done = Path("runs/branches/expert-1")
    done.mkdir(parents=True)
    (done / "xelm.json").write_text("{}")
    code, stdout, _ = xelm(capsys, "train-all", "plan.json", "--only", 1, "--dry-run")
    assert code == 0
    assert "skip (done)" in stdout and "xelm train runs/branches/expert-1" in stdout
    # a plan of one rank a run, on two: refused before a run starts (its batches are one's)
    code, _, stderr = xelm(capsys, "train-all", "plan.json", "--only", 1, "--dry-run",
                           "--nproc-per-node", 2)  # fmt: skip
    assert code == 2 and stderr == (
        "xelm: error: the plan was made for 1 rank a run, not --nproc-per-node 2: its batches "
        "and memory estimate are theirs; make it again with `xelm plan ... --nproc-per-node 2`, "
        "or run it with --nproc-per-node 1\n"
    )
    code, stdout, _ = xelm(capsys, "plan", "--budget", "20M", *common, "--nproc-per-node", 2,
                           "--json")  # fmt: skip
    assert code == 0
    (tmp_path / "plan.json").write_text(stdout)
    code, stdout, _ = xelm(capsys, "train-all", "plan.json", "--only", 1, "--dry-run",
                           "--nproc-per-node", 2)  # fmt: skip
    assert code == 0
    assert "torchrun --standalone --nproc-per-node 2 -m xelm_cli train runs/branches/" in stdout


@pytest.fixture(scope="module")
def flores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three FLORES-200 devtest sentences per test language, one per line."""
    root = tmp_path_factory.mktemp("flores")
    for lang in TEST_LANGS:
        lines = (SHARED_DATA / "eval" / "flores200-devtest" / f"{lang}.txt").read_text()
        (root / f"{lang}.txt").write_text("\n".join(lines.splitlines()[:3]) + "\n")
    return root


def eval_members(capsys: pytest.CaptureFixture[str], members: list[str], data: Path) -> list[str]:
    """``xelm ensemble eval MEMBERS --each --format json``: the names of the systems evaluated."""
    code, stdout, stderr = xelm(capsys, "ensemble", "eval", *members, "--data", data, "--each",
                                "--router", "uniform", "--format", "json")  # fmt: skip
    assert code == 0, stderr
    return [system["name"] for system in json.loads(stdout)["systems"]]


def test_a_glob_over_trained_experts_finds_only_bundles(
    capsys: pytest.CaptureFixture[str],
    seed_bundle: Path,
    train_shards: Path,
    flores: Path,
    tmp_path: Path,
) -> None:
    """`xelm ensemble eval experts/*` right after `xelm train -o experts/NAME`: the checkpoints
    (kept here) and the loss log live in hidden siblings, which a shell glob skips."""
    experts = tmp_path / "experts"
    small = ["--tokens", "256", "--block-size", "32", "--batch-size", "4"]
    for name, langs in (("a", "en,tr"), ("b", "ar,ru")):
        args = [seed_bundle, "--data", train_shards, *small, "--langs", langs]
        code, _, stderr = xelm(capsys, "train", *args, "-o", experts / name, "--keep-checkpoints")
        assert code == 0, stderr
    assert sorted(p.name for p in experts.iterdir()) == [".a.ckpt", ".b.ckpt", "a", "b"]
    assert [p.name for p in checkpoint_dir(experts / "a").glob("step-*")] == ["step-000000002"]
    shell = sorted(glob.glob(str(experts / "*")))  # what bash hands over for experts/*
    assert shell == [str(experts / "a"), str(experts / "b")]
    expected = ["ensemble[uniform]", "expert:a", "expert:b"]
    assert eval_members(capsys, shell, flores) == expected
    assert eval_members(capsys, [str(experts / "*")], flores) == expected  # a quoted glob


def test_finished_runs_remove_their_checkpoints_unless_kept(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, train_shards: Path, tmp_path: Path
) -> None:
    args = [seed_bundle, "--data", train_shards, "--tokens", "512", "--block-size", "32",
            "--batch-size", "4", "--checkpoint-every", "2"]  # fmt: skip
    assert xelm(capsys, "train", *args, "-o", tmp_path / "plain")[0] == 0
    assert xelm(capsys, "train", *args, "-o", tmp_path / "kept", "--keep-checkpoints")[0] == 0
    # without --keep-checkpoints only the loss log stays; with it, the newest checkpoint too
    assert sorted(p.name for p in checkpoint_dir(tmp_path / "plain").iterdir()) == ["metrics.jsonl"]
    kept = checkpoint_dir(tmp_path / "kept")
    assert sorted(p.name for p in kept.iterdir()) == ["metrics.jsonl", "step-000000004"]
    assert (kept / "step-000000004" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".kept.ckpt", ".plain.ckpt", "kept",
                                                         "plain"]  # fmt: skip


def test_an_empty_checkpoint_directory_is_removed_with_the_checkpoints(
    seed_bundle: Path, train_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trainer whose run leaves nothing else there (here: no loss log) leaves no hidden
    directory behind."""
    from xelm_trainer import metrics

    monkeypatch.setattr(metrics.MetricsLog, "write", lambda self, record: None)
    out = tmp_path / "trained"
    CausalLMTrainer().train(request(seed_bundle, train_shards, out, tokens=512))
    assert verify_bundle(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trained"]


def test_train_all_leaves_runs_experts_an_ensemble(
    capsys: pytest.CaptureFixture[str],
    seed_bundle: Path,
    train_shards: Path,
    flores: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The plan trains expert I to RUNS/experts/expert-I: `runs/experts/*` is the ensemble."""
    monkeypatch.chdir(tmp_path)  # train-all runs `python -m xelm_cli`: not from the checkout
    alloc = tmp_path / "alloc.json"
    write_allocation(alloc, clusterer="typology", experts=[["en", "tr"], ["ar", "ru"]])
    code, stdout, stderr = xelm(
        capsys, "plan", "--budget", "512", "--allocation", alloc, "--seed-bundle", seed_bundle,
        "--data", train_shards, "-o", "runs", "--train-args",
        "--block-size 32 --batch-size 4 --checkpoint-every 1", "--json",
    )  # fmt: skip
    assert code == 0, stderr
    (tmp_path / "plan.json").write_text(stdout)
    code, _, stderr = xelm(capsys, "train-all", "plan.json")
    assert code == 0, stderr
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == [".dense.ckpt", "branches", "dense", "experts"]
    assert sorted(p.name for p in (runs / "experts").iterdir()) == [
        ".expert-0.ckpt", ".expert-1.ckpt", "expert-0", "expert-1",
    ]  # fmt: skip
    shell = sorted(glob.glob("runs/experts/*"))
    assert shell == ["runs/experts/expert-0", "runs/experts/expert-1"]
    assert all(verify_bundle(Path(p)) == [] for p in shell)
    assert eval_members(capsys, shell, flores) == [
        "ensemble[uniform]", "expert:expert-0", "expert:expert-1",
    ]  # fmt: skip


def test_the_python_verb_trains_like_the_command(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, train_shards: Path, tmp_path: Path
) -> None:
    """xelm_cli.api.train with the default trainer's options (Python values or text) writes
    the bundle `xelm train` writes with the same flags, and refuses bad options in one line."""
    from xelm_cli import api

    flags = ["--block-size", "32", "--batch-size", "4", "--lr", "3e-3", "--global-batch", "256"]
    args = [seed_bundle, "--data", train_shards, "--tokens", "1024", "--langs", "tr,en", *flags]
    assert xelm(capsys, "train", *args, "-o", tmp_path / "cli")[0] == 0
    trained = api.train(
        seed_bundle, data=train_shards, tokens="1024", output=tmp_path / "python",
        languages=["tr", "en"], block_size=32, batch_size="4", lr=3e-3, global_batch_tokens="256",
    )  # fmt: skip
    assert same_weights(tmp_path / "cli", tmp_path / "python")
    record = trained.manifest.training
    assert record is not None and record["steps"] == 4
    assert record["options"]["global_batch_tokens"] == 256
    assert record["trainer"]["name"] == "causal-lm"
    assert record["command"].startswith("xelm_cli.api.train(")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"schedule": "steep"}, "option 'schedule' must be one of linear, cosine, constant"),
        ({"block_size": "big"}, "option 'block_size' expects int, not 'big'"),
        ({"speed": 2}, "trainer 'causal-lm' has no option 'speed' (its options: block_size, "),
        ({"world_size": 2}, "trainer 'causal-lm' has no option 'world_size'"),
    ]
    for options, error in cases:
        with pytest.raises(UsageError, match=re.escape(error)):
            api.train(seed_bundle, data=train_shards, tokens=1024, output=tmp_path / "bad",
                      **options)  # fmt: skip
    assert not (tmp_path / "bad").exists()
    capsys.readouterr()
    code, stdout, stderr = xelm(capsys, "train", *args, "-o", tmp_path / "bad", "--schedule", "x")
    assert (code, stdout) == (2, "")
    assert stderr == (
        "xelm: error: trainer 'causal-lm': option 'schedule' must be one of linear, cosine, "
        "constant, not 'x'\n"
    )


def test_train_help_shows_every_declared_option_with_its_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from xelm_trainer.options import TrainOptions

    from xelm_cli.plugin.options import declared_options

    monkeypatch.setenv("COLUMNS", "200")
    code, stdout, _ = xelm(capsys, "train", "--help")
    assert code == 0
    for spec in declared_options(TrainOptions):
        if spec.cli:
            assert spec.flag_name in stdout, spec.name
    assert "--world-size" not in stdout and "--train-arg" in stdout
    assert "Tokens per packed block. [default: 1024]" in stdout
    assert "Peak learning rate. [default: 0.0001]" in stdout
    assert "plain loss). [default: true; --no-lean-loss turns it off]" in stdout


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("train", "plan", "train-all"):
        code, stdout, _ = xelm(capsys, command, "--help")
        assert code == 0 and "Example:" in stdout


def test_a_resumed_metrics_log_drops_later_and_torn_lines(tmp_path: Path) -> None:
    from xelm_trainer.metrics import MetricsLog

    log = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (2, 4, 6)]
    log.write_text("\n".join(lines) + '\n{"step": 8, "lo')  # the last line torn by a kill
    MetricsLog(log, resumed_at=4).write({"step": 5, "loss": 0.5})
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [2, 4, 5]


def _lines(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, list[str]]:
    code, _, stderr = xelm(capsys, *args)
    return code, stderr.splitlines()


def test_train_all_runs_several_at_once_and_the_merged_runs_after_the_experts(
    capsys: pytest.CaptureFixture[str],
    seed_bundle: Path,
    train_shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--parallel 2 trains dense and expert-0 side by side, each logging to runs/logs/NAME.log;
    expert-1 fails (a bad option), so the average and moe runs that wait for it are not run and
    the command fails in one line naming it and its log. Fixed, the same command on --devices
    runs what is left (pinned to a device each) and skips what is done."""
    from xelm_cli.training.plan_runner import run_plan

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # an inherited one would win
    alloc = tmp_path / "alloc.json"
    write_allocation(alloc, clusterer="typology", experts=[["en", "tr"], ["ar", "ru"]])
    code, stdout, stderr = xelm(
        capsys, "plan", "--budget", "1024", "--moe-tokens", "256", "--allocation", alloc,
        "--seed-bundle", seed_bundle, "--data", train_shards, "-o", "runs", "--train-args",
        "--block-size 32 --batch-size 4", "--json",
    )  # fmt: skip
    assert code == 0, stderr
    plan = json.loads(stdout)
    assert [r["name"] for r in plan["runs"]] == ["expert-0", "expert-1", "dense", "average", "moe"]
    broken = json.loads(stdout)
    trained = broken["runs"][1]["commands"][1]
    trained[trained.index("--block-size") + 1] = "1"  # refused: a block is at least 2 tokens
    (tmp_path / "plan.json").write_text(json.dumps(broken))

    code, lines = _lines(capsys, "train-all", "plan.json", "--parallel", "2")
    assert code == 1
    logs = tmp_path / "runs" / "logs"
    assert lines[-1] == (
        f"xelm: error: 1 of 5 runs failed: expert-1 (exit 2; log {logs / 'expert-1.log'}); "
        "not run: average, moe; fix the cause and run the same command again (finished runs "
        "are skipped)"
    )
    assert "not run: average (a run it waits for failed)" in lines
    started = [line.split()[1] for line in lines if line.startswith("start: ")]
    assert started[0] == "dense"  # the longest run first (1,024 tokens; an expert 384)
    assert "block size must be at least 2" in (logs / "expert-1.log").read_text()
    assert (
        verify_bundle(Path("runs/dense")) == []
        and verify_bundle(Path("runs/experts/expert-0")) == []
    )
    assert not Path("runs/average").exists() and not Path("runs/moe").exists()
    header = (logs / "dense.log").read_text().splitlines()
    assert header[0].endswith("dense: OMP_NUM_THREADS=" + str(max(1, (os.cpu_count() or 1) // 2)))
    assert header[1].startswith("$ xelm train ") and "--role dense" in header[1]

    (tmp_path / "plan.json").write_text(json.dumps(plan))
    said: list[str] = []
    outcomes = {o.name: o for o in run_plan(Path("plan.json"), devices="5,6", say=said.append)}
    assert {name: o.status for name, o in outcomes.items()} == {
        "expert-0": "skipped", "dense": "skipped", "expert-1": "done", "average": "done",
        "moe": "done",
    }  # fmt: skip
    assert "skip (done): dense" in said
    assert outcomes["average"].started >= outcomes["expert-1"].ended  # type: ignore[operator]
    assert outcomes["moe"].started >= outcomes["expert-1"].ended  # type: ignore[operator]
    assert {outcomes[n].devices for n in ("expert-1", "average", "moe")} <= {"5", "6"}
    assert "CUDA_VISIBLE_DEVICES=" in (logs / "moe.log").read_text().splitlines()[0]
    for bundle in ("experts/expert-1", "average", "moe"):
        assert verify_bundle(Path("runs") / bundle) == [], bundle
    moe = Bundle.read(Path("runs/moe")).manifest
    assert moe.training["tokens"] == 256  # type: ignore[index]


def test_two_runs_train_at_the_same_time(
    seed_bundle: Path, train_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--parallel 2 on a plan of two runs: each starts before the other ends."""
    from xelm_cli.training.plan_runner import run_plan

    monkeypatch.chdir(tmp_path)
    runs = []
    for name in ("a", "b"):
        command = ["xelm", "train", str(seed_bundle), "--data", str(train_shards)]
        command += ["--tokens", "512", "--block-size", "32", "--batch-size", "4"]
        command += ["-o", f"runs/{name}"]
        runs.append({"name": name, "output": f"runs/{name}", "commands": [command]})
    plan = {"format": "xelm-train-plan", "runs": runs}  # given whole, as make_plan returns it
    a, b = run_plan(plan, parallel=2, say=lambda line: None)
    assert a.status == b.status == "done"
    assert a.started < b.ended and b.started < a.ended  # type: ignore[operator]
    assert a.output == tmp_path / "runs" / "a"
    refusal = r"^the plan is not a plan written by `xelm plan --json`$"
    with pytest.raises(FormatError, match=refusal):
        run_plan({"runs": runs})


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--devices", "0,1,2", "--nproc-per-node", "2"], "a multiple of --nproc-per-node 2"),
        (["--devices", "0,0"], "give distinct device numbers"),
        (["--devices", "0,00"], "give distinct device numbers"),
        (["--devices", "x,y"], "'x' is not a device number; give non-negative integers"),
        (["--devices=0,-1"], "'-1' is not a device number; give non-negative integers"),
        (["--devices", "0,1", "--parallel", "2"], "give --devices or --parallel, not both"),
        (["--parallel", "0"], "must be at least 1"),
    ],
)
def test_train_all_refuses_devices_it_cannot_share_out(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], expected: str
) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format": "xelm-train-plan", "runs": []}))
    code, stdout, stderr = xelm(capsys, "train-all", plan, *args)
    assert code == 2 and stdout == "" and stderr.count("\n") == 1 and expected in stderr


def test_train_all_refuses_what_is_not_a_plan(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("not json")
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    expected = {  # a missing file is a usage error (2), one that is not a plan a format error (3)
        "missing.json": (2, f"no plan at {tmp_path / 'missing.json'}: write one with `xelm plan"),
        "notes.txt": (3, f"plan {tmp_path / 'notes.txt'}: not valid JSON"),
        "other.json": (3, "is not a plan written by `xelm plan --json`"),
    }
    for name, (exit_code, message) in expected.items():
        code, stdout, stderr = xelm(capsys, "train-all", tmp_path / name)
        assert code == exit_code and stdout == "" and stderr.count("\n") == 1, name
        assert message in stderr, stderr


def test_device_groups_share_out_devices_by_nproc_per_node() -> None:
    from xelm_cli.training.plan_runner import device_groups

    assert device_groups("0,1,2,3", 2, 1) == ["0,1", "2,3"]
    assert device_groups(" 4, 5 ", 1, 1) == ["4", "5"]
    assert device_groups("00,01", 1, 1) == ["0", "1"]
    assert device_groups(None, 1, 3) == [None, None, None]


@pytest.mark.parametrize(
    ("environment", "launcher"),
    [
        ({}, "xelm"),
        ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, "xelm"),  # no torchrun: as typed
        ({"TORCHELASTIC_RUN_ID": "r", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"},
         "torchrun --standalone --nproc-per-node 1 -m xelm_cli"),
        ({"TORCHELASTIC_RUN_ID": "r", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"},
         "torchrun --nnodes 2 --nproc-per-node 8 -m xelm_cli"),
    ],
)  # fmt: skip
def test_the_recorded_command_names_torchrun_when_it_launched_the_run(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], launcher: str
) -> None:
    from xelm_cli.training.cli import _command_line

    for name in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", ["/x/xelm_cli/__main__.py", "train", "seed/", "-o", "a b"])
    assert _command_line() == f"{launcher} train seed/ -o 'a b'"


def test_runs_that_wait_for_each_other_are_not_run(tmp_path: Path) -> None:
    """A cycle of `after` (no plan of xelm's has one, a hand-edited one may): nothing can start,
    so both are reported not run instead of waiting for ever."""
    from xelm_cli.training.plan_runner import PlanRunner

    runs = [
        {"name": name, "after": [other], "output": str(tmp_path / name),
         "commands": [["xelm", "train", "seed", "-o", str(tmp_path / name)]]}
        for name, other in (("a", "b"), ("b", "a"))
    ]  # fmt: skip
    outcomes = PlanRunner({"runs": runs}, runs, [None, None], say=lambda line: None).run()
    assert [(o.name, o.status) for o in outcomes] == [("a", "not run"), ("b", "not run")]
