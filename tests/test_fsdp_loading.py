"""FSDP loads the seed once: rank 0 reads the weights (and on --resume the checkpoint's weights
and optimiser state), the other ranks build the model on the meta device and receive their
shards after sharding. 2 gloo ranks on the CPU (this file run under torchrun, below)."""

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import same_weights
from ddp_helpers import TOLERANCE, launch, max_difference
from safetensors.torch import load_file
from train_helpers import Killed
from xelm_trainer.distributed import Sharding
from xelm_trainer.loop import TrainingRun
from xelm_trainer.options import TrainOptions

from xelm_cli.bundle.store import Bundle
from xelm_cli.plugin.contracts import TrainRequest, checkpoint_dir

# 8 steps of 8 blocks of 32 tokens: 2 ranks x 2 blocks x 2 accumulated micro-batches
OPTIONS: dict[str, Any] = {"block_size": 32, "batch_size": 2, "global_batch_tokens": 256}
OPTIONS |= {"lr": 3e-3, "checkpoint_every": 4, "log_every": 1, "seed": 1, "device": "cpu"}
OPTIONS |= {"fsdp": True, "keep_checkpoints": True}
TOKENS = 2048


def hf_seed(model: Any, seed_bundle: Path, out: Path) -> Path:
    """A seed bundle of ``model`` with the test tokenizer."""
    from xelm_cli.bundle.seed import init_from_hf

    model.save_pretrained(out / "hf")
    Bundle.open(seed_bundle).load_tokenizer().save_pretrained(out / "hf")
    init_from_hf(out / "hf", out / "seed", languages=Bundle.open(seed_bundle).languages)
    return out / "seed"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> dict[str, Path]:
    """Llama-style seeds with untied (the tiny config's) and tied embeddings, both with
    rotary frequencies (a buffer no state dict holds), and a GPT-2 (tied, dropout 0.1)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = Bundle.open(seed_bundle).load_tokenizer()
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    tied = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        max_position_embeddings=64, tie_word_embeddings=True, **ids)  # fmt: skip
    gpt2 = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2,
        n_positions=64, **ids)  # fmt: skip
    assert gpt2.resid_pdrop == gpt2.attn_pdrop == 0.1
    root = tmp_path_factory.mktemp("fsdp-seeds")
    return {
        "llama": seed_bundle,
        "llama-tied": hf_seed(LlamaForCausalLM(tied), seed_bundle, root / "llama-tied"),
        "gpt2": hf_seed(GPT2LMHeadModel(gpt2), seed_bundle, root / "gpt2"),
    }


Run = Callable[..., Path]


@pytest.fixture(scope="module")
def sharded_run(
    tmp_path_factory: pytest.TempPathFactory,
    seeds: dict[str, Path],
    train_shards: Path,
) -> Run:
    """``sharded_run(seed, mode, ranks=2, stop=0, resume_from=None)``: the trained bundle of
    a run under torchrun (remembered: tests share the uninterrupted runs); with ``stop`` the
    checkpoint directory of a run killed after that step's checkpoint; ``resume_from`` such a
    directory, copied, which the run resumes."""
    root = tmp_path_factory.mktemp("fsdp-runs")
    done: dict[tuple[Any, ...], Path] = {}

    def run(
        seed: str,
        mode: str,
        ranks: int = 2,
        stop: int = 0,
        resume_from: Path | None = None,
    ) -> Path:
        key = (seed, mode, ranks, stop, resume_from)
        if key not in done:
            out = root / f"run-{len(done)}"
            if resume_from is not None:
                shutil.copytree(resume_from, checkpoint_dir(out))
            program = [__file__, str(seeds[seed]), str(train_shards), str(out), mode]
            program += [str(stop), json.dumps(OPTIONS | {"resume": resume_from is not None})]
            finished = launch(program, root, ranks)
            assert finished.returncode == 0, finished.stderr[-3000:]
            done[key] = checkpoint_dir(out) if stop else out
        return done[key]

    return run


def loss_curve(bundle: Path) -> list[list[float]]:
    curve: list[list[float]] = (Bundle.open(bundle).manifest.training or {})["loss_curve"]
    return curve


@pytest.mark.parametrize("seed", ["llama", "llama-tied", "gpt2"])
def test_rank_0_alone_reads_the_weights_and_the_run_trains_the_same(
    sharded_run: Run, seed: str, seeds: dict[str, Path]
) -> None:
    """The other rank never reads the weights (reading them raises there: the run before this
    change fails), and the trained bundle is the one of every rank reading them, bit for bit:
    the shards hold the same numbers either way, and so do the rotary buffers, the tied
    output layer (one parameter) and, for GPT-2, every rank's dropout stream."""
    once, everywhere = sharded_run(seed, "once"), sharded_run(seed, "everywhere")
    assert same_weights(once, everywhere)
    assert max_difference(once, seeds[seed]) > 1000 * TOLERANCE  # it trained
    assert loss_curve(once) == loss_curve(everywhere)
    record = Bundle.open(once).manifest.training or {}
    assert record["implementation"]["fsdp"] == {"param_dtype": "float32", "reduce_dtype": "float32"}
    assert record["hardware"]["world_size"] == 2


def test_a_run_loaded_once_resumes_exactly_on_two_ranks(sharded_run: Run) -> None:
    """GPT-2 (dropout: each rank's stream continues from its checkpointed state) killed after
    its step-4 checkpoint and resumed on 2 ranks, neither time reading the weights on rank 1:
    bit for bit the uninterrupted run."""
    killed = sharded_run("gpt2", "once", stop=4)
    assert [path.name for path in killed.glob("step-*")] == ["step-000000004"]
    resumed = sharded_run("gpt2", "once", resume_from=killed)
    assert same_weights(resumed, sharded_run("gpt2", "once"))
    assert loss_curve(resumed) == loss_curve(sharded_run("gpt2", "once"))


def test_a_run_loaded_once_resumes_on_one_rank(sharded_run: Run) -> None:
    """The 2-rank checkpoint resumed by FSDP on one rank (which loads it whole): the
    uninterrupted 2-rank run within float32 summation noise (the gradients are averaged
    over another number of ranks; measured 1.2e-7, TOLERANCE is 1e-5)."""
    killed = sharded_run("llama", "once", stop=4)
    resumed = sharded_run("llama", "once", ranks=1, resume_from=killed)
    diff = max_difference(resumed, sharded_run("llama", "once"))
    print(f"max abs weight difference, resumed on 1 rank vs 2 ranks: {diff:.3g}")
    assert diff < TOLERANCE, diff
    assert (Bundle.open(resumed).manifest.training or {})["hardware"]["world_size"] == 1


def test_bf16_gathers_train_fp32_weights_close_to_the_fp32_run(sharded_run: Run) -> None:
    """gloo runs FSDP's bf16 all-gathers on the CPU too (forced here; the trainer gathers bf16
    on CUDA only): the forward and backward compute with bf16 copies, the shards, their
    gradients (reduced in fp32) and AdamW's moments stay fp32."""
    bf16, fp32 = sharded_run("llama", "bf16"), sharded_run("llama", "once")
    record = Bundle.open(bf16).manifest.training or {}
    assert record["implementation"]["fsdp"] == {
        "param_dtype": "bfloat16",
        "reduce_dtype": "float32",
    }
    final = checkpoint_dir(bf16) / "step-000000008"
    for name in ("model.safetensors", "optimizer.safetensors"):
        dtypes = {t.dtype for t in load_file(str(final / name)).values() if t.is_floating_point()}
        assert dtypes == {torch.float32}, (name, dtypes)
    losses = torch.tensor(loss_curve(bf16))[:, 1]
    reference = torch.tensor(loss_curve(fp32))[:, 1]
    print(f"largest loss difference, bf16 gathers vs fp32: {(losses - reference).abs().max():.3g}")
    # measured 1.5e-3 at most (the losses are about 5.5)
    assert torch.allclose(losses, reference, atol=1e-2)
    assert not torch.equal(losses, reference)  # the forward did run in bf16


def test_fsdp_gathers_bf16_on_cuda_and_fp32_elsewhere() -> None:
    """What the trainer shards with: bf16 all-gathers where autocast computes in bf16."""
    cuda, cpu = Sharding.on(torch.device("cuda")), Sharding.on(torch.device("cpu"))
    assert (cuda.param_dtype, cuda.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert (cpu.param_dtype, cpu.reduce_dtype) == (torch.float32, torch.float32)
    assert cuda.from_main and cpu.from_main


# --- under torchrun -------------------------------------------------------------------------------


class ShardedRun(TrainingRun):
    """The trainer sharding as ``mode`` says: ``once`` as the trainer does (rank 0 reads the
    weights), ``everywhere`` as before (every rank reads them), ``bf16`` once with bf16
    all-gathers; killed after step ``stop``."""

    def __init__(self, mode: str, stop: int) -> None:
        self.mode, self.stop = mode, stop

    def sharding(self, options: TrainOptions, device: torch.device) -> Sharding | None:
        sharding = super().sharding(options, device)
        assert sharding is not None
        if self.mode == "everywhere":
            return replace(sharding, from_main=False)
        if self.mode == "bf16":
            return replace(sharding, param_dtype=torch.bfloat16)
        return sharding

    def on_step_end(self, step: int) -> None:
        if step == self.stop:
            raise Killed


def forbid_reading_weights() -> None:
    """From here on this process raises when it reads a bundle's weights or a checkpoint's
    weights or optimiser state."""
    import safetensors.torch

    read_file = safetensors.torch.load_file

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError(f"rank {os.environ['RANK']} read weights")

    def load_file(path: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(path).name in ("model.safetensors", "optimizer.safetensors"):
            refuse()
        return read_file(path, *args, **kwargs)

    Bundle.load_model = refuse  # type: ignore[method-assign]
    safetensors.torch.load_model = refuse  # type: ignore[assignment]
    safetensors.torch.load_file = load_file  # type: ignore[assignment]


if __name__ == "__main__":
    bundle, data, out, mode, stop, options = sys.argv[1:]
    if mode != "everywhere" and os.environ["RANK"] != "0":
        forbid_reading_weights()
    named = json.loads(options)
    resume = named.pop("resume")
    request = TrainRequest(
        Path(bundle), Path(data), Path(out), TOKENS, options=named, resume=resume
    )
    with contextlib.suppress(Killed):
        ShardedRun(mode, int(stop)).train(request)
