"""The plan of ``xelm plan`` (``make_plan``): the runs that give X-ELM and the dense baseline
equal training tokens, as commands, with device-memory and time estimates of each run."""

import difflib
import math
import os
import shlex
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from xelm_cli.bundle.moe import DEFAULT_TOP_K as MOE_TOP_K
from xelm_cli.bundle.moe import family_of, require_no_bias
from xelm_cli.bundle.store import Bundle
from xelm_cli.cluster.allocation import Allocation, read_allocation
from xelm_cli.cluster.assigning import assigns_documents
from xelm_cli.common.errors import UsageError, XelmError
from xelm_cli.common.units import parse_byte_size, token_count
from xelm_cli.data.corpus import read_documents
from xelm_cli.data.shards import Shards
from xelm_cli.plugin.host import get_registry
from xelm_cli.plugin.options import declared_options, parse_options, parse_pairs, with_flags
from xelm_cli.training.checkpoints import Budget, plan_budgets
from xelm_cli.training.estimates import (
    MemoryEstimate,
    ModelShape,
    Throughput,
    device_memory,
    largest_batch,
    moe_shapes,
    training_memory,
    usable_memory,
)
from xelm_cli.training.plan_runner import PLAN_FORMAT, PLAN_FORMAT_VERSION, side_by_side_length
from xelm_cli.training.positions import (
    declared_positions,
    past_positions_line,
    require_block_fits,
)
from xelm_cli.training.run import DEFAULT_TRAINER, TRAIN_ARG

DEFAULT_MOE_AUX_LOSS = 0.01  # load-balancing loss of a plan's MoE fine-tune


def split_train_args(train_args: str) -> list[str]:
    """--train-args as the shell would split it, an unbalanced quote refused in one line."""
    try:
        return shlex.split(train_args)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise UsageError(
            f"--train-args {train_args!r}: {exc}; quote it as the shell would "
            '(--train-args "--lr 1e-3 --block-size 512")'
        ) from None


def planned_options(train_args: str) -> dict[str, Any]:
    """The default trainer's options that ``train_args`` (extra `xelm train` arguments: its
    flags and ``--train-arg KEY=VALUE``) set, over its declared defaults; an unknown flag (with
    the closest one) or a bad value is refused in one line now rather than when the runs start."""
    given = given_options(train_args)  # (refuses a plan without the default trainer)
    owner = get_registry().trainers[DEFAULT_TRAINER].obj
    return {spec.name: spec.default for spec in declared_options(owner) if spec.cli} | given


def given_options(train_args: str) -> dict[str, Any]:
    """The options ``train_args`` gives the default trainer, converted (no defaults)."""
    registry = get_registry()
    if DEFAULT_TRAINER not in registry.trainers:
        raise UsageError(
            f"estimating a plan needs the {DEFAULT_TRAINER} trainer, which is not loaded "
            "(xelm plugins list)"
        )
    owner = registry.trainers[DEFAULT_TRAINER].obj
    specs = [spec for spec in declared_options(owner) if spec.cli]
    by_flag = {spec.flag_name: spec for spec in specs}
    negations = {spec.negative_flag: spec for spec in specs if spec.is_flag}
    given: dict[str, Any] = {}
    pairs: list[str] = []
    args = split_train_args(train_args)
    index = 0
    while index < len(args):
        name, equals, value = args[index].partition("=")
        index += 1
        spec = by_flag.get(name) or negations.get(name)
        if name != TRAIN_ARG and spec is None:
            raise unknown_train_arg(name, [*by_flag, *negations, TRAIN_ARG])
        if spec is not None and spec.is_flag:
            if equals:
                raise UsageError(f"--train-args: {name} takes no value; drop ={value}")
            given[spec.name] = "false" if name in negations else "true"
            continue
        if not equals:
            if index == len(args):
                raise UsageError(f"--train-args: {name} needs a value ({name} VALUE)")
            value, index = args[index], index + 1
        if spec is None:
            pairs.append(value)
        else:
            given[spec.name] = value
    values = with_flags(parse_pairs(pairs, TRAIN_ARG), given, owner, TRAIN_ARG)
    options = parse_options(owner, values, label=f"--train-args: trainer {DEFAULT_TRAINER!r}")
    _check_given({spec.flag_name: options[spec.name] for spec in specs if spec.name in options})
    return options


def _check_given(options: dict[str, Any]) -> None:
    """Refuse in one line a trainer option (by its flag) of --train-args that the plan sets
    itself (``PLAN_SETS``: --role), or that the experts' and the dense run's `xelm train`
    refuse (``MOE_ONLY``); the trainer's own checks follow in ``step_tokens``."""
    for flag, value in options.items():
        if flag in PLAN_SETS:
            raise unknown_train_arg(flag, [])
        if flag in MOE_ONLY and value not in (None, False):
            raise UsageError(
                f"--train-args: {flag} is for MoE bundles, and the experts' and the dense "
                f"run's `xelm train` refuse it: drop it{MOE_ONLY[flag]}"
            )


# `xelm train` options every run of a plan gets from the plan itself, not from --train-args
PLAN_SETS = {
    "--tokens": "each run's tokens come from --budget",
    "--data": "from --data, or --expert-data for an expert",
    "--valid": "from --valid",
    "-o": "each run's output is under -o",
    "--output": "each run's output is under -o",
    "--langs": "each run trains its allocation's languages",
    "--role": "the dense run's is dense, every other run's its parent's",
}
# options for MoE bundles only, with what the plan takes instead
MOE_ONLY = {"--aux-loss": " (the moe run's is --moe-aux-loss)", "--router-only": ""}


def unknown_train_arg(name: str, flags: list[str]) -> UsageError:
    """The one-line refusal of ``name`` in --train-args, naming the closest of ``flags``."""
    if not name.startswith("-"):
        return UsageError(
            f"--train-args: {name!r} is not a flag; give `xelm train` flags and their values "
            "(e.g. '--block-size 2048 --batch-size 16')"
        )
    sets = PLAN_SETS.get(name)
    if sets:
        return UsageError(f"--train-args: {name} is the plan's to set ({sets}); drop it there")
    close = difflib.get_close_matches(name, flags, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return UsageError(
        f"--train-args: `xelm train` has no trainer option {name} ({hint}its options: "
        f"xelm train --help)"
    )


def check_inputs(seed: Bundle, data: Path, valid: Path | None, languages: Sequence[str]) -> Shards:
    """Refuse now, one line each, what every run's ``xelm train`` would refuse when it starts:
    ``data`` (and ``valid``) that are not shards of the ``seed`` bundle's tokenizer (read by
    ``read_seed``) or lack one of the ``languages`` the runs train on; and ``data`` that holds
    one allocation expert's documents only (the dense run would train on a part of the corpus).
    The ``data`` shards, opened."""
    shards = open_shards("--data", data, seed, languages)
    if (held := shards.expert) is not None:
        raise UsageError(
            f"--data: {data} holds only the documents of expert {held.get('expert')} of "
            f"{held.get('path')}, and the dense run trains on every document: give the shards "
            "of the whole corpus there, and each expert's to --expert-data"
        )
    if valid is not None:
        open_shards("--valid", valid, seed, languages)
    return shards


def read_seed(seed_bundle: Path) -> Bundle:
    """The seed bundle the plan's runs start from, refused in one line unless it is one."""
    try:
        return Bundle.read(seed_bundle)
    except UsageError as error:
        raise UsageError(
            f"--seed-bundle: {error}; give the bundle the experts branch from (`xelm bundle "
            "init` makes one)"
        ) from None


def open_shards(option: str, path: Path, seed: Bundle, languages: Sequence[str]) -> Shards:
    """The shards at ``path`` (given as ``option``, which each refusal names), refused unless
    they are of ``seed``'s tokenizer and hold every one of ``languages``."""
    try:
        shards = Shards.open(path)
    except UsageError as error:
        raise UsageError(f"{option}: {error}") from None  # it names the way to make them
    with refusals_naming(option):
        shards.require_tokenizer(seed.manifest.fingerprints["tokenizer"], f"seed {seed.path}")
        shards.require_languages(languages)
    return shards


@contextmanager
def refusals_naming(option: str) -> Iterator[None]:
    """Within this block, a one-line refusal starts with the ``option`` it is about."""
    try:
        yield
    except UsageError as error:
        raise UsageError(f"{option}: {error}") from None


def expert_data_paths(
    template: str | None, alloc: Allocation, allocation: Path, seed_bundle: Path
) -> list[Path] | None:
    """Each expert's shards by the --expert-data ``template`` (``{expert}``: the expert's
    index), or None without one: every expert then trains on --data. Refused in one line: a
    template that does not place the index, and no template for an allocation whose clusterer
    assigns documents (TF-IDF), whose experts must each train on their own documents."""
    if template is None:
        if _assigns_documents(alloc):
            raise UsageError(
                f"{allocation} ({alloc.clusterer}) assigns documents, not languages: each "
                f"expert trains on its own; prepare them (xelm data prepare CORPUS --allocation "
                f"{allocation} --expert all -t {seed_bundle} -o 'shards-{{expert}}/') and give "
                "--expert-data 'shards-{expert}/'"
            )
        return None
    try:
        paths = [template.format(expert=i) for i in range(max(alloc.k, 2))]
    except (KeyError, IndexError, ValueError):
        paths = []  # another {field}, or braces that do not pair
    if not paths or len(set(paths)) < len(paths):
        raise UsageError(
            f"--expert-data {template!r} must hold {{expert}}, where each expert's index goes, "
            "and no other {...}: e.g. 'shards-{expert}/'"
        )
    return [Path(path) for path in paths[: alloc.k]]


def _assigns_documents(alloc: Allocation) -> bool:
    """``assigns_documents`` of the allocation's clusterer, refused naming --allocation when
    that clusterer is not installed."""
    with refusals_naming(f"--allocation {alloc.path}"):
        return assigns_documents(alloc)


def check_expert_data(seed: Bundle, alloc: Allocation, paths: list[Path]) -> list[Shards]:
    """Each expert's shards (``paths``, by index), opened and refused in one line naming
    --expert-data where expert I's `xelm train` would refuse them: not shards of the ``seed``
    bundle's tokenizer, of another expert's documents, of every document of its languages
    when the allocation assigns documents (``Shards.require_expert``), or, unless they are its
    own documents (`xelm train` trains it on every language they hold), without one of its
    languages."""
    documents = _assigns_documents(alloc)
    opened = []
    for expert, path in enumerate(paths):
        option = f"--expert-data (expert {expert})"
        shards = open_shards(option, path, seed, ())
        languages = alloc.experts[expert]
        with refusals_naming(option):
            shards.require_expert(
                alloc.reference(expert), f"run expert-{expert}", assigns_documents=documents
            )
            if shards.expert is None:
                shards.require_languages(languages)
        opened.append(shards)
    return opened


def check_moe_inputs(
    seed_bundle: Path, calibration: Path | None, languages: Sequence[str], experts: int
) -> None:
    """Refuse now, in one line naming the option, what the ``moe`` run's `xelm bundle moe`
    would refuse once every expert is trained: fewer ``experts`` than each token is routed to,
    experts (branches of the seed) of a family with no transformers MoE architecture or with
    bias terms it lacks, and --moe-calibration text it cannot read in every one of the
    experts' ``languages``."""

    if experts < MOE_TOP_K:
        raise UsageError(
            f"--moe-tokens: the MoE routes each token to {MOE_TOP_K} of its experts, and the "
            f"allocation has {experts}: give one of {MOE_TOP_K} experts or more, or drop "
            "--moe-tokens"
        )
    dense = Bundle.read(seed_bundle).load_config()
    try:
        require_no_bias(dense, family_of(dense.model_type))
    except UsageError as error:
        raise UsageError(
            f"--moe-tokens: {error}; drop --moe-tokens to plan the experts and the dense run only"
        ) from None
    if calibration is None:
        return
    try:
        read_documents(calibration, languages=languages, limit=1)
    except (XelmError, OSError) as error:
        raise UsageError(
            f"--moe-calibration: {error}; give held-out labelled text in "
            f"{', '.join(languages)} (`xelm bundle moe --gate language` reads it), or drop "
            "--moe-calibration for a random gate"
        ) from None


def passes(tokens: int, shards: Shards, languages: Sequence[str]) -> float:
    """How many times ``tokens`` go over the shards' tokens of ``languages``."""
    return tokens / shards.tokens_in(languages)


def passes_line(plan: dict[str, Any]) -> str | None:
    """A note naming the runs of ``plan`` that go over their data more than once (as `xelm
    train` notes for one run), or None."""
    over = [run for run in plan["runs"] if run["passes"] > 1]
    if not over:
        return None
    each = ", ".join(f"{run['name']} about {run['passes']:,.1f}" for run in over)
    return (
        f"xelm: {len(over)} of the plan's runs go over the tokens these shards hold in their "
        f"languages more than once (the paper trains one pass: a smaller --budget or more "
        f"--data keeps to it): {each} passes"
    )


def positions_line(plan: dict[str, Any]) -> str | None:
    """A note when the runs' block is longer than the positions the seed declares, or None (as
    each run's `xelm train` notes)."""
    block, positions = plan["estimate"]["block_size"], plan["estimate"]["positions"]
    return past_positions_line(block, positions, '--train-args "--block-size {}"')


def estimate_runs(
    seed_bundle: Path,
    train_args: str = "",
    memory: int | None = None,
    measured: Path | None = None,
    moe_experts: int = 0,
    ranks: int = 1,
    step: int | None = None,
) -> dict[str, Any]:
    """Parameters and device memory of one run of the plan (every run trains a model of the
    seed's size, with the batch that ``train_args`` sets, on ``ranks`` devices: with --fsdp
    sharded over them) and, given ``moe_experts`` (k), of the ``moe`` run (the MoE of k
    experts, with the plain loss), each refused in one line when the batch cannot fit in the
    usable part (``usable_memory``: on CUDA less a reserve) of ``memory`` bytes (default: this
    machine's first GPU, else its RAM: needed for a CUDA device this machine lacks), naming
    the largest --batch-size that fits and makes whole micro-batches of a ``step`` (tokens;
    default ``step_tokens``); and the FLOP/s of a ``measured`` run for time estimates, as if on
    ``ranks`` devices (xelm_cli.training.estimates). The device is --device of ``train_args``;
    ``auto`` is this machine's GPU, else its CPU, and with ``memory`` and no GPU here refused
    in one line (``resolve_device``)."""
    planned = planned_options(train_args)
    shards = fsdp_shards(bool(planned["fsdp"]), ranks)
    batch, block, given = planned["batch_size"], planned["block_size"], str(planned["device"])
    require_block_fits(block, Path(seed_bundle))
    cuda = resolve_device(given, memory)
    # auto: transformers' choice, SDPA for the models xelm trains
    attention = "sdpa" if planned["attention"] == "auto" else planned["attention"]
    options: dict[str, Any] = {
        "cuda": cuda,
        "lean_loss": bool(planned["lean_loss"]),
        "gradient_checkpointing": bool(planned["gradient_checkpointing"]),
        "attention": attention,
        "shards": shards,
        "ddp": ranks > 1 and shards == 1,
    }
    shape = ModelShape.of(Bundle.open(seed_bundle, verify=False))
    total = memory if memory is not None else device_memory(cuda)
    limits = RunLimits(
        total=total,
        usable=usable_memory(total, cuda),
        device=device_words("cuda" if cuda else "cpu", given),
        planned=planned,
        step=step if step is not None else step_tokens(train_args, ranks),
        ranks=ranks,
    )
    estimate = require_fits(shape, limits, options)
    throughput = Throughput.of(measured, ranks) if measured else None
    moe_memory = None
    if moe_experts:
        held, _ = moe_shapes(shape, moe_experts, MOE_TOP_K)
        # the trainer keeps transformers' own loss for MoE models (its load-balancing term)
        moe_options = options | {"lean_loss": False, "mlps_per_token": MOE_TOP_K}
        run = f"the moe run ({moe_experts} MLPs a layer, {MOE_TOP_K} a token, the plain loss)"
        moe_memory = require_fits(held, limits, moe_options, run)
    return {
        "shape": shape,
        "throughput": throughput,
        "moe_memory": moe_memory,
        "record": {
            "parameters": shape.parameters,
            "batch_size": batch,
            "block_size": block,
            "positions": declared_positions(Path(seed_bundle)),
            "device": "cuda" if cuda else "cpu",
            "device_option": given,
            "attention": attention,
            "ranks": ranks,
            "fsdp": shards > 1,
            "memory_limit": total,
            "memory_usable": limits.usable,
            "memory": estimate.as_dict(),
            "measured": str(measured) if measured else None,
            "measured_time": throughput.timed if throughput else None,
        },
    }


def resolve_device(given: str, memory: int | None) -> bool:
    """Whether the runs' estimate is of CUDA, from the --device of --train-args (``given``):
    ``auto`` trains on this machine's GPU, else on its CPU. With --memory (``memory`` bytes)
    and no GPU here, ``auto`` is refused in one line: `xelm train` would pick the device where
    it runs, and whether --memory is a GPU's or a CPU's is not known."""
    if given != "auto":
        return given.startswith("cuda")
    import torch

    if torch.cuda.is_available():
        return True
    if memory is not None:
        raise UsageError(
            f"--memory {gigabytes(memory)} with --device auto (the default of --train-args), "
            "which trains on a GPU where there is one, and this machine has none: say which "
            "device that memory is, --train-args '--device cuda' (the GPU that will train) or "
            "'--device cpu'"
        )
    return False


def device_words(device: str, given: str) -> str:
    """The device an estimate is of (``device``: cuda or cpu), with the --device of
    --train-args (``given``) it comes from, in words."""
    words = "CUDA" if device == "cuda" else "the CPU"
    if given != "auto":
        return f"{words} (--device {given})"
    here = "this machine's GPU" if device == "cuda" else "this machine has no GPU"
    return f"{words} (--device auto: {here})"


def gigabytes(size: int) -> str:
    """``size`` bytes in GB: one decimal from 1 GB, else three significant digits."""
    return f"{size / 1e9:,.1f} GB" if size >= 1e9 else f"{size / 1e9:.3g} GB"


def memory_room(total: int, usable: int) -> str:
    """A device's memory of ``total`` bytes, with what an estimate may fill of it (``usable``;
    on CUDA less a reserve, ``usable_memory``), in words."""
    if usable == total:
        return gigabytes(total)
    return (
        f"{gigabytes(usable)} usable of {gigabytes(total)} ({gigabytes(total - usable)} kept "
        "for the CUDA context, workspaces and fragmentation)"
    )


@dataclass(frozen=True)
class RunLimits:
    """What each run's micro-batch must fit: ``usable`` of the device's ``total`` bytes on
    ``device`` (in words), at optimiser steps of ``step`` tokens on ``ranks`` devices, with
    the trainer options of --train-args (``planned``)."""

    total: int
    usable: int
    device: str
    planned: dict[str, Any]
    step: int
    ranks: int


def fsdp_shards(fsdp: bool, ranks: int) -> int:
    """The ranks --fsdp shards each run's model over (1: none), refused in one line where the
    runs' `xelm train` would refuse it (--fsdp without torchrun's ranks)."""
    if ranks < 1:
        raise UsageError(f"--nproc-per-node must be at least 1, not {ranks}")
    if fsdp and ranks == 1:
        raise UsageError(
            "--train-args sets --fsdp, which shards each run over torchrun's ranks: give "
            "--nproc-per-node N (as `xelm train-all --nproc-per-node N` runs it), or drop --fsdp"
        )
    return ranks if fsdp else 1


def time_line(plan: dict[str, Any]) -> str | None:
    """Which time of the measured run's training record the run times scale, or None
    without --measured: its wall time, or, in an older record, its steps' time alone."""
    estimate = plan["estimate"]
    if estimate["measured_time"] is None:
        return None
    source = f"run times: at the FLOP/s of {estimate['measured']} over its"
    if estimate["measured_time"] == "wall_seconds":
        return f"{source} wall time (wall_seconds: validation and checkpoints included)"
    return (
        f"{source} steps' time (seconds; its training record has no wall_seconds): they leave "
        "out validation and checkpoints (a bundle a newer `xelm train` wrote records both)"
    )


def require_fits(
    shape: ModelShape, limits: RunLimits, options: dict[str, Any], run: str | None = None
) -> MemoryEstimate:
    """The memory of a micro-batch of --train-args (``limits.planned``), refused in one line
    when it exceeds ``limits.usable`` bytes, naming the largest --batch-size that fits and that
    `xelm train` accepts at the plan's steps (``batch_for_step``), with the --global-batch
    that keeps them (``run``: the one run it is of, named in the refusal; None: every run)."""
    batch, block = limits.planned["batch_size"], limits.planned["block_size"]
    estimate = training_memory(shape, batch, block, **options)
    if estimate.total <= limits.usable:
        return estimate
    fits, _ = largest_batch(shape, block, limits.usable, **options)
    whole = batch_for_step(limits.planned, limits.step, limits.ranks, fits) if fits else 0
    if whole:
        kept = limits.planned["global_batch_tokens"] is not None
        flags = f"--batch-size {whole}" + ("" if kept else f" --global-batch {limits.step}")
        at = f"--global-batch {limits.step}" if kept else f"steps of {limits.step:,} tokens"
        way = f"the largest that fits at {at} is {flags} in --train-args"
        if not kept and fits > whole:
            alone = fits * block * limits.ranks
            way += f" (or --batch-size {fits} alone, at steps of {alone:,} tokens)"
    else:
        more = "more --nproc-per-node" if options["shards"] > 1 else "--fsdp on --nproc-per-node N"
        way = f"not even --batch-size 1 fits: try --gradient-checkpointing or {more}"
        way += ", or drop --moe-tokens" if run else ""
    sharded = f" sharded over {options['shards']} ranks" if options["shards"] > 1 else ""
    raise UsageError(
        f"{run + ': ' if run else ''}a batch of {batch} x {block} tokens needs about "
        f"{gigabytes(estimate.total)}{sharded} on {limits.device}, which has "
        f"{memory_room(limits.total, limits.usable)}; {way}"
    )


def batch_for_step(planned: dict[str, Any], step: int, ranks: int, at_most: int) -> int:
    """The largest --batch-size of at most ``at_most`` that `xelm train` accepts with the
    options ``planned`` at --global-batch ``step`` on ``ranks`` devices (the step a whole number
    of micro-batches on every rank), by the default trainer's own check; 0: none."""
    trainer = get_registry().trainers[DEFAULT_TRAINER].obj
    block = planned["block_size"]
    for batch in range(at_most, 0, -1):
        if step % (batch * block * ranks):
            continue  # the trainer's rule, without its whole check for every size
        try:
            trainer.check_options(
                planned | {"batch_size": batch, "global_batch_tokens": step}, world_size=ranks
            )
        except UsageError:
            continue
        return batch
    return 0


def make_plan(
    budget: int | str,
    allocation: Path | str,
    seed_bundle: Path | str,
    data: Path | str,
    runs: Path | str,
    valid: Path | str | None = None,
    train_args: str | Sequence[str] = "",
    memory: int | str | None = None,
    measured: Path | str | None = None,
    moe_tokens: int | str = 0,
    moe_calibration: Path | str | None = None,
    moe_aux_loss: float = DEFAULT_MOE_AUX_LOSS,
    parallel: int | None = None,
    nproc_per_node: int = 1,
    expert_data: str | None = None,
) -> dict[str, Any]:
    """The runs that give X-ELM and the dense baseline equal training tokens, as commands to
    run in this process's current directory (the plan's ``directory``), once the inputs are
    checked (``check_inputs``), with memory and time estimates (``estimate_runs``), and with
    ``parallel``, how long ``xelm train-all`` takes running that many at a time
    (``side_by_side``). Each run holds ``passes``: how many times its tokens go over the
    ``data`` shards' tokens of its languages (``passes_line`` notes the runs over one). Each
    run's `xelm train` runs on ``nproc_per_node`` devices (``xelm train-all --nproc-per-node``):
    with --fsdp in ``train_args`` the memory estimate shards the model over them.

    ``expert_data`` (``'shards-{expert}/'``) gives each expert its own shards, the path with its
    index, checked like ``data`` (``check_expert_data``) and each expert's ``passes`` counted
    over them; the other runs keep ``data``. An allocation whose clusterer assigns documents
    (TF-IDF) needs it (``expert_data_paths``). Each run records the shards it trains on
    (``data``).

    With ``moe_tokens`` (Branch-Train-MiX's accounting) the experts share ``budget -
    moe_tokens`` and two runs follow them: ``average`` (their parameter average, no training)
    and ``moe`` (the MoE model built from them, fine-tuned for ``moe_tokens`` with the
    load-balancing loss); the dense run trains what the experts and the fine-tune train
    together, so dense and MoE each cost ``budget``, the ensemble and the averaged model the
    experts' ``budget - moe_tokens`` (each rounded down to whole steps); what ``xelm bundle
    moe`` would refuse of the experts or ``moe_calibration`` is refused first
    (``check_moe_inputs``).

    ``budget`` and ``moe_tokens`` are token counts or their text (``"20M"``), ``memory`` bytes
    or their text (``"80GB"``), ``train_args`` text or a list of arguments; every path may be
    text."""
    budget = token_count(budget, "budget")
    if isinstance(memory, str):
        memory = parse_byte_size(memory, "memory")
    if not isinstance(train_args, str):
        train_args = shlex.join(train_args)
    moe_tokens = moe_tokens if moe_tokens == 0 else token_count(moe_tokens, "moe_tokens")
    allocation, seed_bundle, data, runs = map(Path, (allocation, seed_bundle, data, runs))
    valid, measured, moe_calibration = (
        Path(path) if path is not None else None for path in (valid, measured, moe_calibration)
    )
    _check_plan_options(parallel, moe_tokens, moe_calibration, moe_aux_loss, nproc_per_node)
    alloc = read_allocation(allocation)
    expert_paths = expert_data_paths(expert_data, alloc, allocation, seed_bundle)
    step = step_tokens(train_args, nproc_per_node)
    budgets = _run_budgets(budget, moe_tokens, alloc, step)
    everything = list(next(b.languages for b in budgets if b.expert is None))
    seed = read_seed(seed_bundle)
    shards = check_inputs(seed, data, valid, everything)
    expert_shards = check_expert_data(seed, alloc, expert_paths) if expert_paths else []
    if moe_tokens:
        check_moe_inputs(seed_bundle, moe_calibration, everything, alloc.k)
    estimate = estimate_runs(
        seed_bundle,
        train_args,
        memory,
        measured,
        alloc.k if moe_tokens else 0,
        nproc_per_node,
        step,
    )
    # each run trains steps of exactly `step` tokens, however many devices train-all gives it
    train_args = with_global_batch(train_args, step)
    train_extra = ["--valid", str(valid)] if valid else []
    train_extra += split_train_args(train_args)
    entries = []
    for run in budgets:
        run, trained_on = _run_shards(run, shards, expert_shards)
        commands = _run_commands(run, seed_bundle, allocation, trained_on.path, runs, train_extra)
        entries.append(_run_entry(run, commands, runs, trained_on, estimate))
    if moe_tokens:
        experts = [str(_run_output(runs, b)) for b in budgets if b.expert is not None]
        tuned = moe_tokens // step * step
        by_documents = allocation if _assigns_documents(alloc) else None
        entries += merged_runs(
            experts, everything, data, runs, valid, train_args, estimate,
            tuned, moe_calibration, moe_aux_loss, passes(tuned, shards, everything),
            by_documents,
        )  # fmt: skip
    plan = {
        "format": PLAN_FORMAT,
        "format_version": PLAN_FORMAT_VERSION,
        "directory": os.getcwd(),
        "budget": budget,
        "moe_tokens": moe_tokens,
        "step_tokens": step,
        "k": alloc.k,
        "allocation": {"path": str(allocation), "digest": alloc.digest},
        "estimate": estimate["record"],
        "runs": entries,
    }
    if parallel is not None:
        plan["side_by_side"] = side_by_side(entries, parallel)
    return plan


def _check_plan_options(
    parallel: int | None,
    moe_tokens: int,
    calibration: Path | None,
    aux_loss: float,
    nproc_per_node: int,
) -> None:
    if parallel is not None and parallel < 1:
        raise UsageError(f"--parallel must be at least 1, not {parallel}")
    if nproc_per_node < 1:
        raise UsageError(f"--nproc-per-node must be at least 1, not {nproc_per_node}")
    if calibration is not None and not moe_tokens:
        raise UsageError("--moe-calibration is for the MoE run: give --moe-tokens too, or drop it")
    if not (math.isfinite(aux_loss) and aux_loss >= 0):
        raise UsageError(f"--moe-aux-loss must be a number of 0 or more, not {aux_loss}")


def _run_budgets(budget: int, moe_tokens: int, alloc: Allocation, step: int) -> list[Budget]:
    """The experts' runs, sharing ``budget - moe_tokens``, and the dense run, of what they and
    the MoE fine-tune train together, every run whole steps of ``step`` tokens; refused when
    ``moe_tokens`` leaves the experts nothing or is less than one step."""
    if moe_tokens and not 0 < moe_tokens < budget:
        raise UsageError(
            f"--moe-tokens {moe_tokens:,} must be below --budget {budget:,}: the experts train "
            "on what is left of the budget"
        )
    smaller = (
        "or make a step smaller: --global-batch, or --batch-size x --block-size, in "
        "--train-args, or fewer --nproc-per-node"
    )
    if moe_tokens and moe_tokens < step:
        raise UsageError(
            f"--moe-tokens {moe_tokens:,} is less than one step of {step:,} tokens: raise it "
            f"{smaller}"
        )
    if (budget - moe_tokens) // alloc.k < step:
        given = f"--budget {budget:,}" + (
            f" less --moe-tokens {moe_tokens:,}" if moe_tokens else ""
        )
        lower = " (or lower --moe-tokens)" if moe_tokens else ""
        raise UsageError(
            f"{given} gives each of {alloc.k} experts less than one step of {step:,} tokens: "
            f"raise --budget{lower} {smaller}"
        )
    budgets = plan_budgets(budget - moe_tokens, alloc.experts, step)
    tuned = moe_tokens // step * step
    return [b if b.expert is not None else replace(b, tokens=b.tokens + tuned) for b in budgets]


def step_tokens(train_args: str, ranks: int) -> int:
    """Tokens of one optimiser step of every run of a plan (`xelm train` trains whole steps):
    --global-batch of ``train_args``, else one micro-batch on each of ``ranks`` devices; options
    the default trainer would refuse on ``ranks`` devices are refused now
    (``Trainer.check_options``)."""
    planned = planned_options(train_args)
    try:
        get_registry().trainers[DEFAULT_TRAINER].obj.check_options(planned, world_size=ranks)
    except UsageError as exc:
        raise UsageError(f"--train-args: {exc}") from None
    micro_batch = planned["batch_size"] * planned["block_size"] * ranks
    step = planned["global_batch_tokens"] or micro_batch
    if step % micro_batch:
        on_ranks = f" x {ranks} ranks" if ranks > 1 else ""
        raise UsageError(
            f"--train-args: --global-batch {step:,} must be a multiple of one micro-batch "
            f"(--batch-size x --block-size{on_ranks} = {micro_batch:,} tokens)"
        )
    return int(step)


def with_global_batch(train_args: str, step: int) -> str:
    """``train_args`` with ``--global-batch step`` unless they set it: the plan's equal compute
    then holds when a run trains on other devices than the plan assumed (`xelm train-all
    --nproc-per-node`), or `xelm train` refuses a step those devices cannot make."""
    if planned_options(train_args)["global_batch_tokens"] is not None:
        return train_args
    return f"{train_args} --global-batch {step}".strip()


def _run_shards(run: Budget, shards: Shards, expert_shards: list[Shards]) -> tuple[Budget, Shards]:
    """The shards ``run`` trains on: its own with --expert-data (an expert's run), else
    --data's ``shards``; on shards of an expert's own documents, the run's languages are
    those they hold (as `xelm train` trains it)."""
    if run.expert is None or not expert_shards:
        return run, shards
    own = expert_shards[run.expert]
    if own.expert is not None:
        run = replace(run, languages=tuple(own.languages))
    return run, own


def _run_output(runs: Path, run: Budget) -> Path:
    """Where ``run`` writes its model: the experts side by side in runs/experts/ (so
    runs/experts/* is the ensemble)."""
    return runs / run.name if run.expert is None else runs / "experts" / run.name


def _run_commands(
    run: Budget,
    seed_bundle: Path,
    allocation: Path,
    data: Path,
    runs: Path,
    train_extra: list[str],
) -> list[list[str]]:
    """The commands of ``run``: the dense run trains the seed on every language; an expert
    branches the seed for its cluster, then trains the branch (each `xelm train` with
    ``train_extra``, the options every run of the plan takes)."""
    training = ["--data", str(data), *train_extra, "--tokens", str(run.tokens)]
    training += ["-o", str(_run_output(runs, run))]
    if run.expert is None:
        dense = ["xelm", "train", str(seed_bundle), "--langs", ",".join(run.languages)]
        return [[*dense, "--role", "dense", *training]]
    start = runs / "branches" / run.name
    branch = ["xelm", "bundle", "branch", str(seed_bundle), "--allocation", str(allocation)]
    branch += ["--expert", str(run.expert), "-o", str(start)]
    return [branch, ["xelm", "train", str(start), *training]]


def _run_entry(
    run: Budget,
    commands: list[list[str]],
    runs: Path,
    shards: Shards,
    estimate: dict[str, Any],
) -> dict[str, Any]:
    """The plan's record of an expert's or the dense run: the ``shards`` it trains on, with how
    many times its tokens go over its languages in them, and its time when ``estimate`` has a
    throughput."""
    throughput = estimate["throughput"]
    return {
        "name": run.name,
        "expert": run.expert,
        "languages": list(run.languages),
        "tokens": run.tokens,
        "passes": passes(run.tokens, shards, run.languages),
        "data": str(shards.path),
        "output": str(_run_output(runs, run)),
        "commands": commands,
        "seconds": throughput.seconds(estimate["shape"], run.tokens) if throughput else None,
    }


def side_by_side(runs: list[dict[str, Any]], at_a_time: int) -> dict[str, Any]:
    """How long ``xelm train-all`` takes with ``at_a_time`` runs at once, each on a device of
    its own: in tokens (as if every token took as long) and, when every run's time is
    estimated, in seconds; beside the same one after another."""
    timed = all(run["seconds"] is not None for run in runs)
    tokens = side_by_side_length(runs, at_a_time, lambda run: run["tokens"])
    assert tokens is not None  # a plan's runs wait only for its experts: no cycle
    seconds = side_by_side_length(runs, at_a_time, lambda run: run["seconds"]) if timed else None
    return {
        "runs_at_a_time": at_a_time,
        "tokens": int(tokens),
        "seconds": seconds,
        "one_after_another": {
            "tokens": sum(run["tokens"] for run in runs),
            "seconds": sum(run["seconds"] for run in runs) if timed else None,
        },
    }


def merged_runs(
    experts: list[str],
    languages: list[str],
    data: Path,
    runs: Path,
    valid: Path | None,
    train_args: str,
    estimate: dict[str, Any],
    moe_tokens: int,
    calibration: Path | None,
    aux_loss: float,
    moe_passes: float,
    by_documents: Path | None = None,
) -> list[dict[str, Any]]:
    """The ``average`` and ``moe`` runs of a plan: one model each from the finished experts
    (both wait for them: run them after the experts' array tasks); ``moe_passes``: how many
    times the fine-tune goes over its data; ``by_documents``: the allocation, when it assigns
    documents (its experts share languages: the language gate calibrates each on its
    cluster's part of the calibration text)."""
    names = [f"expert-{i}" for i in range(len(experts))]
    average = ["xelm", "bundle", "merge", *experts, "--method", "average"]
    average += ["-o", str(runs / "average")]
    built = runs / "moe-init"
    gate = ["--gate", "language", "--calibration", str(calibration)] if calibration else []
    if gate and by_documents is not None:
        gate += ["--allocation", str(by_documents)]
    moe = ["xelm", "bundle", "moe", *experts, "--top-k", str(MOE_TOP_K),
           *(gate or ["--gate", "random"]), "-o", str(built)]  # fmt: skip
    extra = [*(["--valid", str(valid)] if valid else []), *split_train_args(train_args)]
    tuned = ["xelm", "train", str(built), "--data", str(data), *extra,
             "--aux-loss", str(aux_loss), "--tokens", str(moe_tokens),
             "-o", str(runs / "moe")]  # fmt: skip
    held, active = moe_shapes(estimate["shape"], len(experts), MOE_TOP_K)
    throughput = estimate["throughput"]
    seconds = throughput.seconds(active, moe_tokens) if throughput else None
    return [
        {"name": "average", "expert": None, "languages": languages, "tokens": 0, "passes": 0.0,
         "data": None, "output": str(runs / "average"), "commands": [average],
         "seconds": 0.0 if throughput else None, "after": names},
        {"name": "moe", "expert": None, "languages": languages, "tokens": moe_tokens,
         "passes": moe_passes, "data": str(data), "output": str(runs / "moe"),
         "commands": [moe, tuned],
         "seconds": seconds, "after": names, "parameters": held.parameters, "top_k": MOE_TOP_K,
         "aux_loss": aux_loss, "memory": estimate["moe_memory"].as_dict()},
    ]  # fmt: skip
