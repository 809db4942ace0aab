"""``xelm train``, ``xelm plan`` and ``xelm train-all``: train bundles at equal compute."""

import json
import os
import shlex
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from xelm_cli.bundle.store import Bundle
from xelm_cli.cluster.allocation import read_allocation
from xelm_cli.common.atomic import output_lock
from xelm_cli.common.cli_options import ForceOpt, JsonOpt, OutDirOpt, print_json
from xelm_cli.common.errors import UsageError
from xelm_cli.common.units import parse_token_count
from xelm_cli.lang.codes import parse_language_list
from xelm_cli.plugin.contracts import TrainRequest, checkpoint_dir
from xelm_cli.plugin.host import get_registry
from xelm_cli.training.checkpoints import list_checkpoints, plan_budgets
from xelm_cli.training.estimates import (
    ModelShape,
    Throughput,
    device_memory,
    largest_batch,
    parse_size,
    training_memory,
)

console = Console(soft_wrap=True)
DEFAULT_TRAINER = "causal-lm"
PLAN_FORMAT = "xelm-train-plan"

DataOpt = Annotated[Path, typer.Option("--data", help="Token shards to train on.")]
ValidOpt = Annotated[
    Path | None, typer.Option("--valid", help="Held-out token shards for the validation loss.")
]
LangsOpt = Annotated[
    str | None, typer.Option("--langs", help="Languages to train on (default: the bundle's).")
]


def _command_line() -> str:
    return shlex.join(["xelm", *sys.argv[1:]])


def _languages(
    bundle: Path, langs: str | None, allocation: Path | None, expert: int | None
) -> tuple[str, ...]:
    if langs and allocation:
        raise UsageError("pass either --langs or --allocation, not both")
    if langs:
        return tuple(parse_language_list(langs))
    if allocation is None:
        return ()
    alloc = read_allocation(allocation)
    if expert is None:
        recorded = Bundle.read(bundle).manifest.allocation or {}
        if recorded.get("digest") != alloc.digest or "expert" not in recorded:
            raise UsageError(f"{bundle} is not an expert of {allocation}; pass --expert INDEX")
        expert = int(recorded["expert"])
    alloc.reference(expert)  # refuses an index out of range
    return tuple(alloc.experts[expert])


def train(
    bundle: Annotated[Path, typer.Argument(help="Bundle to train (it is not changed).")],
    data: DataOpt,
    tokens: Annotated[str, typer.Option("--tokens", help="Training tokens: 4096, 300K, 20M.")],
    out: OutDirOpt,
    langs: LangsOpt = None,
    allocation: Annotated[
        Path | None, typer.Option(help="Train on an expert's languages from this allocation.")
    ] = None,
    expert: Annotated[int | None, typer.Option(help="Expert index (with --allocation).")] = None,
    valid: ValidOpt = None,
    trainer: Annotated[str, typer.Option(help="Trainer plugin.")] = DEFAULT_TRAINER,
    block_size: Annotated[int, typer.Option(help="Tokens per packed block.")] = 1024,
    batch_size: Annotated[int, typer.Option(help="Blocks per micro-batch.")] = 8,
    global_batch: Annotated[
        str | None,
        typer.Option(help="Tokens per optimiser step (gradient accumulation reaches it)."),
    ] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-4,
    schedule: Annotated[str, typer.Option(help="linear (to 0), cosine or constant.")] = "linear",
    warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps.")] = 0,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.0,
    clip: Annotated[float, typer.Option(help="Gradient-norm clipping.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the data order and the RNGs.")] = 0,
    eval_every: Annotated[int, typer.Option(help="Validate every N steps (0: at the end).")] = 0,
    eval_blocks: Annotated[int, typer.Option(help="Held-out blocks per validation.")] = 16,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 100,
    log_every: Annotated[int, typer.Option(help="Loss-curve point every N steps.")] = 10,
    keep_checkpoints: Annotated[
        bool,
        typer.Option(help="Keep the last checkpoint (in .OUT.ckpt/) after writing the bundle."),
    ] = False,
    compile_model: Annotated[bool, typer.Option("--compile", help="Use torch.compile.")] = False,
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="Activation checkpointing (less memory, more compute).")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    fsdp: Annotated[
        bool, typer.Option(help="Under torchrun: shard the model with FSDP instead of DDP.")
    ] = False,
    lean_loss: Annotated[
        bool,
        typer.Option(
            help="Output layer and cross-entropy in chunks of tokens: never the whole batch's "
            "logits (models whose logits are more than the output layer keep the plain loss)."
        ),
    ] = True,
    attention: Annotated[
        str,
        typer.Option(
            help="attn_implementation: auto (transformers' choice, sdpa where supported), "
            "sdpa, eager, flash_attention_2, ..."
        ),
    ] = "auto",
    save_dtype: Annotated[
        str,
        typer.Option(
            help="dtype of the saved weights: auto (the bundle's own, e.g. a bf16 seed stays "
            "bf16; training keeps fp32 master weights), float32, bfloat16 or float16."
        ),
    ] = "auto",
    role: Annotated[
        str | None, typer.Option(help="Role of the new bundle (default: expert stays expert).")
    ] = None,
    router_only: Annotated[
        bool,
        typer.Option(
            "--router-only", help="MoE bundles (xelm bundle moe): train only the routers."
        ),
    ] = False,
    aux_loss: Annotated[
        float | None,
        typer.Option(
            help="MoE bundles: weight of the load-balancing loss (default: the config's "
            "router_aux_loss_coef); it is logged as aux_loss."
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint.")] = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a bundle on packed documents of its languages; write the result as a new bundle.

    Checkpoints and metrics.jsonl go to the hidden sibling .OUT.ckpt/ (a shell glob such as
    experts/* skips it); the checkpoints are removed once the bundle is written unless
    --keep-checkpoints. --resume continues a killed run exactly, or starts it when it was killed
    before its first checkpoint (so a re-queued job can always pass --resume).
    Under `torchrun --nproc-per-node N -m xelm_cli train ...` it trains with DDP (gloo on CPU,
    NCCL on GPU): --batch-size is per rank, the global batch is batch x accumulation x N blocks,
    and rank 0 writes the bundle.

    Example: xelm train experts/e0 --data shards/ --valid valid/ --tokens 20M -o trained/e0
    """
    options: dict[str, Any] = {
        "block_size": block_size,
        "batch_size": batch_size,
        "global_batch_tokens": parse_token_count(global_batch) if global_batch else None,
        "lr": lr,
        "schedule": schedule,
        "warmup_steps": warmup_steps,
        "weight_decay": weight_decay,
        "clip": clip,
        "seed": seed,
        "eval_every": eval_every,
        "eval_blocks": eval_blocks,
        "checkpoint_every": checkpoint_every,
        "log_every": log_every,
        "keep_checkpoints": keep_checkpoints,
        "compile": compile_model,
        "gradient_checkpointing": gradient_checkpointing,
        "device": device,
        "role": role,
        "fsdp": fsdp,
        "save_dtype": save_dtype,
        "lean_loss": lean_loss,
        "attention": attention,
        "router_only": router_only,
        "aux_loss": aux_loss,
    }
    request = TrainRequest(
        bundle=bundle,
        data=data,
        output=out,
        tokens=parse_token_count(tokens),
        languages=_languages(bundle, langs, allocation, expert),
        options=options,
        valid=valid,
        resume=resume,
        force=force,
        command=_command_line(),
    )
    writer = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 writes and reports
    with output_lock(out) if writer else nullcontext():  # one run per output, for its whole life
        result = get_registry().get("trainer", trainer).obj().train(request)
    if not writer:
        return
    record = result.manifest.training or {}
    if as_json:
        summary = {"path": str(result.path), "id": result.id, "digest": result.digest}
        print_json(summary | {k: record.get(k) for k in ("tokens", "steps")})
        return
    valid_curve = record.get("valid_curve") or []
    valid_text = (
        f", validation loss {valid_curve[0][1]:.3f} -> {valid_curve[-1][1]:.3f}"
        if valid_curve
        else ""
    )
    console.print(
        f"wrote {result.manifest.role} bundle [bold]{result.path}[/]: "
        f"{record.get('steps')} steps, {record.get('tokens'):,} tokens{valid_text}"
    )


# --- plan and train-all --------------------------------------------------------------------------


def _train_setting(args: list[str], flag: str, default: Any) -> Any:
    """The value ``args`` (extra `xelm train` options) give ``flag``, else ``default``."""
    for index, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
    return default


def estimate_runs(
    seed_bundle: Path,
    train_args: str = "",
    memory: int | None = None,
    measured: Path | None = None,
) -> dict[str, Any]:
    """Parameters and device memory of one run of the plan (every run trains a model of the
    seed's size, with the batch that ``train_args`` sets), refused in one line when the batch
    cannot fit in ``memory`` bytes (default: this machine's first GPU, else its RAM); and the
    FLOP/s of a ``measured`` run for time estimates (xelm_cli.training.estimates)."""
    args = shlex.split(train_args)
    batch = int(_train_setting(args, "--batch-size", 8))
    block = int(_train_setting(args, "--block-size", 1024))
    device = _train_setting(args, "--device", "auto")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = str(device).startswith("cuda")
    options = {
        "cuda": cuda,
        "lean_loss": "--no-lean-loss" not in args,
        "gradient_checkpointing": "--gradient-checkpointing" in args,
    }
    shape = ModelShape.of(Bundle.open(seed_bundle, verify=False))
    estimate = training_memory(shape, batch, block, **options)
    limit = memory if memory is not None else device_memory(cuda)
    if estimate.total > limit:
        fits, _ = largest_batch(shape, block, limit, **options)
        way = (
            f"the largest that fits is --batch-size {fits} (with --global-batch to keep the "
            "tokens per step)"
            if fits
            else "not even --batch-size 1 fits: try --gradient-checkpointing or --fsdp"
        )
        raise UsageError(
            f"a batch of {batch} x {block} tokens needs about {estimate.total / 1e9:.1f} GB "
            f"on {'the GPU' if cuda else 'the CPU'}, which has {limit / 1e9:.1f} GB; {way}"
        )
    return {
        "shape": shape,
        "throughput": Throughput.of(measured) if measured else None,
        "record": {
            "parameters": shape.parameters,
            "batch_size": batch,
            "block_size": block,
            "device": "cuda" if cuda else "cpu",
            "memory_limit": limit,
            "memory": estimate.as_dict(),
            "measured": str(measured) if measured else None,
        },
    }


def make_plan(
    budget: int,
    allocation: Path,
    seed_bundle: Path,
    data: Path,
    runs: Path,
    valid: Path | None,
    train_args: str = "",
    memory: int | None = None,
    measured: Path | None = None,
) -> dict[str, Any]:
    """The runs that give X-ELM and the dense baseline equal training tokens, as commands,
    with memory and time estimates when the seed bundle exists (``estimate_runs``)."""
    alloc = read_allocation(allocation)
    estimate = None
    if (seed_bundle / "xelm.json").is_file():
        estimate = estimate_runs(seed_bundle, train_args, memory, measured)
    entries = []
    for run in plan_budgets(budget, alloc.experts):
        # the experts side by side in runs/experts/ (so runs/experts/* is the ensemble)
        output = runs / run.name if run.expert is None else runs / "experts" / run.name
        extra = ["--valid", str(valid)] if valid else []
        extra += shlex.split(train_args)
        if run.expert is None:
            branch = None
            trained = ["xelm", "train", str(seed_bundle), "--langs", ",".join(run.languages)]
            trained += ["--role", "dense"]
        else:
            start = runs / "branches" / run.name
            branch = ["xelm", "bundle", "branch", str(seed_bundle), "--allocation"]
            branch += [str(allocation), "--expert", str(run.expert), "-o", str(start)]
            trained = ["xelm", "train", str(start)]
        trained += ["--data", str(data), *extra, "--tokens", str(run.tokens), "-o", str(output)]
        entries.append(
            {
                "name": run.name,
                "expert": run.expert,
                "languages": list(run.languages),
                "tokens": run.tokens,
                "output": str(output),
                "commands": [c for c in (branch, trained) if c],
                "seconds": (
                    estimate["throughput"].seconds(estimate["shape"], run.tokens)
                    if estimate and estimate["throughput"]
                    else None
                ),
            }
        )
    return {
        "format": PLAN_FORMAT,
        "budget": budget,
        "k": alloc.k,
        "allocation": {"path": str(allocation), "digest": alloc.digest},
        "estimate": estimate["record"] if estimate else None,
        "runs": entries,
    }


BudgetOpt = Annotated[str, typer.Option("--budget", help="Dense training tokens: 20M, 1.5B.")]
AllocationOpt = Annotated[Path, typer.Option("--allocation", help="Allocation (xelm cluster).")]
SeedOpt = Annotated[Path, typer.Option("--seed-bundle", help="Seed bundle to branch and train.")]
RunsOpt = Annotated[Path, typer.Option("--output", "-o", help="Directory of the runs.")]


def plan(
    budget: BudgetOpt,
    allocation: AllocationOpt,
    seed_bundle: SeedOpt,
    data: DataOpt,
    out: RunsOpt,
    valid: ValidOpt = None,
    train_args: Annotated[
        str, typer.Option(help="Options added to every `xelm train` (e.g. '--block-size 2048').")
    ] = "",
    memory: Annotated[
        str | None,
        typer.Option(
            help="Memory of the training device, e.g. 80GB (default: this machine's first "
            "GPU, else its RAM); a batch whose estimate exceeds it is refused."
        ),
    ] = None,
    measured: Annotated[
        Path | None,
        typer.Option(
            help="A bundle `xelm train` wrote on the machine that will train: run times are "
            "estimated from the FLOP/s it reached."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the per-expert budgets that make X-ELM and the dense baseline equal in training
    tokens (dense: B; each of k experts: B/k), and the commands that run them.

    Example: xelm plan --budget 20M --allocation alloc.json --seed-bundle seed/ --data sh/ -o runs/

    Save it with --json > plan.json and run it with `xelm train-all plan.json`.

    When the seed bundle exists, the plan estimates each run's device memory (weights, gradients,
    AdamW, activations and loss at the --train-args batch) and refuses a batch that cannot fit,
    naming the largest that would; --measured BUNDLE (a run trained on the same machine) adds
    each run's time:
      xelm plan ... --train-args '--batch-size 16' --memory 80GB --measured runs/probe

    The runs are independent jobs. On SLURM, one array task per run (K = k):
    task I runs run I's commands in turn, its `xelm train` under torchrun
    (DDP) on N devices; see spec/training.md section 8:
      sbatch --array=0-K --gres=gpu:N --wrap \\
        'xelm train-all plan.json --only $SLURM_ARRAY_TASK_ID --nproc-per-node N'
    """
    result = make_plan(
        parse_token_count(budget), allocation, seed_bundle, data, out, valid, train_args,
        memory=parse_size(memory) if memory else None, measured=measured,
    )  # fmt: skip
    if as_json:
        print_json(result)
        return
    table = Table(title=f"equal compute: {result['budget']:,} tokens, k = {result['k']}")
    for column in ("run", "languages", "tokens", "est. time", "output"):
        table.add_column(column, justify="right" if column in ("tokens", "est. time") else "left")
    for run in result["runs"]:
        time = f"{run['seconds'] / 60:,.1f} min" if run["seconds"] is not None else "-"
        table.add_row(
            run["name"], ",".join(run["languages"]), f"{run['tokens']:,}", time, run["output"]
        )
    console.print(table)
    estimate = result["estimate"]
    if estimate:
        parts = estimate["memory"]
        console.print(
            f"each run: {estimate['parameters']:,} parameters; a micro-batch of "
            f"{estimate['batch_size']} x {estimate['block_size']} tokens needs about "
            f"{parts['total'] / 1e9:.2f} GB on the {estimate['device'].upper()} (weights "
            f"{parts['weights'] / 1e9:.2f}, gradients {parts['gradients'] / 1e9:.2f}, optimiser "
            f"{parts['optimizer'] / 1e9:.2f}, activations {parts['activations'] / 1e9:.2f}, loss "
            f"{parts['loss'] / 1e9:.2f}) of {estimate['memory_limit'] / 1e9:.1f} GB",
            highlight=False,
        )
    experts = sum(r["tokens"] for r in result["runs"] if r["expert"] is not None)
    console.print(f"experts together: {experts:,} tokens; dense: {result['budget']:,} tokens")
    console.print(
        "the runs are independent jobs: one each (a SLURM array task: xelm train-all plan.json "
        "--only I [--nproc-per-node N]); see `xelm plan --help`",
        style="dim",
        highlight=False,
        markup=False,
    )
    for run in result["runs"]:
        for command in run["commands"]:
            typer.echo(shlex.join(command))


def _read_plan(path: Path) -> dict[str, Any]:
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read plan {path}: {exc}") from None
    if not isinstance(result, dict) or result.get("format") != PLAN_FORMAT:
        raise UsageError(f"{path} is not a plan written by `xelm plan --json`")
    return result


def _pending(command: list[str]) -> list[str] | None:
    """The command to run now (with --resume after a kill), or None when its output exists."""
    output = Path(command[command.index("-o") + 1])
    if (output / "xelm.json").is_file():
        return None
    if command[1] == "train" and list_checkpoints(checkpoint_dir(output)):
        return [*command, "--resume"]
    return command


def train_all(
    plan_file: Annotated[Path, typer.Argument(help="Plan from `xelm plan --json`.")],
    only: Annotated[
        int | None, typer.Option(help="Run only the run with this index (an array task).")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the commands; run nothing.")] = False,
    nproc_per_node: Annotated[
        int, typer.Option(help="Run `xelm train` under torchrun on this many devices (DDP).")
    ] = 1,
) -> None:
    """Run a plan's runs one after another on this machine, skipping finished outputs and
    resuming killed ones.

    Example: xelm train-all plan.json --only 2 --nproc-per-node 4
    """
    if nproc_per_node < 1:
        raise UsageError("--nproc-per-node must be at least 1")
    runs = _read_plan(plan_file)["runs"]
    if only is not None:
        if not 0 <= only < len(runs):
            raise UsageError(f"--only {only}: the plan has runs 0..{len(runs) - 1}")
        runs = [runs[only]]
    for run in runs:
        for command in run["commands"]:
            pending = _pending(command)
            if pending is None:
                console.print(f"skip (done): {shlex.join(command)}", style="dim")
                continue
            launcher = ["xelm"]
            if nproc_per_node > 1 and pending[1] == "train":
                launcher = ["torchrun", "--standalone", "--nproc-per-node", str(nproc_per_node)]
                launcher += ["-m", "xelm_cli"]
            typer.echo(shlex.join([*launcher, *pending[1:]]))
            if dry_run:
                continue
            if launcher[0] == "torchrun":  # the torchrun of this interpreter
                launcher[0:1] = [sys.executable, "-m", "torch.distributed.run"]
            else:
                launcher = [sys.executable, "-m", "xelm_cli"]
            code = subprocess.call([*launcher, *pending[1:]])
            if code:
                raise typer.Exit(code)
