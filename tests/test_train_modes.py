"""The trainer trains in train mode: dropout and gradient checkpointing act from the first step
and after a --resume (``from_pretrained`` returns a model in eval mode); under torchrun every
rank draws its own dropout masks and a resume continues each rank's stream."""

import contextlib
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TEST_LANGS, same_weights
from ddp_helpers import launch
from safetensors.torch import load_file
from train_helpers import Killed, StopsAt, request
from xelm_trainer.distributed import unwrap
from xelm_trainer.loop import TrainingRun
from xelm_trainer.run_state import Inputs, RunState

from xelm_cli.bundle.store import Bundle
from xelm_cli.plugin.contracts import TrainRequest, checkpoint_dir


@pytest.fixture(scope="module")
def dropout_seed(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> Path:
    """A tiny XGLM seed (dropout 0.1, the config's default) with the test tokenizer."""
    from transformers import XGLMConfig, XGLMForCausalLM

    from xelm_cli.bundle.seed import init_from_hf

    root = tmp_path_factory.mktemp("xglm")
    tokenizer = Bundle.open(seed_bundle).load_tokenizer()
    config = XGLMConfig(
        d_model=32, ffn_dim=64, num_layers=2, attention_heads=4, max_position_embeddings=64,
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    assert config.dropout == config.attention_dropout == 0.1
    torch.manual_seed(0)
    XGLMForCausalLM(config).save_pretrained(root / "hf")
    tokenizer.save_pretrained(root / "hf")
    init_from_hf(root / "hf", root / "seed", languages=list(TEST_LANGS))
    return root / "seed"


class Watched(TrainingRun):
    """Notes the model's mode after every step and counts the forwards of the first layer's
    attention (which runs again in the backward pass when the layer is checkpointed); stops
    after step ``stop``."""

    def __init__(self, stop: int | None = None) -> None:
        self.stop, self.modes, self.attention_forwards = stop, list[bool](), 0

    def loop(
        self, request: TrainRequest, inputs: Inputs, model: Any, *rest: Any, **named: Any
    ) -> RunState:
        self.model = unwrap(model)
        self.model.model.layers[0].self_attn.register_forward_hook(self.count_forward)
        return super().loop(request, inputs, model, *rest, **named)

    def count_forward(self, *_: Any) -> None:
        self.attention_forwards += 1

    def on_step_end(self, step: int) -> None:
        self.modes.append(self.model.training)
        if step == self.stop:
            raise Killed


def test_a_resumed_run_with_dropout_equals_the_uninterrupted_one(
    dropout_seed: Path,
    train_shards: Path,
    valid_shards: Path,
    tmp_path: Path,
) -> None:
    """With --valid, whose evaluation sets eval mode and then train mode: the resumed run
    must not train its first steps in eval mode (without dropout) until the next validation."""
    options = {"checkpoint_every": 1, "eval_blocks": 4}
    full = request(
        dropout_seed, train_shards, tmp_path / "full", tokens=128 * 4, options=options,
        valid=valid_shards,
    )  # fmt: skip
    uninterrupted = Watched()
    uninterrupted.train(full)
    killed = replace(full, output=tmp_path / "killed")
    with pytest.raises(Killed):
        Watched(stop=2).train(killed)
    resumed = Watched()
    resumed.train(replace(killed, resume=True))
    assert uninterrupted.modes == [True] * 4 and resumed.modes == [True] * 2
    assert same_weights(full.output, killed.output)


def test_gradient_checkpointing_recomputes_layers_without_valid(
    seed_bundle: Path,
    train_shards: Path,
    tmp_path: Path,
) -> None:
    forwards = {}
    for checkpointing in (False, True):
        run = Watched()
        out = tmp_path / f"checkpointing-{checkpointing}"
        options = {"gradient_checkpointing": checkpointing}
        run.train(request(seed_bundle, train_shards, out, tokens=128 * 3, options=options))
        assert run.modes == [True] * 3
        forwards[checkpointing] = run.attention_forwards
    # 3 steps of one micro-batch; checkpointed, the layer runs again in each backward pass
    assert forwards == {False: 3, True: 6}


def test_two_ranks_draw_their_own_dropout_and_resume_each_stream(
    dropout_seed: Path,
    train_shards: Path,
    tmp_path: Path,
) -> None:
    """2 gloo ranks (this file under torchrun, below): an uninterrupted run, and one stopped
    after its step-2 checkpoint, then resumed (a torchrun each: started a third time in one
    process, the gloo process group failed to connect, "Connection refused")."""
    for out, how in (("full", "run"), ("killed", "stop"), ("killed", "resume")):
        program = [__file__, str(dropout_seed), str(train_shards), str(tmp_path / out), how]
        done = launch(program, tmp_path, ranks=2)
        assert done.returncode == 0, done.stderr[-3000:]
    assert same_weights(tmp_path / "full", tmp_path / "killed")
    last = checkpoint_dir(tmp_path / "killed") / "step-000000004"
    rank_0, rank_1 = (
        load_file(str(last / f))["torch"] for f in ("rng.safetensors", "rng.rank-1.safetensors")
    )
    assert not torch.equal(rank_0, rank_1)  # each rank its own seed: two streams


if __name__ == "__main__":  # under torchrun: one run of the test above
    seed, data, out, how = sys.argv[1:]
    options: dict[str, Any] = {
        "block_size": 32,
        "batch_size": 2,
        "global_batch_tokens": 128,
        "lr": 3e-3,
    }
    options |= {"checkpoint_every": 2, "device": "cpu", "keep_checkpoints": True}
    run = TrainRequest(Path(seed), Path(data), Path(out), 128 * 4, options=options)
    with contextlib.suppress(Killed):
        (StopsAt(2) if how == "stop" else TrainingRun()).train(replace(run, resume=how == "resume"))
