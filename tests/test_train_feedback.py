"""What xelm train tells its user: the progress bar before and after the first logged step,
a plain line per logged step in logs, a --device or --attention it cannot use and a block past
a learned position table refused in one line before anything is written, --tokens that do not
fill whole steps or pass over the data more than once, a block past rotary positions, out of
memory as one line with the way out, and --compile's wait."""

import importlib.util
import json
import re
import time
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SHARED_DATA
from rich.console import Console
from xelm_trainer import loop
from xelm_trainer.feedback import TrainProgress, clock, passes_note, smaller_batch

from xelm_cli.bundle.store import Bundle
from xelm_cli.cli import run
from xelm_cli.cluster.allocation import write_allocation
from xelm_cli.data.prepare import prepare
from xelm_cli.data.shards import Shards
from xelm_cli.plugin.contracts import TrainRequest, checkpoint_dir
from xelm_cli.training.checkpoints import BlockStream, list_checkpoints


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
    prepare(SHARED_DATA / "corpus" / "valid", seed_bundle, out, languages=["en"], token_caps=3000)
    return out


def train(seed: Path, shards: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(seed), "--data", str(shards), "-o", str(out), "--langs", "en",
            "--block-size", "32", "--batch-size", "4", *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("tpu", "unknown device 'tpu'; use auto, cpu, cuda, cuda:N or mps"),
        ("meta", "device 'meta' is not one xelm runs on; use cpu, cuda or mps"),
        (
            "cuda",
            "device 'cuda' asked for but CUDA is not available in this torch; use --device cpu",
        ),
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
    printed, err = capsys.readouterr()
    assert "whole step" not in err and ": 1 step, 128 tokens" in printed
    assert "passes over" not in err  # 128 tokens of the about 3,000 the shards hold


def test_logs_get_a_plain_line_per_logged_step(
    seed_bundle: Path, shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"  # 4 steps of 128 tokens, logged at 2 and 4; stderr is not a terminal
    assert run(train(seed_bundle, shards, out, "--tokens", "512", "--log-every", "2")) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    curve = Bundle.open(out).manifest.training["loss_curve"]  # type: ignore[index]
    assert [step for step, _ in curve] == [2, 4]
    assert len(lines) == 2
    for line, (step, loss) in zip(lines, curve, strict=True):
        left = "0s" if step == 4 else r"\d+s"
        pattern = rf"step {step}/4  loss {loss:.3f}  [\d,]+ tok/s  \d+s elapsed, {left} left"
        assert re.fullmatch(pattern, line), line


def test_the_speed_leaves_validations_and_checkpoints_out(
    seed_bundle: Path, shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tokens_per_s of a logged step measures the training steps since the last logged one:
    the validations and checkpoints in between (each slowed by 2 s here) are left out, so
    the logged intervals add up to the run's time in steps (before: they counted too, a dip
    after every validation and checkpoint)."""
    pause = 2.0  # 20x a quiet machine's two steps (0.1 s), so a loaded one still fits
    for name in ("evaluate", "checkpoint"):

        def slowed(*args: Any, real: Any = getattr(loop, name), **kwargs: Any) -> Any:
            time.sleep(pause)
            return real(*args, **kwargs)

        monkeypatch.setattr(loop, name, slowed)
    out = tmp_path / "out"  # 4 steps of 128 tokens logged at 2 and 4; validated after every one
    args = train(seed_bundle, shards, out, "--tokens", "512", "--log-every", "2", "--valid",
                 str(shards), "--eval-every", "1", "--eval-blocks", "4", "--checkpoint-every",
                 "3")  # fmt: skip
    assert run(args) == 0
    lines = (checkpoint_dir(out) / "metrics.jsonl").read_text().splitlines()
    logged = [row for row in map(json.loads, lines) if "tokens_per_s" in row]
    assert [row["step"] for row in logged] == [2, 4]
    intervals = [2 * 128 / row["tokens_per_s"] for row in logged]
    record = Bundle.open(out).manifest.training or {}
    print(f"logged intervals {intervals}, time in steps {record['seconds']}")
    # step 4's interval held 2 validations and a checkpoint (6 s); step 2's the first step's
    # warm-up (0.6 s measured), and the intervals add up to that time in steps
    assert intervals[1] < pause, intervals
    assert abs(sum(intervals) - record["seconds"]) < pause / 2, (intervals, record["seconds"])


def test_a_terminal_gets_the_bar_and_no_lines(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    bar = TrainProgress(total=4, done=0)
    bar.update(2, loss=3.0, speed=100.0)
    assert "step 2/4" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0.4, "0s"), (45, "45s"), (62, "1m02s"), (3599.6, "1h00m"), (3 * 3600 + 7 * 60 + 5, "3h07m")],
)
def test_times_are_short(seconds: float, expected: str) -> None:
    assert clock(seconds) == expected


@pytest.fixture(scope="module")
def few_shards(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> Path:
    out = tmp_path_factory.mktemp("few") / "shards"
    prepare(SHARED_DATA / "corpus" / "valid", seed_bundle, out, languages=["en"], token_caps=200)
    return out


def epoch_tokens(seed_bundle: Path, shards: Path) -> int:
    """The tokens of one pass of the block stream over ``shards``' English documents: theirs
    and each one's start and end tokens."""
    framing = Bundle.open(seed_bundle).framing()
    stream = BlockStream(Shards.open(shards), ["en"], 32, bos=framing.start, eos=framing.end)
    return stream.epoch_tokens


def test_tokens_beyond_the_data_say_how_many_passes(
    seed_bundle: Path, few_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    epoch = epoch_tokens(seed_bundle, few_shards)
    assert 100 < epoch < 512
    out = tmp_path / "out"
    assert run(train(seed_bundle, few_shards, out, "--tokens", "512")) == 0
    expected = (
        f"xelm: --tokens 512 is about {512 / epoch:.1f} passes over the {epoch:,} tokens of "
        "these shards' documents in en, with their start and end tokens (the paper trains one "
        "pass)\n"
    )
    assert expected in capsys.readouterr().err


def test_the_passes_count_each_documents_start_and_end_tokens(
    seed_bundle: Path, few_shards: Path
) -> None:
    """The stream packs ``bos doc eos``: up to its epoch's tokens the data does not repeat
    (before: measured against the documents' tokens alone, 0.98 of a pass was 'about 1.0
    passes')."""
    shards, framing = Shards.open(few_shards), Bundle.open(seed_bundle).framing()
    epoch = epoch_tokens(seed_bundle, few_shards)
    assert framing.start is not None and framing.end is not None
    assert epoch == shards.tokens_in(["en"]) + 2 * shards.stats["en"].documents
    assert passes_note(epoch, shards, ["en"], framing) is None
    note = passes_note(epoch + 1, shards, ["en"], framing)
    assert note is not None and f"is about 1.0 passes over the {epoch:,} tokens of" in note


@pytest.mark.parametrize(
    ("attention", "module", "expected"),
    [
        ("flash_attention_2", "flash_attn", "the flash-attn package: pip install flash-attn"),
        (
            "flash_attention_3",
            "flash_attn_interface",
            "the flash-attn-3 package: build it from hopper/ in "
            "github.com/Dao-AILab/flash-attention",
        ),
    ],
)
def test_flash_attention_without_its_package_is_refused_before_anything_is_read(
    seed_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    attention: str, module: str, expected: str,
) -> None:  # fmt: skip
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed")
    missing = tmp_path / "no-shards"  # not read: the refusal comes first
    args = train(seed_bundle, missing, tmp_path / "out", "--tokens", "128")
    assert run([*args, "--attention", attention]) == 2
    err = capsys.readouterr().err
    refusal = f"--attention {attention} needs {expected}, or use --attention sdpa"
    assert err == f"xelm: error: {refusal}\n"
    assert list(tmp_path.iterdir()) == []


CPU_OUT_OF_MEMORY = (
    "[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)"
)


def fails_at_forward(monkeypatch: pytest.MonkeyPatch, error: Exception, call: int) -> None:
    """The loaded model's ``call``-th forward raises ``error`` (a hook on the real model)."""
    load = loop.load_model
    calls = count(1)

    def raise_at_call(*_: Any) -> None:
        if next(calls) == call:
            raise error

    def load_failing(*args: Any) -> Any:
        model = load(*args)
        model.register_forward_hook(raise_at_call)
        return model

    monkeypatch.setattr(loop, "load_model", load_failing)


@pytest.mark.parametrize(
    "error", [torch.OutOfMemoryError("CUDA out of memory"), RuntimeError(CPU_OUT_OF_MEMORY)]
)
def test_out_of_memory_is_one_line_naming_the_way_out_and_keeps_checkpoints(
    seed_bundle: Path, shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, error: Exception,
) -> None:  # fmt: skip
    out = tmp_path / "out"  # 4 steps, a checkpoint after step 2; step 3's forward fails
    args = train(seed_bundle, shards, out, "--tokens", "512", "--checkpoint-every", "2")
    fails_at_forward(monkeypatch, error, call=3)
    assert run(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (
        "xelm: error: out of memory in step 3 at --batch-size 4 x --block-size 32: use a "
        "smaller --batch-size with --global-batch 128 (gradient accumulation keeps the step "
        "size) or --gradient-checkpointing; `xelm plan --memory SIZE` finds the largest batch "
        "that fits; the checkpoint of step 2 stays: --resume --batch-size 2 --global-batch 128 "
        "continues from it (or --resume --gradient-checkpointing)"
    )
    assert [step for step, _ in list_checkpoints(checkpoint_dir(out))] == [2]
    assert not out.exists()
    monkeypatch.undo()
    assert run([*args, "--resume", "--batch-size", "2", "--global-batch", "128"]) == 0
    assert "resuming from step 2" in capsys.readouterr().err
    assert Bundle.open(out).manifest.training["options"]["batch_size"] == 2  # type: ignore[index]


def test_out_of_memory_at_batch_size_one_names_less_memory_per_block(
    seed_bundle: Path, shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """No smaller --batch-size than 1 (before, the line advised one): gradient checkpointing,
    FSDP or shorter blocks; the first two resume the checkpoint (--block-size cannot)."""
    out = tmp_path / "out"  # 4 steps of 1 x 32 tokens, a checkpoint after step 2
    args = train(seed_bundle, shards, out, "--tokens", "128", "--checkpoint-every", "2")
    fails_at_forward(monkeypatch, torch.OutOfMemoryError("CUDA out of memory"), call=3)
    assert run([*args, "--batch-size", "1"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "xelm: error: out of memory in step 3 at --batch-size 1 x --block-size 32: a "
        "micro-batch is one block already: use --gradient-checkpointing, --fsdp (under "
        "torchrun) or a smaller --block-size; the checkpoint of step 2 stays: --resume "
        "--gradient-checkpointing or --resume --fsdp (under torchrun) continues from it"
    )


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {"gradient_checkpointing": True},
            "use --fsdp (under torchrun) or a smaller --block-size",
        ),
        (
            {"gradient_checkpointing": True, "fsdp": True, "world_size": 2},
            "use a smaller --block-size",
        ),
    ],
)
def test_out_of_memory_at_batch_size_one_names_what_is_not_on_yet(
    tmp_path: Path, options: dict[str, Any], expected: str
) -> None:
    from xelm_trainer.feedback import out_of_memory_line
    from xelm_trainer.options import TrainOptions

    resolved = TrainOptions.from_dict({"batch_size": 1, "block_size": 4096, **options})
    request = TrainRequest(tmp_path, tmp_path, tmp_path / "out", tokens=1, options={})
    assert "--batch-size" not in out_of_memory_line(request, resolved, 0).partition(": ")[2]
    assert out_of_memory_line(request, resolved, 0) == (
        "out of memory in step 1 at --batch-size 1 x --block-size 4096: a micro-batch is one "
        f"block already: {expected}"
    )


@pytest.mark.parametrize(("batch_size", "smaller"), [(1, None), (2, 1), (5, 1), (6, 3), (9, 3)])
def test_the_smaller_batch_divides_the_batch(batch_size: int, smaller: int | None) -> None:
    assert smaller_batch(batch_size) == smaller


def test_other_runtime_errors_stay_internal_errors(
    seed_bundle: Path, shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    fails_at_forward(monkeypatch, RuntimeError("mat1 and mat2 shapes cannot be multiplied"), 1)
    assert run(train(seed_bundle, shards, tmp_path / "out", "--tokens", "128")) == 70
    assert "internal error: RuntimeError: mat1 and mat2" in capsys.readouterr().err


def test_compile_says_the_first_steps_take_longer(
    seed_bundle: Path, shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(train(seed_bundle, shards, tmp_path / "out", "--tokens", "128", "--compile")) == 0
    err = capsys.readouterr().err
    assert err.count("compiling the model") == 1
    assert "xelm: compiling the model (torch.compile): the first steps take longer\n" in err


def test_a_block_past_the_models_positions_is_said(
    seed_bundle: Path, shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tiny seed declares 1,024 positions (max_position_embeddings); its rotary positions
    still run past them, so the run trains, and says so first."""
    long = train(seed_bundle, shards, tmp_path / "long", "--tokens", "1152",
                 "--block-size", "1152", "--batch-size", "1")  # fmt: skip
    assert run(long) == 0
    assert (
        "xelm: warning: --block-size 1,152 is longer than the 1,024 positions the model declares "
        "(max_position_embeddings): training runs past them; pass --block-size 1024 (or less)"
        in capsys.readouterr().err
    )
    assert run(train(seed_bundle, shards, tmp_path / "short", "--tokens", "128")) == 0
    assert "positions the model declares" not in capsys.readouterr().err


def tiny_seed(family: str, tokenizer_of: Path, out: Path) -> Path:
    """A random seed of ``family`` (hidden 16, one layer, 64 positions) with the tokenizer of
    the bundle ``tokenizer_of``: the shards made for that bundle fit a GPT-2 or OPT seed."""
    from transformers import AutoModelForCausalLM, GPT2Config, OPTConfig, Qwen2Config

    from xelm_cli.bundle.seed import init_from_hf

    tokenizer = Bundle.open(tokenizer_of).load_tokenizer()
    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    configs = {
        "gpt2": lambda: GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=64, **ids),
        "opt": lambda: OPTConfig(
            hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
            word_embed_proj_dim=16, max_position_embeddings=64, **ids,
        ),
        "qwen2": lambda: Qwen2Config(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=64, **ids,
        ),
    }  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(configs[family]()).save_pretrained(out / "hf")
    tokenizer.save_pretrained(out / "hf")
    return init_from_hf(str(out / "hf"), out / "seed", languages=["en"]).path


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_a_block_past_a_learned_position_table_is_refused_before_anything_is_written(
    seed_bundle: Path, shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    family: str,
) -> None:  # fmt: skip
    """GPT-2's wpe and OPT's embed_positions (64 positions, OPT's table 2 rows longer) would
    be indexed past their end inside the model; a block of 64 still trains."""
    seed = tiny_seed(family, seed_bundle, tmp_path / family)
    capsys.readouterr()
    before = sorted(tmp_path.rglob("*"))
    one = ("--batch-size", "1", "--device", "cpu")
    long = train(seed, shards, tmp_path / "long", "--tokens", "65", "--block-size", "65", *one)
    assert run(long) == 2
    assert capsys.readouterr().err == (
        "xelm: error: --block-size 65 is longer than the 64 positions of this model's learned "
        "position table: pass --block-size 64 or less\n"
    )
    assert sorted(tmp_path.rglob("*")) == before
    fits = train(seed, shards, tmp_path / "fits", "--tokens", "128", "--block-size", "64", *one)
    assert run(fits) == 0
    assert "positions" not in capsys.readouterr().err


def test_plan_refuses_a_block_past_a_learned_position_table(
    seed_bundle: Path, shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`xelm plan` refuses the block every run of it would be refused with, nothing written."""
    seed = tiny_seed("gpt2", seed_bundle, tmp_path / "gpt2")
    write_allocation(tmp_path / "alloc.json", clusterer="typology", experts=[["en"]])
    capsys.readouterr()
    args = ["plan", "--budget", "4K", "--allocation", str(tmp_path / "alloc.json")]
    args += ["--seed-bundle", str(seed), "--data", str(shards), "-o", str(tmp_path / "runs")]
    assert run([*args, "--train-args", "--block-size 65"]) == 2
    assert capsys.readouterr().err == (
        "xelm: error: --block-size 65 is longer than the 64 positions of this model's learned "
        "position table: pass --block-size 64 or less\n"
    )
    assert not (tmp_path / "runs").exists()
    assert run([*args, "--train-args", "--block-size 64"]) == 0


def test_a_rotary_model_past_its_positions_is_only_warned(
    seed_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Qwen2's rotary positions run past the 64 it declares (as the Llama seed's do)."""
    seed = tiny_seed("qwen2", seed_bundle, tmp_path / "qwen2")
    own = tmp_path / "shards"  # transformers gives the tokenizer Qwen2's class: its own shards
    prepare(SHARED_DATA / "corpus" / "valid", seed, own, languages=["en"], token_caps=200)
    long = train(seed, own, tmp_path / "long", "--tokens", "80", "--block-size", "80",
                 "--batch-size", "1")  # fmt: skip
    assert run(long) == 0
    assert (
        "xelm: warning: --block-size 80 is longer than the 64 positions the model declares "
        "(max_position_embeddings): training runs past them; pass --block-size 64 (or less)"
        in capsys.readouterr().err
    )


def test_a_run_stopped_before_its_first_metrics_leaves_no_checkpoint_folder(
    tmp_path: Path,
) -> None:
    """Ctrl-C or SIGTERM in a run's first steps left an empty .OUT.ckpt/ behind: the folder
    is made with the first record (of the metrics or a checkpoint) now."""
    from xelm_trainer.metrics import MetricsLog

    folder = checkpoint_dir(tmp_path / "out")
    metrics = MetricsLog(folder / "metrics.jsonl", resumed_at=0)
    assert not folder.exists()
    metrics.write({"step": 1, "loss": 2.5})
    assert (folder / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.5}\n'
    resumed = MetricsLog(folder / "metrics.jsonl", resumed_at=0)  # the step-1 line is past it
    resumed.write({"step": 1, "loss": 2.4})
    assert (folder / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.4}\n'
