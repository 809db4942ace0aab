"""What a demo preset trains, before it runs, and how long the rest takes at the speed measured.

A step's record (``steps/NAME.json``) holds the tokens its training runs trained and the seconds
those runs took (their bundles' training records); from the finished steps of a run directory
the plan estimates the training still to do at the speed reached so far on that machine.
Only training is estimated: data preparation, clustering and evaluation are not in it.

A token costs 6 x the parameters it uses in FLOP: the seed's for every run but the MoE's
fine-tune, whose token uses the MoE's active parameters under top-2 routing (two MLPs a layer
and the routers: ``moe_shapes``). Speeds and times are therefore counted in tokens of the seed's
size (a fine-tune token counts active / seed parameters of one), so that a finished MoE step
neither slows the estimate of the seed-sized runs nor the other way round.
"""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from xelm_cli.common.errors import UsageError
from xelm_cli.common.jsonio import read_json_object
from xelm_cli.common.units import duration
from xelm_cli.demo.folder import check_folder
from xelm_cli.demo.presets import MOE_TOP_K, Preset, get_preset
from xelm_cli.training.estimates import ModelShape, moe_shapes
from xelm_cli.training.plan_runner import side_by_side_length


@dataclass(frozen=True)
class StepPlan:
    step: str
    runs: int
    tokens: int
    done: bool
    training_seconds: float | None  # measured, when done and recorded
    parameters: int  # that a token of its runs uses: the seed's, or the MoE's active ones


@dataclass(frozen=True)
class DemoPlan:
    preset: str
    parameters: int  # of the seed model (the experts and the dense model have as many)
    batch_tokens: int
    steps: list[StepPlan]
    # training speed of the finished steps (None: none yet), in tokens of the seed's size
    tokens_per_second: float | None
    devices: int | None = None  # GPUs of --devices: the seed on some at once, the rest side by side
    side_by_side_tokens: int | None = None  # then: the seed's share + the runner's span
    seed_ranks: int | None = None  # then: the GPUs the seed trains on at once

    @property
    def side_by_side_seconds(self) -> float | None:
        if self.side_by_side_tokens is None or not self.tokens_per_second:
            return None
        return self.side_by_side_tokens / self.tokens_per_second

    @property
    def tokens(self) -> int:
        return sum(step.tokens for step in self.steps)

    @property
    def remaining_tokens(self) -> int:
        return sum(step.tokens for step in self.steps if not step.done)

    @property
    def seed_sized_tokens(self) -> int:
        """The training in tokens of the seed's size (an MoE fine-tune token counts its active
        parameters over the seed's): its time at one run's speed, run after run."""
        return round(sum(step.tokens * step.parameters for step in self.steps) / self.parameters)

    @property
    def flops(self) -> int:
        """Of all the training: 6 x the parameters a token uses x tokens, step by step."""
        return sum(6 * step.parameters * step.tokens for step in self.steps)

    @property
    def remaining_seconds(self) -> float | None:
        if not self.tokens_per_second:
            return None
        left = sum(step.tokens * step.parameters for step in self.steps if not step.done)
        return left / self.parameters / self.tokens_per_second

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "tokens": self.tokens,
            "flops": self.flops,
            "seed_sized_tokens": self.seed_sized_tokens,
            "remaining_tokens": self.remaining_tokens,
            "remaining_seconds": self.remaining_seconds,
            "side_by_side_seconds": self.side_by_side_seconds,
        }


def seed_parameters(preset: Preset) -> int:
    """Parameters of the preset's seed (Llama-style, untied embeddings), counted on the meta
    device: nothing is allocated."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    sizes: dict[str, Any] = dict(preset.model)
    config = LlamaConfig(vocab_size=preset.vocab_size, tie_word_embeddings=False, **sizes)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def step_parameters(preset: Preset, seed: int | None = None) -> dict[str, int]:
    """The parameters a token of each training step's runs uses (``seed``: the seed's, counted
    if not given): the seed's, and for ``moe-finetune`` the active parameters of the MoE built
    from the main X-ELM's experts under top-2 routing."""
    seed = seed_parameters(preset) if seed is None else seed
    model = preset.model
    shape = ModelShape(
        parameters=seed, embedding=preset.vocab_size * model["hidden_size"],
        layers=model["num_hidden_layers"], hidden=model["hidden_size"],
        intermediate=model["intermediate_size"], vocab=preset.vocab_size,
        heads=model["num_attention_heads"],
    )  # fmt: skip
    _, active = moe_shapes(shape, preset.main_k, MOE_TOP_K)
    steps = dict.fromkeys(preset.training_runs(), seed)
    return steps | {"moe-finetune": active.parameters}


def recorded_training(record: Path) -> tuple[int, float] | None:
    """(tokens, device seconds) of the training runs a finished step's record holds, if any:
    each run's seconds times the devices it ran on (a seed trained on 8 GPUs at once counts
    8 times its seconds), so that tokens over them is the speed of one run on one device."""
    if not record.is_file():
        return None
    training = read_json_object(record, "step record").get("training")
    if not isinstance(training, dict):
        return None
    seconds = training["device_seconds"] if "device_seconds" in training else training["seconds"]
    return int(training["tokens"]), float(seconds)


def runner_span_tokens(
    preset: Preset, devices: int, parameters: dict[str, int] | None = None
) -> int:
    """The demo's runs after the seed's side by side on ``devices`` GPUs, in the time of how
    many tokens of the seed's size at one run's speed (an MoE fine-tune token counts its
    active parameters over the seed's; ``parameters``: ``step_parameters``, counted if not
    given): as the runner starts them (most tokens first, each once the runs in its ``after``
    ended)."""
    parameters = parameters or step_parameters(preset)
    runs = [{"name": r.name, "tokens": r.tokens, "after": list(r.after),
             "size": r.tokens * parameters[r.step] / parameters["seed"]}
            for r in preset.runs()[1:]]  # fmt: skip
    span = side_by_side_length(runs, devices, lambda run: run["size"])
    assert span is not None  # the preset's runs wait only for runs before them
    return round(span)


def side_by_side_tokens(
    preset: Preset, devices: int, parameters: dict[str, int] | None = None
) -> int:
    """The demo's training on ``devices`` GPUs (``xelm demo --devices``), in the time of how
    many tokens of the seed's size at one run's speed: the seed's run on ``Preset.seed_ranks``
    of them at once (DDP, counted that many times as fast: an upper bound on its speed), then
    the others side by side (``runner_span_tokens``)."""
    seed = preset.runs()[0]
    span = runner_span_tokens(preset, devices, parameters)
    return seed.tokens // preset.seed_ranks(devices) + span


def demo_plan(
    preset: str | Preset, out: str | Path | None = None, devices: int | None = None
) -> DemoPlan:
    """The training runs by step of ``preset`` (its name or itself); with ``out`` (a run
    directory, refused if another preset made it), which are done and the training speed they
    reached; with ``devices``, the time of its training side by side on that many GPUs."""
    preset = get_preset(preset)
    if devices is not None and devices < 1:
        raise UsageError(f"--devices must be at least 1 (GPUs side by side), not {devices}")
    if out is not None:
        out = Path(out)
        check_folder(out, preset)
    seed = seed_parameters(preset)
    parameters = step_parameters(preset, seed)
    steps, tokens, seconds = [], 0.0, 0.0  # tokens of the seed's size
    for name, runs in preset.training_runs().items():
        record = out / "steps" / f"{name}.json" if out is not None else None
        done = record is not None and record.is_file()
        measured = recorded_training(record) if record is not None else None
        if measured is not None:
            tokens += measured[0] * parameters[name] / seed
            seconds += measured[1]
        steps.append(StepPlan(name, len(runs), sum(runs), done,
                              measured[1] if measured else None, parameters[name]))  # fmt: skip
    speed = tokens / seconds if tokens and seconds > 0 else None
    span = side_by_side_tokens(preset, devices, parameters) if devices else None
    ranks = preset.seed_ranks(devices) if devices else None
    return DemoPlan(
        preset.name, seed, preset.batch_tokens, steps, speed, devices, span, ranks
    )  # fmt: skip


def format_plan(plan: DemoPlan) -> str:
    lines = [
        f"preset {plan.preset}: seed of {plan.parameters:,} parameters, batches of "
        f"{plan.batch_tokens:,} tokens; {plan.tokens:,} training tokens in "
        f"{sum(s.runs for s in plan.steps)} runs ({plan.flops:.3g} FLOP)",
        "",
        f"{'step':<14} {'runs':>4} {'tokens':>15}  status",
    ]
    for step in plan.steps:
        status = "to do"
        if step.done:
            status = (
                "done"
                if step.training_seconds is None
                else (f"done in {step.training_seconds:,.0f} s of training")
            )
        lines.append(f"{step.step:<14} {step.runs:>4} {step.tokens:>15,}  {status}")
    lines.append("")
    if plan.tokens_per_second and not plan.remaining_tokens:
        lines.append(
            f"All training done, at {plan.tokens_per_second:,.0f} tokens/s "
            "(the runs' own training seconds)."
        )
    elif plan.remaining_seconds is None:
        lines.append(
            "No finished training in this run directory yet: its time is estimated once the "
            "seed is trained (xelm demo --plan -o RUN)."
        )
    else:
        lines.append(
            f"Remaining training: {plan.remaining_tokens:,} tokens, about "
            f"{duration(plan.remaining_seconds)} at the {plan.tokens_per_second:,.0f} tokens/s "
            "reached so far (training only: evaluation and data steps are not included)."
        )
    if plan.side_by_side_tokens is not None and plan.devices:
        gpus = f"{plan.devices} GPU{'s' if plan.devices > 1 else ''}"
        line = (
            f"On {gpus} (--devices), the seed first (on {plan.seed_ranks} at once, DDP, counted "
            f"{plan.seed_ranks} times as fast), then every other run side by side: the time of "
            f"{plan.side_by_side_tokens:,} tokens of the seed's size at one run's speed instead "
            f"of {plan.seed_sized_tokens:,} run after run"
        )
        if plan.side_by_side_seconds is not None:
            line += (
                f", about {duration(plan.side_by_side_seconds)} at the speed reached so far, "
                "each run on a GPU of its own"
            )
        lines.append(line + ".")
    return "\n".join(lines)
