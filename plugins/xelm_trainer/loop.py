"""The ``causal-lm`` trainer: a plain training loop, top to bottom (in the style of nanoGPT).

1. check every input and refuse in one line before loading anything heavy;
2. load the model, build AdamW and the block stream, maybe resume from the newest checkpoint;
3. loop: accumulate gradients over micro-batches, clip, step, log, validate, checkpoint;
4. write the trained model as a new bundle (lineage ``train``) atomically.

Under ``torchrun`` (``distributed``) every rank runs this loop on its own blocks of each global
batch inside DDP (or FSDP); rank 0 alone writes metrics, checkpoints and the bundle.

Its pieces live apart: the inputs and state a run carries in run_state.py, the model and
optimiser in model_setup.py, checkpoints and resuming in resuming.py, timing and the metrics
log in metrics.py.
"""

import contextlib
import math
import os
import shutil
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xelm_cli.api import (
    BlockStream,
    Bundle,
    Shards,
    TrainRequest,
    UsageError,
    XelmError,
    list_checkpoints,
    require_block_fits,
    write_bundle,
)

from .distributed import (
    OptimizerState,
    Ranks,
    Sharding,
    full_state_dict,
    load_optimizer,
    no_sync,
    pick_device,
    unwrap,
    wrap,
)
from .feedback import (
    TrainProgress,
    out_of_memory,
    out_of_memory_line,
    passes_note,
    positions_note,
    require_attention_package,
)
from .metrics import Interval, MetricsLog, WallClock, wait_for
from .model_setup import implementation, load_model, make_optimizer
from .moe import check_moe_options, loss_parts, training_kwargs, validation_kwargs
from .options import TrainOptions
from .resuming import checkpoint, latest_checkpoint, resume, start_fresh, unsharded_copy
from .rng import seed_rank
from .run_state import Inputs, RunState

TRAINER_NAME = "causal-lm"
METRICS_FILE = "metrics.jsonl"


@contextlib.contextmanager
def said_once(ranks: Ranks) -> Iterator[None]:
    """A refusal every rank makes alike before they join the group (the same inputs and
    options): said by local rank 0, one line a machine; the others exit with its code."""
    try:
        yield
    except XelmError as exc:
        if ranks.launched and ranks.local != 0:
            raise SystemExit(exc.exit_code) from None
        raise


class TrainingRun:
    """One run of the ``causal-lm`` trainer; ``on_step_end`` is a hook for tests."""

    def train(self, request: TrainRequest) -> Bundle:
        started = time.perf_counter()
        ranks = Ranks.from_environment()
        with said_once(ranks):  # every rank refuses alike: one line (local rank 0's)
            inputs = check_inputs(request, ranks)
            device = pick_device(inputs.options.device, ranks)
        trained = inputs.steps * inputs.options.batch_tokens
        if ranks.main and trained != request.tokens:
            steps = f"{inputs.steps:,} whole step{'s' if inputs.steps > 1 else ''}"
            print(
                f"xelm: --tokens {request.tokens:,} is {steps} of {inputs.options.batch_tokens:,}"
                f" tokens: training {trained:,} (a step is --batch-size x --block-size x "
                "accumulation x ranks)",
                file=sys.stderr,
            )
        warmup = warmup_note(inputs.options.warmup_steps, inputs.steps, inputs.options.schedule)
        if ranks.main and warmup:
            print(warmup, file=sys.stderr)
        passes = passes_note(request.tokens, inputs.shards, inputs.languages, inputs.framing)
        if ranks.main and passes:
            print(passes, file=sys.stderr)
        if ranks.main and (note := positions_note(inputs.options.block_size, inputs.bundle.path)):
            print(note, file=sys.stderr)
        ranks.start(device)  # every rank has passed the checks: nothing is written before
        try:
            if request.resume:
                # rank 0 decides (a lagging shared file system must not split the ranks)
                inputs = replace(
                    inputs, resume_from=ranks.from_main(latest_checkpoint(request, ranks))
                )
            if request.resume and inputs.resume_from is None:
                # killed before its first checkpoint (or never started): a re-queued job with
                # the same command line simply starts the run
                if ranks.main:
                    print(
                        f"xelm: --resume: no checkpoint in {request.checkpoint_dir} yet; "
                        "starting the run from the beginning",
                        file=sys.stderr,
                    )
                request = replace(request, resume=False)
            return self.run(request, inputs, ranks, device, started)
        except BaseException as failed:
            if ranks.launched:  # the run's frames hold its model, which holds the group
                traceback.clear_frames(failed.__traceback__)
            raise
        finally:
            ranks.stop()

    def run(
        self,
        request: TrainRequest,
        inputs: Inputs,
        ranks: Ranks,
        device: torch.device,
        started: float,
    ) -> Bundle:
        """Train from the trainer's start at ``started`` (``time.perf_counter()``)."""
        options = inputs.options
        sharding = self.sharding(options, device)
        model, optimizer, state = self.setup(request, inputs, sharding, ranks, device)
        state.setup_seconds = time.perf_counter() - started
        try:
            state = self.loop(request, inputs, model, optimizer, state, device, ranks)
        except RuntimeError as exc:  # torch.OutOfMemoryError is one
            if not out_of_memory(exc):
                raise
            raise UsageError(out_of_memory_line(request, inputs.options, state.step)) from None
        full = full_state_dict(model, options.fsdp)  # FSDP: a collective, before rank 0 writes
        result = None
        if ranks.main:
            result = write_trained(request, inputs, unwrap(model), state, device, full, sharding)
        ranks.barrier()  # the other ranks wait for the bundle
        # rank 0 wrote (and hashed) it: the others check its files' presence and sizes only
        return Bundle.open(request.output, verify=False) if result is None else result

    def sharding(self, options: TrainOptions, device: torch.device) -> Sharding | None:
        """How FSDP runs (``Sharding.on`` the device); None without ``--fsdp``. Tests override
        it (bf16 gathers on the CPU, every rank reading the weights)."""
        return Sharding.on(device) if options.fsdp else None

    def setup(
        self,
        request: TrainRequest,
        inputs: Inputs,
        sharding: Sharding | None,
        ranks: Ranks,
        device: torch.device,
    ) -> tuple[Any, torch.optim.Optimizer, RunState]:
        """The model (wrapped or sharded), its optimiser and the run's state: a fresh one, or
        the newest checkpoint's, which every rank reads (rank 0 wrote it). Under FSDP rank 0
        alone reads the weights and optimiser state, see ``Sharding.from_main``."""
        options = inputs.options
        model = load_model(inputs, device, ranks, sharding)
        # after loading: neither reading weights nor building on the meta device moves a stream
        seed_rank(options.seed, ranks)
        if options.gradient_checkpointing:  # renamed in transformers 5
            enable = getattr(model, "activation_checkpointing_enable", None)
            (enable or model.gradient_checkpointing_enable)()
        if not request.resume and ranks.main:
            start_fresh(request)
        ranks.barrier()
        state, saved = RunState(), OptimizerState()
        reads = sharding is None or sharding.reads_weights(ranks)
        if request.resume:  # before sharding
            state = resume(request, inputs, model if reads else None, saved, ranks, device)
        model = wrap(model, ranks, device, sharding)
        optimizer = make_optimizer(model, options, device)
        if request.resume:
            load_optimizer(model, optimizer, saved.value, sharding)
        return model, optimizer, state

    def on_step_end(self, step: int) -> None:
        """Called after every optimiser step (and its checkpoint); tests stop runs here."""

    def loop(
        self,
        request: TrainRequest,
        inputs: Inputs,
        model: Any,
        optimizer: torch.optim.Optimizer,
        state: RunState,
        device: torch.device,
        ranks: Ranks | None = None,
    ) -> RunState:
        ranks = ranks or Ranks()
        wall = WallClock(state.wall_seconds)
        options = inputs.options
        stream = BlockStream(
            inputs.shards, inputs.languages, options.block_size, seed=options.seed,
            bos=inputs.framing.start, eos=inputs.framing.end,
        )  # fmt: skip
        valid_blocks = validation_blocks(inputs, options)
        if options.compile and ranks.main:
            print(
                "xelm: compiling the model (torch.compile): the first steps take longer",
                file=sys.stderr,
            )
        forward = torch.compile(model) if options.compile else model
        # DDP: validate the bare module (no collectives in its forward); FSDP: all ranks shard it
        evaluated = forward if options.fsdp or not ranks.launched else unwrap(model)
        autocast = torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda")
        metrics = MetricsLog(request.checkpoint_dir / METRICS_FILE, state.step, ranks.main)
        if valid_blocks is not None and state.step == 0:
            state.valid_curve.append(
                [0, evaluate(evaluated, valid_blocks, options, device, autocast, ranks)]
            )
            metrics.write({"step": 0, "valid_loss": state.valid_curve[-1][1]})
        round_blocks = options.batch_size * ranks.world  # blocks of one micro-batch on all ranks
        # The host waits for the device only on logged steps (and validations, checkpoints):
        # the loss and gradient norm stay tensors on the device until a metrics line needs them.
        logged = Interval(state.step, options.batch_tokens)
        with TrainProgress(inputs.steps, state.step, ranks.main) as progress:
            while state.step < inputs.steps:
                started = time.perf_counter()
                lr = learning_rate(state.step, inputs.steps, options)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                micro_batches = (
                    # block i of the global batch goes to rank i % world
                    stream.strided(state.cursor + m * round_blocks + ranks.rank,
                                   options.batch_size, ranks.world)
                    for m in range(options.accumulation)
                )  # fmt: skip
                sums = accumulate(model, forward, micro_batches, options, device, autocast)
                state.cursor += round_blocks * options.accumulation
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), options.clip or math.inf)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                loss = None  # the step's loss (mean over the ranks), once the host has it
                if state.step % options.log_every == 0 or state.step == inputs.steps:
                    record = step_record(state, sums, norm, lr, logged, options, ranks, device)
                    loss = record["loss"]
                    if not math.isfinite(loss):  # every rank: the mean is all-reduced
                        raise UsageError(diverged_line(loss, state.step))
                    state.loss_curve.append([state.step, loss])
                    metrics.write(record)
                    progress.update(state.step, record["loss"], record["tokens_per_s"])
                else:
                    progress.update(state.step)
                validates = valid_blocks is not None and due(
                    state.step, options.eval_every, inputs.steps
                )
                last = state.step == inputs.steps
                # after the last step the bundle is the run's result: a checkpoint of it (the
                # optimiser's state, twice the weights) only to keep (--keep-checkpoints)
                saves = (
                    options.keep_checkpoints
                    if last
                    else due(state.step, options.checkpoint_every, inputs.steps)
                )
                if validates or saves or last:  # the device's queued work is the steps' time
                    wait_for(device)
                state.seconds += time.perf_counter() - started  # after a logged step's wait
                aside = time.perf_counter()  # validation and checkpoint: not training speed
                if validates:
                    assert valid_blocks is not None
                    valid = evaluate(evaluated, valid_blocks, options, device, autocast, ranks)
                    state.valid_curve.append([state.step, valid])
                    metrics.write({"step": state.step, "valid_loss": valid})
                state.wall_seconds = wall.seconds()
                if saves or last:
                    # a checkpoint replaces the last good one, and the bundle is the result:
                    # never with NaN weights
                    if loss is None:
                        loss = ranks.mean(float(sums.loss) / options.accumulation, device)
                    require_finite(model, loss, state.step, ranks, device)
                if saves:
                    checkpoint(request, inputs, model, optimizer, state, ranks, device)
                logged.leave_out(time.perf_counter() - aside)
                self.on_step_end(state.step)
        state.wall_seconds = wall.seconds()  # with the last checkpoint
        return state


# --- 1. checks ------------------------------------------------------------------------------------


def check_inputs(request: TrainRequest, ranks: Ranks | None = None) -> Inputs:
    """Every refusal that needs no model: one line each, nothing written."""
    ranks = ranks or Ranks()
    options = TrainOptions.from_dict(dict(request.options) | {"world_size": ranks.world})
    if options.fsdp and not ranks.launched:
        raise UsageError(
            "--fsdp needs torchrun: torchrun --nproc-per-node N -m xelm_cli train ... --fsdp"
        )
    require_attention_package(options.attention)
    bundle = Bundle.open(request.bundle)
    require_block_fits(options.block_size, bundle.path)
    if options.router_only or options.aux_loss is not None:  # the config decides most
        check_moe_options(bundle.load_config(), options)
    shards = Shards.open(request.data)
    shards.require_tokenizer(bundle.manifest.fingerprints["tokenizer"], f"bundle {bundle.path}")
    require_vocabulary_fits(shards, bundle)
    languages = list(request.languages) or bundle.languages
    if not languages:
        raise UsageError(f"bundle {bundle.path} lists no languages; pass --langs")
    require_tokens(shards, languages)
    valid = None
    if request.valid is not None:
        valid = Shards.open(request.valid)
        valid.require_tokenizer(bundle.manifest.fingerprints["tokenizer"], f"bundle {bundle.path}")
        require_tokens(valid, languages)
    steps = request.tokens // options.batch_tokens
    if steps < 1:
        raise UsageError(
            f"--tokens {request.tokens:,} is smaller than one global batch of "
            f"{options.batch_tokens:,} tokens (--batch-size x --block-size x accumulation x "
            f"ranks): raise --tokens to {options.batch_tokens:,} or more (K counts thousands: "
            "8K is 8,000) or make a batch smaller"
        )
    check_output(request)
    return Inputs(bundle, shards, valid, languages, options, steps, bundle.framing())


def warmup_note(warmup_steps: int, steps: int, schedule: str = "linear") -> str | None:
    """A warning when the warm-up does not end before the run does (a short trial of a
    preset's options may mean it; a real run rarely does). Step s < W runs at
    lr (s + 1) / W: a warm-up as long as the run reaches --lr at its last step."""
    if warmup_steps < steps:
        return None
    if warmup_steps == steps:
        reached = "reaches --lr only at the last step"
        if schedule != "constant":
            reached += " and never decays"
    else:
        reached = "never reaches --lr"
    return (
        f"xelm: warning: --warmup-steps {warmup_steps:,} is not below the run's {steps:,} "
        f"steps: the learning rate {reached} (warm up for fewer than {steps:,} steps "
        "or raise --tokens)"
    )


def require_vocabulary_fits(shards: Shards, bundle: Bundle) -> None:
    """Refuse shards whose token ids reach past the model's embedding rows (a seed whose
    tokenizer is larger than its model: each such id would end the run with an IndexError)."""
    config = bundle.load_config()
    rows = getattr(config.get_text_config(), "vocab_size", None)
    ids = int(shards.manifest["tokenizer"]["vocab_size"])
    if isinstance(rows, int) and ids > rows:
        raise UsageError(
            f"{shards.path} holds token ids up to {ids - 1:,}, but the model of {bundle.path} "
            f"has {rows:,} embedding rows: make the seed from a model and tokenizer that belong "
            "together (or resize the model's embeddings first)"
        )


def require_tokens(shards: Shards, languages: list[str]) -> None:
    shards.require_languages(languages)
    empty = [lang for lang in languages if shards.stats[lang].tokens == 0]
    if empty:
        raise UsageError(f"{shards.path} has no tokens in {', '.join(empty)}")


def check_output(request: TrainRequest) -> None:
    output = Path(os.path.abspath(request.output))
    if output.exists() and not request.overwrite:
        raise UsageError(f"output {output} already exists; choose another path or pass --force")
    existing = output.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to {output.parent}: {existing} is not a writable directory")
    has_checkpoints = bool(list_checkpoints(request.checkpoint_dir))
    if has_checkpoints and not request.resume and not request.overwrite:
        raise UsageError(
            f"{request.checkpoint_dir} holds checkpoints of an earlier run; "
            "pass --resume to continue it or --force to start over"
        )


# --- 3. the loop's pieces -------------------------------------------------------------------------


@dataclass
class StepSums:
    """One step's LM loss and, for MoE models, load-balancing loss, summed over its
    micro-batches; tensors on the device until a metrics line reads them."""

    loss: torch.Tensor
    aux: torch.Tensor | None


def accumulate(
    model: Any,
    forward: Any,
    micro_batches: Any,
    options: TrainOptions,
    device: torch.device,
    autocast: Any,
) -> StepSums:
    """Forward and backward over one step's micro-batches (arrays of blocks), the gradient
    all-reduced (DDP) after the last only. No host synchronisation."""
    bare = unwrap(model)
    extra = training_kwargs(bare)
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)
    aux_sum = torch.zeros((), dtype=torch.float32, device=device) if extra else None
    for micro, blocks in enumerate(micro_batches):
        batch = torch.from_numpy(blocks).to(device, non_blocking=True)
        with no_sync(model, last=micro == options.accumulation - 1):
            with autocast:
                output = forward(input_ids=batch, labels=batch, **extra)
            loss = output.loss
            micro_loss, aux = loss_parts(output, bare)
            loss_sum += micro_loss.detach()
            if aux_sum is not None and aux is not None:
                aux_sum += aux.detach()
            # the output's logits (B x T x V with the plain loss) are not kept past here: not
            # through the backward, nor the next micro-batch's forward
            del output, batch, micro_loss, aux
            (loss / options.accumulation).backward()
    return StepSums(loss_sum, aux_sum)


def diverged_line(loss: float, step: int, what: str | None = None) -> str:
    """The one line for a run whose loss (or ``what``) stopped being a number: nothing is
    written from it (a bundle, or a checkpoint after it, would hold NaN weights)."""
    return (
        f"training diverged: {what or f'the loss is {loss}'} at step {step}; start over "
        "(--force) with a lower --lr, a longer --warmup-steps or a smaller --clip"
    )


def require_finite(model: Any, loss: float, step: int, ranks: Ranks, device: torch.device) -> None:
    """Before a checkpoint (which replaces the last good one) and the bundle: the step's loss
    and the weights it made are finite, on every rank alike (the loss is the ranks' mean; a
    rank's count of non-finite weights, of its shards under FSDP, is summed over the ranks).
    A sum of each parameter is infinite or NaN when one of its elements is: one host wait."""
    if not math.isfinite(loss):
        raise UsageError(diverged_line(loss, step))
    # FSDP: this rank's shard of each parameter (a DTensor's local part)
    tensors = [(p.to_local() if hasattr(p, "to_local") else p).detach() for p in model.parameters()]
    sums = [t.sum(dtype=torch.float32) for t in tensors if t.numel()]
    finite = not sums or bool(torch.isfinite(torch.stack(sums)).all())
    bad = ranks.sum(0.0 if finite else 1.0, device)
    if bad:
        raise UsageError(diverged_line(loss, step, "the weights are no longer finite"))


def step_record(
    state: RunState,
    sums: StepSums,
    norm: Any,
    lr: float,
    logged: "Interval",
    options: TrainOptions,
    ranks: Ranks,
    device: torch.device,
) -> dict[str, Any]:
    """The metrics line of a logged step (the host waits for the device here: the speed
    since the last logged step counts the wait), the loss a mean over the ranks."""
    loss = ranks.mean(float(sums.loss) / options.accumulation, device)
    if hasattr(norm, "full_tensor"):  # FSDP: a DTensor
        norm = norm.full_tensor()
    record = {
        "step": state.step,
        "tokens": state.step * options.batch_tokens,
        "loss": loss,
        "lr": lr,
        "grad_norm": float(norm),
        "tokens_per_s": logged.speed(state.step),
    }
    if sums.aux is not None:  # MoE: the load-balancing loss, besides the LM loss
        record["aux_loss"] = ranks.mean(float(sums.aux) / options.accumulation, device)
    return record


def learning_rate(step: int, total: int, options: TrainOptions) -> float:
    """The rate of 0-based step ``step`` of ``total``: warm-up linearly to ``lr`` over the
    first ``warmup_steps`` (step s < W: lr (s + 1) / W), then decay towards 0 at ``total``,
    one step past the last (linear: lr (1 - (s - W) / (T - W)); cosine alike) or stay."""
    if step < options.warmup_steps:
        return options.lr * (step + 1) / options.warmup_steps
    if options.schedule == "constant":
        return options.lr
    progress = (step - options.warmup_steps) / max(1, total - options.warmup_steps)
    if options.schedule == "cosine":
        return options.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return options.lr * (1 - progress)


def due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


def validation_blocks(inputs: Inputs, options: TrainOptions) -> np.ndarray | None:
    """The first ``eval_blocks`` blocks of the held-out shards (fixed order, one epoch at most)."""
    if inputs.valid is None:
        return None
    stream = BlockStream(
        inputs.valid, inputs.languages, options.block_size, seed=options.seed,
        bos=inputs.framing.start, eos=inputs.framing.end,
    )  # fmt: skip
    n_blocks = max(1, min(options.eval_blocks, stream.epoch_tokens // options.block_size))
    return stream.blocks(0, n_blocks)


@torch.no_grad()
def evaluate(
    model: Any,
    blocks: np.ndarray,
    options: TrainOptions,
    device: torch.device,
    autocast: Any,
    ranks: Ranks | None = None,
) -> float:
    """Mean loss over ``blocks``; under torchrun rank ``r`` takes blocks ``r::world`` and the
    sums are all-reduced (every rank runs as many forwards, as FSDP needs)."""
    ranks = ranks or Ranks()
    mine = blocks[ranks.rank :: ranks.world]
    batches = -(-len(blocks[:: ranks.world]) // options.batch_size)  # rank 0 has the most
    model.eval()
    extra = validation_kwargs(unwrap(model))
    # each batch's mean loss in float32 on the device (MPS has no float64), weighted by its
    # blocks and summed in float64 on the host at the end: one wait, no device float64
    losses: list[torch.Tensor] = []
    weights: list[int] = []
    for index in range(batches):
        start = index * options.batch_size
        part = mine[start : start + options.batch_size]
        weights.append(len(part))
        batch = torch.from_numpy(part if len(part) else blocks[:1]).to(device)
        with autocast:
            loss = model(input_ids=batch, labels=batch, **extra).loss
        losses.append(loss.detach().float())
    model.train()
    means = torch.stack(losses).cpu().double().tolist() if losses else []
    total = math.fsum(m * w for m, w in zip(means, weights, strict=True) if w)  # w 0: FSDP's
    return ranks.sum(total, device) / len(blocks)


# --- 4. the trained bundle ------------------------------------------------------------------------


def cast_as_stored(model: Any, stored: dict[str, str], most: str) -> None:
    """Each floating tensor of ``model`` (fp32 master weights) cast, from fp32, to the dtype the
    parent stores it in (``stored``, by name: fp32 norms of a bf16 seed stay fp32), else to
    ``most``, the dtype most of the parent's weights are stored in."""
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(getattr(torch, stored.get(name, most)))


def write_trained(
    request: TrainRequest,
    inputs: Inputs,
    model: Any,
    state: RunState,
    device: torch.device,
    full_state: dict[str, Any] | None = None,
    sharding: Sharding | None = None,
) -> Bundle:
    parent, options = inputs.bundle, inputs.options
    role = options.role or (parent.manifest.role if parent.manifest.role != "seed" else "dense")
    # fp32 master weights in training; on disk the dtype the seed was stored in (or the chosen)
    save_dtype = parent.weights_dtype() if options.save_dtype == "auto" else options.save_dtype
    training = {
        "tokens": state.step * options.batch_tokens,
        "steps": state.step,
        "data_digest": inputs.shards.digest,
        "command": request.command,
        "trainer": request.provenance,  # the registration that ran (spec/bundle-v1.md 3.3)
        "options": {
            "trainer": TRAINER_NAME,
            "bundle": str(request.bundle),
            "data": str(request.data),
            "valid": str(request.valid) if request.valid else None,
            "valid_digest": inputs.valid.digest if inputs.valid else None,
            "languages": inputs.languages,
            "tokens": request.tokens,
            **options.as_dict(),
            "role": role,
        },
        "saved_dtype": save_dtype,
        "loss_curve": state.loss_curve,
        "valid_curve": state.valid_curve,
        "seconds": round(state.seconds, 3),
        "wall_seconds": round(state.wall_seconds, 3),
        "setup_seconds": round(state.setup_seconds, 3),
        "implementation": implementation(model, device, sharding),
        "hardware": {
            "device": device.type,
            "torch": torch.__version__,
            "world_size": options.world_size,
        },
    }
    with write_bundle(
        request.output,
        role=role,
        languages=inputs.languages,
        parent=parent,
        step={"relation": "train", "parents": [parent.ref]},
        allocation=parent.manifest.allocation,
        training=training,
        overwrite=request.overwrite,
        inherit_weights=False,
    ) as writer:
        if full_state is not None:  # FSDP: the gathered weights into an unsharded copy
            model = unsharded_copy(parent, full_state)
        model = model.to("cpu")
        if options.save_dtype == "auto":
            cast_as_stored(model, parent.stored_dtypes(), save_dtype)
        else:
            model = model.to(getattr(torch, save_dtype))
        writer.save_model(model)
    if not options.keep_checkpoints:
        for _, path in list_checkpoints(request.checkpoint_dir):
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):  # the hidden directory too, unless metrics remain
            request.checkpoint_dir.rmdir()
    assert writer.result is not None
    return writer.result
