"""The causal-lm trainer's fixes of a review: checkpoints of runs with weight decay read under
FSDP and back, no checkpoint with NaN weights, the optimiser's options checked, the way back
from a resume on other ranks, damaged checkpoints, the optimiser's kernel flags after a
resume, the chunked loss's temporaries, validation sums, --device under torchrun and the other
ranks' read of the bundle."""

import contextlib
import json
import math
import re
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import weights
from ddp_helpers import TOLERANCE, launch, max_difference, xelm_train
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode
from train_helpers import Killed, StopsAt, request
from xelm_trainer import CausalLMTrainer, lean_loss, model_setup
from xelm_trainer import loop as trainer_loop
from xelm_trainer.distributed import Ranks, load_optimizer
from xelm_trainer.lean_loss import linear_cross_entropy
from xelm_trainer.loop import TrainingRun, evaluate
from xelm_trainer.model_setup import make_optimizer
from xelm_trainer.options import TrainOptions

from xelm_cli.bundle.store import Bundle
from xelm_cli.cli import run
from xelm_cli.common.errors import FormatError, UsageError
from xelm_cli.data.shards import Shards
from xelm_cli.plugin.contracts import TrainRequest, checkpoint_dir
from xelm_cli.training.checkpoints import load_checkpoint
from xelm_cli.training.estimates import LEAN_CHUNK_ELEMENTS, ModelShape, training_memory

# --- 1. weight decay: one process -> 2 FSDP ranks -> one process ----------------------------

# 6 steps of 256 tokens (8 blocks of 32): 2 blocks a micro-batch, accumulated to the global
# batch on 1 or 2 ranks; weight decay makes two param groups (matrices, then the rest)
DECAYED: dict[str, Any] = {"block_size": 32, "batch_size": 2, "global_batch_tokens": 256}
DECAYED |= {"lr": 3e-3, "weight_decay": 0.1, "log_every": 1, "checkpoint_every": 2, "seed": 1}
DECAYED |= {"device": "cpu"}


def _decayed(seed_bundle: Path, data: Path, out: Path, **options: Any) -> TrainRequest:
    return TrainRequest(seed_bundle, data, out, 256 * 6, options=DECAYED | options)


def test_a_weight_decay_checkpoint_goes_from_one_process_to_fsdp_and_back(
    seed_bundle: Path, train_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Torch numbers an optimiser's parameters group by group; FSDP's gather and load now do
    too: the 2 FSDP ranks read one process's step-2 checkpoint (before: "The size of tensor a
    (32) must match the size of tensor b (86)"), write a step-4 checkpoint with the same
    tensors as one process's, which one process reads to finish like the uninterrupted run.
    The ranks leave no gloo threads behind (they aborted a process at exit now and then)."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    full, moved, single = (tmp_path / name for name in ("full", "moved", "single"))
    TrainingRun().train(_decayed(seed_bundle, train_shards, full))
    with pytest.raises(Killed):
        StopsAt(2).train(_decayed(seed_bundle, train_shards, moved))
    with pytest.raises(Killed):  # one process's own step-4 checkpoint, to compare files with
        StopsAt(4).train(_decayed(seed_bundle, train_shards, single))

    options = json.dumps(DECAYED | {"fsdp": True})
    program = [__file__, "stop-at-4", str(seed_bundle), str(train_shards), str(moved), options]
    done = launch(program, tmp_path, ranks=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("resuming from step 2") == 1
    if sys.platform == "linux":  # the group is gone before the interpreter finalises
        assert done.stdout.count("gloo worker threads after the run: 0") == 2, done.stdout
    step_4 = checkpoint_dir(moved) / "step-000000004"
    assert sorted(p.name for p in checkpoint_dir(moved).glob("step-*")) == [step_4.name]

    # the same files as without FSDP: names, shapes, param groups; values as close as DDP's
    ours, theirs = (
        load_file(str(checkpoint_dir(out) / "step-000000004" / "optimizer.safetensors"))
        for out in (moved, single)
    )
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name].shape == theirs[name].shape, name
        assert torch.allclose(ours[name], theirs[name], atol=TOLERANCE, rtol=1e-3), name
    groups = [
        json.loads((checkpoint_dir(out) / "step-000000004" / "state.json").read_text())[
            "optimizer"
        ]["param_groups"]
        for out in (moved, single)
    ]
    assert [g["params"] for g in groups[0]] == [g["params"] for g in groups[1]]
    assert [g["weight_decay"] for g in groups[0]] == [0.1, 0.0]

    TrainingRun().train(replace(_decayed(seed_bundle, train_shards, moved), resume=True))
    diff = max_difference(full, moved)
    print(f"max abs weight difference, 1 -> FSDP 2 -> 1 vs uninterrupted: {diff:.3g}")
    assert diff < TOLERANCE, diff
    assert max_difference(full, seed_bundle) > 1000 * TOLERANCE  # it trained


def gloo_worker_threads() -> list[str]:
    """This process's threads that gloo's process group runs collectives on (Linux)."""
    tasks = Path("/proc/self/task")
    names = (
        [(task / "comm").read_text().strip() for task in tasks.iterdir()] if tasks.is_dir() else []
    )
    return [name for name in names if name == "pt_gloo_runloop"]


# --- 2. no checkpoint with NaN weights -------------------------------------------------------


@pytest.mark.parametrize(
    ("nan_step", "refusal"),
    [
        (4, "the loss is nan at step 6"),  # steps 5 and 6 compute on NaN weights
        (6, "the weights are no longer finite at step 6"),  # step 6's loss is still finite
    ],
)
def test_a_diverged_run_keeps_its_last_good_checkpoint(
    seed_bundle: Path,
    train_shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    nan_step: int,
    refusal: str,
) -> None:
    """The learning rate of step ``nan_step`` is NaN, so its update makes every weight NaN;
    the loss is logged every 4 steps, a checkpoint written every 3. The step-6 checkpoint
    would replace step 3's with NaN weights (before: it did, and the run stopped at step 8):
    the run stops at step 6 in one line and step 3's stays."""
    real = trainer_loop.learning_rate

    def rate(step: int, total: int, options: TrainOptions) -> float:
        return math.nan if step == nan_step - 1 else real(step, total, options)

    monkeypatch.setattr(trainer_loop, "learning_rate", rate)
    options = {"lr": 1e-3, "log_every": 4, "checkpoint_every": 3}
    req = request(seed_bundle, train_shards, tmp_path / "out", tokens=128 * 8, options=options)
    with pytest.raises(UsageError, match=f"^training diverged: {refusal}; start over"):
        TrainingRun().train(req)
    kept = sorted(checkpoint_dir(req.output).glob("step-*"))
    assert [path.name for path in kept] == ["step-000000003"]
    saved = load_file(str(kept[0] / "model.safetensors"))
    assert all(bool(torch.isfinite(tensor).all()) for tensor in saved.values())
    assert not req.output.exists()


# --- 3. the optimiser's options --------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "line"),
    [
        ("beta1", 1.5, "--beta1 must be at least 0 and below 1, not 1.5"),
        ("beta1", -0.1, "--beta1 must be at least 0 and below 1, not -0.1"),
        ("beta2", 1.0, "--beta2 must be at least 0 and below 1, not 1.0"),
        ("beta2", math.nan, "--beta2 must be at least 0 and below 1, not nan"),
        ("eps", -1.0, "--eps must be positive and finite, not -1.0"),
        ("eps", 0.0, "--eps must be positive and finite, not 0.0"),
        ("eps", math.inf, "--eps must be positive and finite, not inf"),
        ("lr", math.nan, "--lr must be positive and finite, not nan"),
        ("lr", math.inf, "--lr must be positive and finite, not inf"),
        ("lr", 0.0, "--lr must be positive and finite, not 0.0"),
        ("weight_decay", math.nan, "--weight-decay must be a finite number of 0 or more, not nan"),
        ("weight_decay", -0.1, "--weight-decay must be a finite number of 0 or more, not -0.1"),
        ("clip", math.nan, "--clip must be a finite number of 0 or more, not nan"),
        ("clip", math.inf, "--clip must be a finite number of 0 or more, not inf"),
        ("clip", -1.0, "--clip must be a finite number of 0 or more, not -1.0"),
    ],
)
def test_bad_optimiser_options_are_refused_in_one_line(
    option: str, value: float, line: str
) -> None:
    """Before: accepted, then AdamW's ValueError after the model loaded (exit 70), or a run
    that trained until it diverged (--lr inf, --clip nan); `xelm plan --train-args` checks
    through ``check_options`` what `xelm train` does."""
    with pytest.raises(UsageError, match=f"^{re.escape(line)}$"):
        TrainOptions.from_dict({option: value})
    with pytest.raises(UsageError, match=f"^{re.escape(line)}$"):
        CausalLMTrainer.check_options({option: value})


def test_the_optimisers_options_are_refused_by_xelm_train_before_the_model_loads(
    seed_bundle: Path,
    train_shards: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(trainer_loop, "load_model", None)  # calling it would be a TypeError
    base = ["train", str(seed_bundle), "--data", str(train_shards), "--tokens", "256"]
    base += ["--block-size", "32", "--batch-size", "4", "-o", str(tmp_path / "out")]
    for flags in (["--beta1", "1.5"], ["--eps", "-1"], ["--lr", "nan"], ["--clip", "nan"]):
        assert run([*base, *flags]) == 2
        stderr = capsys.readouterr().err
        assert stderr.count("\n") == 1 and stderr.startswith(f"xelm: error: {flags[0]} must")
    assert not (tmp_path / "out").exists() and not checkpoint_dir(tmp_path / "out").exists()


def test_clip_zero_still_means_no_clipping(
    seed_bundle: Path, train_shards: Path, tmp_path: Path
) -> None:
    """--clip 0 keeps its meaning: no clipping, the norm still logged (spec section 3)."""
    assert TrainOptions.from_dict({"clip": 0.0}).clip == 0.0
    req = request(seed_bundle, train_shards, tmp_path / "out", tokens=256, options={"clip": 0})
    trained = TrainingRun().train(req)
    assert trained.manifest.training is not None and trained.manifest.training["steps"] == 2


# --- 4. resuming on another number of ranks ---------------------------------------------------


def test_a_resume_on_other_ranks_names_the_options_that_make_it_work(
    seed_bundle: Path, train_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One process at 4 x 32 (128 tokens a step) is killed after its step-1 checkpoint; 2
    ranks at --batch-size 4 make 256-token steps. Rank 0 alone says so, with both values
    and the flags that give the checkpoint's step on 2 ranks (--global-batch alone was
    refused: 128 is no multiple of 4 x 32 x 2); with them the run resumes and finishes."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = tmp_path / "out"
    options = {"lr": 1e-2, "log_every": 1, "checkpoint_every": 1, "seed": 1, "device": "cpu"}
    with pytest.raises(Killed):
        StopsAt(1).train(request(seed_bundle, train_shards, out, tokens=512, options=options))
    args = [str(seed_bundle), "--data", str(train_shards), "--tokens", "512", "-o", str(out)]
    args += ["--block-size", "32", "--lr", "1e-2", "--log-every", "1", "--checkpoint-every", "1"]
    args += ["--seed", "1", "--device", "cpu", "--resume"]

    done = xelm_train([*args, "--batch-size", "4"], tmp_path, ranks=2)
    errors = [line for line in done.stderr.splitlines() if "xelm: error:" in line]
    assert done.returncode != 0 and len(errors) == 1, done.stderr[-3000:]
    assert errors[0].endswith(
        "the run differs in global_batch_tokens (checkpoint 128, now 256); pass --global-batch "
        "128 --batch-size 2 (the checkpoint's tokens per step), or --force to start over"
    ), errors

    done = xelm_train([*args, "--batch-size", "4", "--global-batch", "128"], tmp_path, ranks=2)
    errors = [line for line in done.stderr.splitlines() if "xelm: error:" in line]
    assert done.returncode != 0 and len(errors) == 1, done.stderr[-3000:]
    assert errors[0].endswith(
        "--global-batch 128 must be a multiple of one micro-batch (--batch-size x --block-size "
        "x 2 ranks = 256 tokens); --batch-size 2 makes one"
    ), errors

    done = xelm_train([*args, "--batch-size", "2", "--global-batch", "128"], tmp_path, ranks=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("resuming from step 1") == 1
    record = Bundle.open(out).manifest.training
    assert record is not None and record["steps"] == 4 and record["hardware"]["world_size"] == 2


def test_a_refused_resume_shows_the_checkpoints_value_and_this_runs(
    seed_bundle: Path, train_shards: Path, tmp_path: Path
) -> None:
    req = request(seed_bundle, train_shards, tmp_path / "out", tokens=256 * 3,
                  options={"checkpoint_every": 1, "global_batch_tokens": 256})  # fmt: skip
    with pytest.raises(Killed):
        StopsAt(1).train(req)
    path = checkpoint_dir(req.output) / "step-000000001"
    other = replace(req, resume=True, options={**req.options, "lr": 6e-3, "seed": 2})
    line = (
        f"cannot resume {path}: the run differs in lr (checkpoint 0.003, now 0.006), seed "
        "(checkpoint 0, now 2); use the same inputs and options, or --force to start over"
    )
    with pytest.raises(UsageError, match=f"^{re.escape(line)}$"):
        TrainingRun().train(other)
    # 3 blocks a step cannot be split over 2 ranks at all: resume on other ranks
    three = {**req.options, "global_batch_tokens": None, "batch_size": 4}
    from xelm_trainer.resuming import same_run

    way = same_run(
        ["global_batch_tokens"],
        {"global_batch_tokens": 96},
        TrainOptions.from_dict({**three, "block_size": 32, "world_size": 2}),
    )
    assert way == (
        "its --global-batch 96 (3 blocks a step) cannot be split over 2 ranks: resume on a "
        "number of ranks that divides 3"
    )


# --- 5. a damaged checkpoint -------------------------------------------------------------------


def _damage_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[10:14] = b"\xff\xfe\xff\xfe"  # inside the JSON header: no longer UTF-8
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_refused_in_one_line_with_the_way_out(
    seed_bundle: Path,
    train_shards: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: "internal error: SafetensorError: Error while deserializing header". Now one
    line naming the checkpoint: with an older checkpoint left, delete this one to resume from
    it (which works); with none, start over with --force and without --resume (which
    works; with --resume a run would read the damaged checkpoint again)."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = tmp_path / "out"
    options = {"checkpoint_every": 1, "log_every": 1}
    req = request(seed_bundle, train_shards, out, tokens=128 * 4, options=options)
    with pytest.raises(Killed):
        StopsAt(1).train(req)
    older = tmp_path / "step-1"
    shutil.copytree(checkpoint_dir(out) / "step-000000001", older)
    with pytest.raises(Killed):
        StopsAt(2).train(replace(req, resume=True))
    shutil.copytree(older, checkpoint_dir(out) / "step-000000001")  # as a kill leaves it
    newest = checkpoint_dir(out) / "step-000000002"
    _damage_header(newest / "model.safetensors")
    capsys.readouterr()

    args = ["train", str(seed_bundle), "--data", str(train_shards), "--tokens", "512"]
    args += ["-o", str(out), "--block-size", "32", "--batch-size", "4", "--lr", "3e-3"]
    args += ["--log-every", "1", "--checkpoint-every", "1"]
    assert run([*args, "--resume"]) == 3
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith(
        f"xelm: error: checkpoint {newest} cannot be read (Error while deserializing header"
    ), stderr
    assert stderr.rstrip().endswith(
        "delete it to resume from step 1 with --resume, or run without --resume and with "
        "--force to start over"
    ), stderr
    shutil.rmtree(newest)
    assert run([*args, "--resume"]) == 0
    assert "resuming from step 1" in capsys.readouterr().err

    # the only checkpoint, its optimiser state cut short
    again = tmp_path / "again"
    with pytest.raises(Killed):
        StopsAt(2).train(replace(req, output=again))
    only = checkpoint_dir(again) / "step-000000002"
    optimizer = only / "optimizer.safetensors"
    optimizer.write_bytes(optimizer.read_bytes()[:-100])
    args[args.index(str(out))] = str(again)
    capsys.readouterr()
    assert run([*args, "--resume"]) == 3
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith(f"xelm: error: checkpoint {only} "), stderr
    assert stderr.rstrip().endswith(
        "no older checkpoint is kept: run without --resume and with --force to start over "
        "(or delete it: --resume then starts the run from the beginning)"
    ), stderr
    assert run([*args, "--force"]) == 0
    assert Bundle.open(again).manifest.training is not None


# --- 6. the optimiser's kernel flags after a resume ---------------------------------------------


def test_a_resumed_optimiser_keeps_the_kernel_flags_it_was_built_with(
    seed_bundle: Path, train_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPU run's checkpoint (fused None) resumed by a run whose AdamW is fused (as on CUDA;
    torch's fused AdamW runs on the CPU too): before, load_state_dict put the checkpoint's
    fused=None over it while the record said adamw-fused."""
    req = request(seed_bundle, train_shards, tmp_path / "out", tokens=128 * 4,
                  options={"checkpoint_every": 2})  # fmt: skip
    with pytest.raises(Killed):
        StopsAt(2).train(req)
    saved = json.loads((checkpoint_dir(req.output) / "step-000000002" / "state.json").read_text())
    assert {g["fused"] for g in saved["optimizer"]["param_groups"]} == {None}

    built: list[Any] = []

    class Watched(TrainingRun):
        def setup(self, *args: Any) -> Any:
            model, optimizer, state = super().setup(*args)
            built.append(optimizer)
            return model, optimizer, state

    monkeypatch.setattr(model_setup, "fused_adamw", lambda device: True)
    resumed = Watched().train(replace(req, resume=True))
    assert [g["fused"] for g in built[0].param_groups] == [True]
    assert resumed.manifest.training is not None
    assert resumed.manifest.training["implementation"]["optimizer"] == "adamw-fused"

    # load_checkpoint from Python, and the trainer's load_optimizer, keep foreach=True too
    model = Bundle.open(seed_bundle).load_model(verify=False, dtype=torch.float32)
    with pytest.raises(Killed):
        StopsAt(2).train(replace(req, output=tmp_path / "again"))
    path = checkpoint_dir(tmp_path / "again") / "step-000000002"
    optimizer = torch.optim.AdamW(model.parameters(), foreach=True)
    load_checkpoint(path, model=model, optimizer=optimizer)
    assert optimizer.param_groups[0]["foreach"] is True
    assert optimizer.param_groups[0]["lr"] == saved["optimizer"]["param_groups"][0]["lr"]
    options = TrainOptions.from_dict({"weight_decay": 0.1})
    decayed = make_optimizer(model, options)
    for group in decayed.param_groups:
        group["foreach"] = True
    state = replace_groups(decayed.state_dict(), foreach=None, capturable=False)
    load_optimizer(model, decayed, state, None)
    assert [g["foreach"] for g in decayed.param_groups] == [True, True]


def replace_groups(state: dict[str, Any], **flags: Any) -> dict[str, Any]:
    return {**state, "param_groups": [{**g, **flags} for g in state["param_groups"]]}


# --- 7. the chunked loss's temporaries ---------------------------------------------------------


class Allocations(TorchDispatchMode):
    """Every op's name and the number of elements of each tensor it returns in new memory
    (not a view or an in-place result of one of its inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        inputs = {
            t.untyped_storage().data_ptr()
            for t in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        out = func(*args, **kwargs)
        for item in torch.utils._pytree.tree_leaves(out):
            if isinstance(item, torch.Tensor) and item.untyped_storage().data_ptr() not in inputs:
                self.seen.append((str(func), item.numel()))
        return out


@pytest.mark.parametrize("autocast", [False, True])
def test_the_chunked_loss_makes_no_second_output_layer_sized_tensor(
    autocast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The output layer's gradient is accumulated in place (fp32: addmm_; bf16: a vocabulary
    slice's product at a time) and scaled in place by the backward: no product or scaled copy
    of V x h elements (before: a V x h product per chunk, its fp32 copy, and one more in the
    backward). The loss and gradients stay those of the plain computation."""
    monkeypatch.setattr(lean_loss, "CHUNK_ELEMENTS", 512)  # slices of 512 // 16 = 32 rows
    torch.manual_seed(0)
    vocab, width, tokens = 200, 16, 24
    weight = torch.nn.Parameter(torch.randn(vocab, width) * 0.3)
    hidden = torch.randn(tokens, width, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,))
    targets[3] = -100
    seen = Allocations()
    with seen, torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        loss = linear_cross_entropy(hidden, weight, targets, rows=5)
        (loss * 0.5).backward()
    big = [(op, n) for op, n in seen.seen if n >= vocab * width]
    # the fp32 sum of the output layer's gradient; under autocast the bf16 copy of its weight
    allowed = ["aten._to_copy.default"] * autocast + ["aten.zeros_like.default"]
    assert sorted(op for op, _ in big) == allowed, big

    reference = torch.nn.Parameter(weight.detach().clone())
    plain_hidden = hidden.detach().clone().requires_grad_()
    dtype = torch.bfloat16 if autocast else torch.float32
    logits = (plain_hidden.to(dtype) @ reference.to(dtype).T).float()
    plain = torch.nn.functional.cross_entropy(logits, targets)
    (plain * 0.5).backward()
    tolerance = 2e-2 if autocast else 1e-5
    torch.testing.assert_close(loss.float(), plain, atol=tolerance, rtol=tolerance)
    assert weight.grad is not None and reference.grad is not None
    torch.testing.assert_close(weight.grad, reference.grad, atol=tolerance, rtol=tolerance)
    assert hidden.grad is not None and plain_hidden.grad is not None
    torch.testing.assert_close(hidden.grad, plain_hidden.grad, atol=tolerance, rtol=tolerance)


def test_the_bf16_gradient_in_vocabulary_slices_equals_it_in_one_piece(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(1)
    weight = torch.nn.Parameter(torch.randn(97, 8))
    hidden = torch.randn(20, 8)
    targets = torch.randint(0, 97, (20,))
    grads = []
    for chunk in (1 << 26, 8 * 8):  # one slice; slices of 8 vocabulary rows
        monkeypatch.setattr(lean_loss, "CHUNK_ELEMENTS", chunk)
        weight.grad = None
        with torch.autocast("cpu", torch.bfloat16):
            linear_cross_entropy(hidden, weight, targets, rows=6).backward()
        assert weight.grad is not None
        grads.append(weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-6)


def test_the_chunked_loss_estimate_counts_its_temporaries() -> None:
    """XGLM-1.7B at 8 x 2048 on CUDA: a chunk of 262 x 256,008 logits in fp32 with
    logsumexp's temporary (8 bytes a logit; before: 6), the hidden states' gradient and the
    fp32 gradient of the output layer; the bf16 slices of its product (32,768 x 2048 x 2)
    come when logsumexp's temporary is gone, so they add nothing to that peak."""
    shape = ModelShape(1_732_907_008, 256_008 * 2048, 24, 2048, 8192, 256_008, 16, 50_358_272)
    chunk = (LEAN_CHUNK_ELEMENTS // 256_008) * 256_008
    slices = chunk * 6 + (LEAN_CHUNK_ELEMENTS // 2048) * 2048 * 2
    expected = max(chunk * 8, slices) + 8 * 2048 * 2048 * 2 + 256_008 * 2048 * 4
    assert training_memory(shape, 8, 2048, cuda=True).loss == expected
    assert training_memory(shape, 8, 2048, cuda=False).loss == (
        chunk * 8 + 8 * 2048 * 2048 * 4 + 256_008 * 2048 * 4
    )


# --- 8. validation sums --------------------------------------------------------------------------


def test_validation_sums_are_the_mean_of_every_blocks_loss(seed_bundle: Path) -> None:
    """7 blocks in batches of 3 (3, 3, 1): the batch means in float32 on the device, weighted
    and summed in float64 on the host, are the mean over the blocks, computed one by one."""
    model = Bundle.open(seed_bundle).load_model(verify=False, dtype=torch.float32)
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, model.config.vocab_size, (7, 16))
    options = TrainOptions.from_dict({"batch_size": 3, "block_size": 16})
    seen = Allocations()
    with seen:
        value = evaluate(model, blocks, options, torch.device("cpu"), contextlib.nullcontext())
    with torch.no_grad():
        one_by_one = [
            float(model(input_ids=torch.from_numpy(b[None]), labels=torch.from_numpy(b[None])).loss)
            for b in blocks
        ]
    assert abs(value - math.fsum(one_by_one) / 7) < 1e-6
    assert model.training  # evaluate returns the model to train mode
    assert isinstance(value, float)


# --- 9. --device cuda:N under torchrun ---------------------------------------------------------


@pytest.mark.parametrize("local_rank", [0, 1])
def test_a_numbered_cuda_device_is_refused_under_torchrun(
    seed_bundle: Path,
    train_shards: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    local_rank: int,
) -> None:
    """Every rank would train on that one GPU: refused before any device or process group is
    touched (this machine need not have CUDA), in one line by local rank 0; the others exit
    with the same code and say nothing."""
    for name, value in (("WORLD_SIZE", "2"), ("RANK", str(local_rank))):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    out = tmp_path / "out"
    args = ["train", str(seed_bundle), "--data", str(train_shards), "--tokens", "512"]
    code = run([*args, "-o", str(out), "--block-size", "32", "--batch-size", "4",
                "--device", "cuda:1"])  # fmt: skip
    stderr = capsys.readouterr().err
    assert code == 2
    if local_rank:
        assert stderr == ""
    else:
        assert stderr == (
            "xelm: error: --device cuda:1 under torchrun would put every rank on one GPU: pass "
            "--device cuda (each rank takes the GPU of its LOCAL_RANK; choose the GPUs with "
            "CUDA_VISIBLE_DEVICES)\n"
        )
    assert not out.exists() and not checkpoint_dir(out).exists()


# --- 10. the other ranks read the bundle rank 0 wrote without hashing it ------------------------


def test_the_other_ranks_do_not_hash_the_bundle_rank_0_wrote(
    seed_bundle: Path, train_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 1 of 2 (its collectives no-ops here) ends by opening the bundle rank 0 wrote:
    it checks its files' presence and sizes, and does not hash them again."""
    req = request(seed_bundle, train_shards, tmp_path / "out", tokens=256)
    written = TrainingRun().train(req)
    checked: list[tuple[Path, bool]] = []
    real = Bundle.check_files

    def check_files(self: Bundle, **kwargs: Any) -> None:
        checked.append((self.path, kwargs.get("hash_files", True)))
        real(self, **kwargs)

    monkeypatch.setattr(Bundle, "check_files", check_files)
    rank_1 = Ranks(rank=1, world=2, local=1, launched=False)
    monkeypatch.setattr(Ranks, "from_environment", classmethod(lambda cls: rank_1))
    weights_before = weights(written.path)
    result = TrainingRun().train(replace(req, overwrite=True))
    assert result.path == req.output
    assert (req.output, False) in checked and (req.output, True) not in checked
    assert all(torch.equal(weights_before[k], v) for k, v in weights(req.output).items())


if __name__ == "__main__":  # under torchrun: a run that resumes, then stops after step 4
    how, bundle, data, out, given = sys.argv[1:]
    assert how == "stop-at-4"
    with contextlib.suppress(Killed):
        StopsAt(4).train(
            TrainRequest(
                Path(bundle), Path(data), Path(out), 256 * 6, options=json.loads(given),
                resume=True,
            )
        )  # fmt: skip
    print(f"gloo worker threads after the run: {len(gloo_worker_threads())}")


def test_a_checkpoint_state_that_is_no_json_is_refused_with_the_way_out(tmp_path: Path) -> None:
    from xelm_cli.training.checkpoints import read_checkpoint_state

    for step in (3, 6):
        (tmp_path / f"step-00000000{step}").mkdir()
        (tmp_path / f"step-00000000{step}" / "state.json").write_text("{torn")
    with pytest.raises(FormatError, match=r"^checkpoint .*step-000000006 cannot be read \(") as e:
        read_checkpoint_state(tmp_path / "step-000000006")
    assert str(e.value).endswith("delete it to resume from step 3 with --resume, or run without "
                                 "--resume and with --force to start over")  # fmt: skip


# --- 11. a micro-batch's output is dropped before the next one runs ------------------------------


def test_accumulation_keeps_no_micro_batchs_logits_through_the_next_forward(
    seed_bundle: Path,
) -> None:
    """3 micro-batches with the plain loss (MoE models, or the chunked loss off): each
    forward's output, with its B x T x V logits, is dropped after its loss is read (before:
    the previous micro-batch's was alive through the next forward). The summed loss stays the
    plain losses' sum."""
    import weakref

    model = Bundle.open(seed_bundle).load_model(verify=False, dtype=torch.float32).train()
    options = TrainOptions.from_dict({"block_size": 16, "batch_size": 2, "global_batch_tokens": 96})
    assert options.accumulation == 3
    outputs: list[weakref.ref[torch.Tensor]] = []
    alive: list[int] = []  # earlier micro-batches' logits alive as each forward's lm_head runs
    model.lm_head.register_forward_pre_hook(
        lambda *_: alive.append(sum(ref() is not None for ref in outputs))
    )
    model.lm_head.register_forward_hook(lambda _, __, out: outputs.append(weakref.ref(out)))
    rng = np.random.default_rng(0)
    blocks = [rng.integers(0, model.config.vocab_size, (2, 16)) for _ in range(3)]
    cpu = torch.device("cpu")
    sums = trainer_loop.accumulate(
        model, model, iter(blocks), options, cpu, contextlib.nullcontext()
    )
    assert alive == [0, 0, 0]
    assert sums.aux is None and all(ref() is None for ref in outputs)
    with torch.no_grad():
        plain = [float(model(input_ids=torch.from_numpy(b), labels=torch.from_numpy(b)).loss)
                 for b in blocks]  # fmt: skip
    assert float(sums.loss) == pytest.approx(math.fsum(plain), rel=1e-6)


def test_shards_whose_ids_reach_past_the_embedding_rows_are_refused_before_training(
    seed_bundle: Path, train_shards: Path
) -> None:
    """A seed whose tokenizer is larger than its model: each id past the rows would end the
    run in an IndexError (exit 70) when its block came up."""
    bundle = Bundle.open(seed_bundle)
    rows = bundle.load_config().vocab_size
    shards = Shards.open(train_shards)
    assert shards.manifest["tokenizer"]["vocab_size"] <= rows
    trainer_loop.require_vocabulary_fits(shards, bundle)  # the seed's own shards fit
    shards.manifest["tokenizer"]["vocab_size"] = rows + 1
    with pytest.raises(UsageError) as caught:
        trainer_loop.require_vocabulary_fits(shards, bundle)
    assert str(caught.value) == (
        f"{train_shards} holds token ids up to {rows:,}, but the model of {seed_bundle} has "
        f"{rows:,} embedding rows: make the seed from a model and tokenizer that belong "
        "together (or resize the model's embeddings first)"
    )
