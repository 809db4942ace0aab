"""``xelm train``, ``xelm plan`` and ``xelm train-all``: train bundles at equal compute."""

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from xelm_cli.bundle.store import Bundle
from xelm_cli.cluster.allocation import read_allocation
from xelm_cli.common.cli_options import ForceOpt, JsonOpt, OutDirOpt, print_json, print_whole
from xelm_cli.common.errors import UsageError
from xelm_cli.common.units import duration, parse_token_count
from xelm_cli.lang.codes import parse_language_list
from xelm_cli.plugin.host import get_registry
from xelm_cli.plugin.options import (
    PAIRS_METAVAR,
    declared_options,
    given,
    parse_pairs,
    typer_parameters,
    with_flags,
    with_parameters,
)
from xelm_cli.training.estimates import parse_size
from xelm_cli.training.plan_runner import (
    check_outputs,
    check_ranks,
    chosen_runs,
    command_environment,
    device_groups,
    plan_directory,
    plan_dry_run,
    process_argv,
    raise_failures,
    read_plan,
    run_pending,
    run_plan,
    say_on_stderr,
    shown_command,
    under_torchrun,
)
from xelm_cli.training.planning import (
    DEFAULT_MOE_AUX_LOSS,
    device_words,
    make_plan,
    memory_room,
    passes_line,
    positions_line,
    time_line,
)
from xelm_cli.training.run import DEFAULT_TRAINER
from xelm_cli.training.run import train as train_verb

console = Console(soft_wrap=True)

DataOpt = Annotated[Path, typer.Option("--data", help="Token shards to train on.")]
ValidOpt = Annotated[
    Path | None, typer.Option("--valid", help="Held-out token shards for the validation loss.")
]
LangsOpt = Annotated[
    str | None, typer.Option("--langs", help="Languages to train on (default: the bundle's).")
]


def _command_line() -> str:
    """This command as a user would type it again; under torchrun with its launcher, as
    ``xelm train-all`` shows it (rendezvous flags of a multi-node job are the cluster's)."""
    command = ["xelm", *sys.argv[1:]]
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    if "TORCHELASTIC_RUN_ID" not in os.environ or not local.isdigit():
        return shlex.join(command)
    world = os.environ.get("WORLD_SIZE", local)
    nodes = int(world) // int(local) if world.isdigit() and int(local) > 0 else 1
    return shlex.join(under_torchrun(command, int(local), max(nodes, 1)))


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
    trainer: Annotated[
        str, typer.Option(help="Trainer plugin (xelm plugins list); its options: --train-arg.")
    ] = DEFAULT_TRAINER,
    train_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--train-arg",
            metavar=PAIRS_METAVAR,
            help="Trainer option KEY=VALUE (repeatable), for any trainer's own options "
            "(xelm plugins show NAME); the flags below are the default trainer's.",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue from the newest checkpoint (none yet: start, and say so)."
        ),
    ] = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    **flags: Any,
) -> None:
    """Train a bundle on packed documents of its languages; write the result as a new bundle.

    Checkpoints and metrics.jsonl go to the hidden sibling .OUT.ckpt/ (a shell glob such as
    experts/* skips it); the checkpoints are removed once the bundle is written, and none is
    written after the last step, unless --keep-checkpoints. --resume continues a killed run
    exactly, or starts it when it was killed before its first checkpoint (so a re-queued job can
    always pass --resume).
    Under `torchrun --nproc-per-node N -m xelm_cli train ...` it trains with DDP (gloo on CPU,
    NCCL on GPU): --batch-size is per rank, the global batch is batch x accumulation x N blocks,
    and rank 0 writes the bundle.

    The trainer options below are the default trainer's (causal-lm); another trainer takes its
    own with --train-arg KEY=VALUE (xelm plugins show NAME lists them).

    Example: xelm train experts/e0 --data shards/ --valid valid/ --tokens 20M -o trained/e0
    """
    options = command_options(trainer, flags, train_arg or [])
    result = train_verb(
        bundle,
        data=data,
        tokens=tokens,
        output=out,
        trainer=trainer,
        languages=_languages(bundle, langs, allocation, expert),
        valid=valid,
        resume=resume,
        overwrite=force,
        command=_command_line(),
        **options,
    )
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
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
    steps, trained = record.get("steps"), record.get("tokens")
    console.print(
        f"wrote {result.manifest.role} bundle [bold]{escape(str(result.path))}[/]"
        + (
            f": {steps:,} step{'' if steps == 1 else 's'}, {trained:,} tokens"
            if steps is not None and trained is not None
            else ""
        )
        + valid_text
    )


# the request's own parameters: a declared option of the same name is reachable via --train-arg
REQUEST_PARAMETERS = (
    "bundle", "data", "tokens", "out", "output", "langs", "languages", "allocation", "expert",
    "valid", "trainer", "train_arg", "resume", "force", "overwrite", "as_json", "command",
)  # fmt: skip
_flag_owner: list[Any] = []  # the declaration the flags of `xelm train` were derived from
_plain = with_parameters(train, [])  # before add_trainer_flags: the request's own flags only
train.__signature__ = _plain.__signature__  # type: ignore[attr-defined]
train.__annotations__ = _plain.__annotations__


def add_trainer_flags() -> None:
    """Give ``xelm train`` one flag per option the default trainer declares (once per process:
    the registry is loaded by then); without that trainer, only ``--train-arg``."""
    if _flag_owner:
        return
    registry = get_registry()
    owner = registry.trainers[DEFAULT_TRAINER].obj if DEFAULT_TRAINER in registry.trainers else None
    extra = typer_parameters(owner, skip=REQUEST_PARAMETERS) if owner is not None else []
    built = with_parameters(train, extra)
    train.__signature__ = built.__signature__  # type: ignore[attr-defined]
    train.__annotations__ = built.__annotations__
    _flag_owner.append(owner)


def command_options(trainer: str, flags: dict[str, Any], pairs: list[str]) -> dict[str, Any]:
    """The trainer options of one ``xelm train``: ``--train-arg`` pairs, then the flags given
    (those of the default trainer's declaration); a flag the chosen trainer does not declare
    is refused in one line naming the trainer and its options."""
    flagged = given(flags, _flag_owner[0]) if flags else {}
    options: dict[str, Any] = parse_pairs(pairs, "--train-arg")
    if flagged:
        registration = get_registry().get("trainer", trainer)
        own = {spec.name: spec for spec in declared_options(registration.obj) if spec.cli}
        foreign = [name for name in flagged if name not in own]
        if foreign:
            owner = _flag_owner[0] if _flag_owner else None
            flag = next(
                (s.flag_name for s in declared_options(owner) if s.name == foreign[0]),
                "--" + foreign[0].replace("_", "-"),
            )
            listing = f"its options: {', '.join(own)}" if own else "it takes no options"
            raise UsageError(
                f"trainer {registration.name!r} has no option {flag} ({listing}; "
                "pass them with --train-arg KEY=VALUE)"
            )
        options = with_flags(options, flagged, registration.obj, "--train-arg")
    return options


# --- plan and train-all --------------------------------------------------------------------------


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
    expert_data: Annotated[
        str | None,
        typer.Option(
            help="Each expert's own shards, a path with {expert} for its index (e.g. "
            "'shards-{expert}/'); needed by an allocation that assigns documents (tfidf)."
        ),
    ] = None,
    train_args: Annotated[
        str, typer.Option(help="Options added to every `xelm train` (e.g. '--block-size 2048').")
    ] = "",
    memory: Annotated[
        str | None,
        typer.Option(
            help="Memory of the training device, e.g. 80GB (default: this machine's first "
            "GPU, else its RAM); a batch whose estimate exceeds it (on CUDA: it less the "
            "larger of 1.5 GiB and 5%, for the CUDA context, workspaces and fragmentation) is "
            "refused. On a machine without a GPU, say which device it is: --train-args "
            "'--device cuda' or '--device cpu'."
        ),
    ] = None,
    measured: Annotated[
        Path | None,
        typer.Option(
            help="A bundle `xelm train` wrote on the machine that will train: run times are "
            "estimated from the FLOP/s it reached."
        ),
    ] = None,
    moe_tokens: Annotated[
        str | None,
        typer.Option(
            help="Also plan one model from the experts (Branch-Train-MiX): their average and "
            "an MoE fine-tuned for this many tokens, taken from the experts' share of the "
            "budget (they get (B - M)/k each)."
        ),
    ] = None,
    moe_calibration: Annotated[
        Path | None,
        typer.Option(
            help="Held-out labelled text for the MoE's language gate (default: random gate)."
        ),
    ] = None,
    moe_aux_loss: Annotated[
        float, typer.Option(help="Load-balancing loss coefficient of the MoE fine-tune.")
    ] = DEFAULT_MOE_AUX_LOSS,
    parallel: Annotated[
        int | None,
        typer.Option(
            help="Also estimate how long `xelm train-all` takes running this many at a time "
            "(--devices with as many groups), each run on a device of its own."
        ),
    ] = None,
    nproc_per_node: Annotated[
        int,
        typer.Option(
            help="Devices each run trains on (`xelm train-all --nproc-per-node`): with --fsdp "
            "in --train-args, memory is estimated for one device's shard of the model."
        ),
    ] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Print the per-expert budgets that make X-ELM and the dense baseline equal in training
    tokens (each of k experts: B/k in whole optimiser steps, as `xelm train` trains them;
    dense: what the k experts train together), and the commands that run them.

    --moe-tokens M adds the BTX comparison: the experts share B - M, then their parameter
    average (no training) and an MoE built from them and fine-tuned for M tokens with the
    load-balancing loss (runs average and moe, after the experts); the dense run and the MoE
    (its experts' B - M and its M) each train B, the ensemble and the averaged model the
    experts' B - M:
      xelm plan --budget 20M --moe-tokens 2M --allocation alloc.json --seed-bundle seed/ ...

    Example: xelm plan --budget 20M --allocation alloc.json --seed-bundle seed/ --data sh/ -o runs/

    With an allocation that assigns documents (xelm cluster tfidf), each expert trains on its
    own shards (xelm data prepare CORPUS --allocation A --expert all -o 'shards-{expert}/'),
    given by --expert-data with {expert} for its index; the dense run keeps --data:

    Example: xelm plan --budget 20M --allocation alloc-tfidf/ --seed-bundle seed/ --data sh/
    --expert-data 'sh-{expert}/' -o runs/

    Save it with --json > plan.json and run it with `xelm train-all plan.json`.

    The seed bundle and the shards are checked first (the shards hold every language of the
    allocation, each expert's --expert-data its languages and its documents), with
    --moe-tokens also what `xelm bundle moe` would refuse (the seed's family,
    --moe-calibration text it cannot read); the runs whose tokens go over the shards' text in
    their languages more than once are noted on stderr (each run's `passes` in --json), and so
    is a block longer than the positions the seed declares (the runs would train past them). The
    plan records the directory it is made in (`directory`), where `xelm train-all` runs its
    commands, so relative paths keep their meaning wherever it starts.

    The plan estimates each run's device memory (weights, gradients,
    AdamW, activations and loss at the --train-args batch; with --fsdp there, one device's
    shard of the model over --nproc-per-node N, as `xelm train-all --nproc-per-node N` runs
    it) and refuses a batch that cannot fit, naming the largest that would; --measured BUNDLE
    (a run trained on the same machine) adds each run's time, and --parallel N the whole
    plan's under `xelm train-all --devices` with N runs at a time (its order: the most tokens
    first, a run's `after` runs before it):
      xelm plan ... --train-args '--batch-size 16' --memory 80GB --measured runs/probe
      --parallel 8

    The runs are independent jobs. On SLURM, one array task per run (K = k):
    task I runs run I's commands in turn, its `xelm train` under torchrun
    (DDP) on N devices; see spec/training.md section 8:
      sbatch --array=0-K --gres=gpu:N --wrap \\
        'xelm train-all plan.json --only $SLURM_ARRAY_TASK_ID --nproc-per-node N'
    """
    result = make_plan(
        parse_token_count(budget), allocation, seed_bundle, data, out, valid, train_args,
        memory=parse_size(memory) if memory else None, measured=measured,
        moe_tokens=parse_token_count(moe_tokens) if moe_tokens else 0,
        moe_calibration=moe_calibration, moe_aux_loss=moe_aux_loss, parallel=parallel,
        nproc_per_node=nproc_per_node, expert_data=expert_data,
    )  # fmt: skip
    for note in (positions_line(result), passes_line(result)):
        if note:
            say_on_stderr(note)
    if as_json:
        print_json(result)
        return
    _print_plan(result)


def _print_plan(result: dict[str, Any]) -> None:
    """The plan for a reader: its runs' table, the memory and token notes, then the commands,
    one a line."""
    print_whole(console, _runs_table(result))
    console.print(_memory_line(result["estimate"]), highlight=False)
    timed = time_line(result)
    if timed:
        console.print(timed, highlight=False)
    moe = next((r for r in result["runs"] if r["name"] == "moe"), None)
    if moe:
        console.print(_moe_line(moe, result["k"]), highlight=False)
    console.print(_tokens_line(result))
    if "side_by_side" in result:
        console.print(_side_by_side_line(result), highlight=False)
    ranks = result["estimate"]["ranks"]
    console.print(
        "the runs are independent jobs: one each (a SLURM array task: xelm train-all plan.json "
        f"--only I {f'--nproc-per-node {ranks}' if ranks > 1 else '[--nproc-per-node N]'}); "
        "see `xelm plan --help`",
        style="dim",
        highlight=False,
        markup=False,
    )
    for run in result["runs"]:
        for command in run["commands"]:
            typer.echo(shlex.join(command))


def _runs_table(result: dict[str, Any]) -> Table:
    table = Table(title=_headline(result))
    for column in ("run", "languages", "tokens", "est. time", "output"):
        table.add_column(column, justify="right" if column in ("tokens", "est. time") else "left")
    for run in result["runs"]:
        time = duration(run["seconds"]) if run["seconds"] is not None else "-"
        table.add_row(
            run["name"], ",".join(run["languages"]), f"{run['tokens']:,}", time, run["output"]
        )
    return table


def _headline(result: dict[str, Any]) -> str:
    """What each system of the plan trains: the same tokens, or with --moe-tokens the dense run
    and the MoE (experts and fine-tune) the same, the ensemble and the averaged model the
    experts' alone."""
    runs = {run["name"]: run for run in result["runs"]}
    dense = runs["dense"]["tokens"]
    budget, k = f"budget {result['budget']:,}", f"k = {result['k']}"
    if "moe" not in runs:
        return f"equal compute: {dense:,} tokens a system ({budget}), {k}"
    experts = sum(run["tokens"] for run in result["runs"] if run["expert"] is not None)
    return (
        f"equal compute for dense and MoE: {dense:,} tokens each (MoE: experts {experts:,} + "
        f"fine-tune {runs['moe']['tokens']:,}); ensemble and averaged model: the experts' "
        f"{experts:,} ({budget}, --moe-tokens {result['moe_tokens']:,}), {k}"
    )


def _memory_line(estimate: dict[str, Any]) -> str:
    """The memory estimate of each run, of what it may fill (on CUDA less a reserve), and the
    device it assumes with the --device it comes from."""
    parts = estimate["memory"]
    device = device_words(estimate["device"], estimate["device_option"])
    where = f"each of {estimate['ranks']} FSDP ranks on {device}" if estimate["fsdp"] else device
    room = memory_room(estimate["memory_limit"], estimate["memory_usable"])
    return (
        f"each run: {estimate['parameters']:,} parameters; a micro-batch of "
        f"{estimate['batch_size']} x {estimate['block_size']} tokens needs about "
        f"{parts['total'] / 1e9:.2f} GB (weights "
        f"{parts['weights'] / 1e9:.2f}, gradients {parts['gradients'] / 1e9:.2f}, optimiser "
        f"{parts['optimizer'] / 1e9:.2f}, activations {parts['activations'] / 1e9:.2f} with "
        f"{estimate['attention']} attention, loss "
        f"{parts['loss'] / 1e9:.2f}) of {room} on {where}"
    )


def _moe_line(moe: dict[str, Any], k: int) -> str:
    memory = moe.get("memory")
    needs = f"; the same micro-batch needs about {memory['total'] / 1e9:.2f} GB" if memory else ""
    return (
        f"the moe run: {moe['parameters']:,} parameters ({k} MLPs a layer){needs}; its "
        f"time counts those top-{moe['top_k']} routing uses per token"
    )


def _tokens_line(result: dict[str, Any]) -> str:
    """The training tokens of the experts together and the dense run and, with --moe-tokens,
    of the averaged model and the MoE; with what the rounding to whole steps leaves of the
    budget."""
    runs = {r["name"]: r for r in result["runs"]}
    experts = sum(r["tokens"] for r in result["runs"] if r["expert"] is not None)
    dense = runs["dense"]["tokens"]
    summary = f"experts together: {experts:,} tokens; dense: {dense:,} tokens"
    if "moe" in runs:
        tuned = runs["moe"]["tokens"]
        summary += (
            f"; averaged model: {experts:,} tokens (the experts'); MoE: {experts:,} + "
            f"{tuned:,} fine-tune = {experts + tuned:,} tokens "
            "(run average and moe after the experts)"
        )
    if dense < result["budget"]:
        summary += (
            f"; every run is whole steps of {result['step_tokens']:,} tokens, "
            f"{result['budget'] - dense:,} of the budget are left untrained"
        )
    return summary


def _side_by_side_line(plan: dict[str, Any]) -> str:
    """How long train-all takes N runs at a time: on GPUs each run on devices of its own
    (--devices), on a CPU machine side by side on its cores (--parallel)."""
    estimate = plan["side_by_side"]
    n, alone = estimate["runs_at_a_time"], estimate["one_after_another"]
    gpus = plan["estimate"]["device"] == "cuda"
    how = f"--devices with {n} groups" if gpus else f"--parallel {n}"
    line = (
        f"{n} runs at a time (xelm train-all {how}): the time of "
        f"{estimate['tokens']:,} tokens at one run's speed, one after another {alone['tokens']:,}"
    )
    if estimate["seconds"] is not None:
        each = (
            "each run on a device of its own"
            if gpus
            else "if the runs do not slow each other (on a CPU they share its cores)"
        )
        took, instead = duration(estimate["seconds"]), duration(alone["seconds"])
        line += f"; about {took} instead of {instead}, {each}"
    return line


def train_all(
    plan_file: Annotated[Path, typer.Argument(help="Plan from `xelm plan --json`.")],
    only: Annotated[
        int | None, typer.Option(help="Run only the run with this index (an array task).")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the commands; run nothing (with --json: per run, each command and "
            "whether it is done).",
        ),
    ] = False,
    nproc_per_node: Annotated[
        int, typer.Option(help="Run `xelm train` under torchrun on this many devices (DDP).")
    ] = 1,
    devices: Annotated[
        str | None,
        typer.Option(
            help="GPUs to share out, e.g. 0,1,2,3: runs train at once, each on its own group "
            "of --nproc-per-node of them (its CUDA_VISIBLE_DEVICES).",
        ),
    ] = None,
    parallel: Annotated[
        int, typer.Option(help="Runs to train at once without pinning devices (a CPU machine).")
    ] = 1,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print what became of each run (done, skipped, failed, not run; its times, "
            "devices, log and output bundle) as JSON, as xelm_cli.api.run_plan returns it; the "
            "commands' output goes to the logs, as side by side.",
        ),
    ] = False,
) -> None:
    """Run a plan's runs on this machine, skipping finished outputs and resuming killed ones:
    one after another, or several at once. The commands run in the directory the plan was made
    in (its `directory`), wherever train-all starts, so a SLURM job may start anywhere.

    Example: xelm train-all plan.json --only 2 --nproc-per-node 4

    On one node with 8 GPUs, eight runs at a time, one GPU each (or four, two GPUs each under
    torchrun); each run's output goes to ROOT/logs/NAME.log, a failed run does not stop the
    others, and the average and moe runs start when the experts are done:
      xelm train-all plan.json --devices 0,1,2,3,4,5,6,7
      xelm train-all plan.json --devices 0,1,2,3,4,5,6,7 --nproc-per-node 2

    --json prints a list with one object per run (name, status, code, started, ended,
    devices, log, output: the bundle it writes), what xelm_cli.api.run_plan returns; it exits
    1 when a run failed:
      xelm train-all plan.json --parallel 2 --json > outcomes.json
    """
    if dry_run:
        device_groups(devices, nproc_per_node, parallel)  # the same refusals as side by side
        listing = plan_dry_run(plan_file, only=only, nproc_per_node=nproc_per_node)
        if as_json:
            print_json(listing)
            return
        for command in (c for run in listing for c in run["commands"]):
            if command["done"]:
                console.print(
                    f"skip (done): {shlex.join(command['command'])}", style="dim", markup=False
                )
            else:
                typer.echo(shlex.join(command["command"]))
        return
    if devices is None and parallel == 1 and not as_json:
        device_groups(devices, nproc_per_node, parallel)  # the same refusals as side by side
        plan = read_plan(plan_file)
        check_ranks(plan, nproc_per_node)
        run_in_turn(chosen_runs(plan, only), plan_directory(plan), nproc_per_node)
        return
    outcomes = run_plan(
        plan_file, only=only, parallel=parallel, devices=devices, nproc_per_node=nproc_per_node
    )
    if as_json:
        print_json([outcome.as_dict() for outcome in outcomes])
    raise_failures(outcomes)


def run_in_turn(runs: list[dict[str, Any]], directory: Path | None, nproc_per_node: int) -> None:
    """One command after another in this terminal (their progress bars shown), in the plan's
    ``directory``; the first failure stops the rest."""
    check_outputs(runs, directory)
    for run in runs:
        for command, todo in run_pending(run, directory):
            if todo is None:
                console.print(f"skip (done): {shlex.join(command)}", style="dim", markup=False)
                continue
            shown = shown_command(todo, nproc_per_node)
            typer.echo(shlex.join(shown))
            code = subprocess.call(process_argv(shown), cwd=directory, env=command_environment())
            if code:
                raise typer.Exit(code)
