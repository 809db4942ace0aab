"""The `gpu` demo preset's whole pipeline, scaled down to run on a CPU: where its time goes
outside training.

    python benchmarks/demo_gpu_preset.py [--data ../shared/data] [--model tiny]
                                         [--fraction 0.01] [--batch-size 2] [--device cpu]
                                         [--out DIR] [--json] [--count]
                                         [--batch-tokens N] [--forward-tokens-per-second R]

Runs `xelm demo`'s steps (run_demo) with the `gpu` preset's data sizes unchanged (2 MB of
text per language, the 32,000-token tokenizer, TF-IDF fitted on 1,000 documents a language,
500 FLORES sentences per language, SIB-200 100 examples, one run) but a smaller model
(--model, one of the named seed configurations, blocks of the preset's 512 tokens) and
--fraction of each training run's tokens in steps of --batch-size blocks, so that it ends in
minutes on a CPU. It prints each step's wall seconds, the seconds its training runs took,
and the rest (tokenizing, clustering, evaluation, merging: what a GPU speeds up only where it
is model forwards). `--fraction 1 --batch-size 16 --model small` is the preset itself, as
`xelm demo --preset gpu` runs it.

--count also counts, by step, the tokens that the steps' scoring forwards take (padded: what
a batch's forward computes; real: its attention mask's ones) and the models loaded for scoring:
the same at any model size, since the tokenizer, text and batching are the preset's. With a
forward speed (--forward-tokens-per-second, a GPU's) it prints what they would take there.
"""

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from xelm_cli.api import run_demo
from xelm_cli.bundle.seed import NAMED_CONFIGS
from xelm_cli.demo.pipeline import Demo
from xelm_cli.demo.presets import PRESETS, Preset
from xelm_cli.ensemble import choices, scoring
from xelm_cli.ensemble.scoring import LoadedModel

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SCALED = ("seed_tokens", "budget", "adapt_tokens", "moe_tokens")
# what --count counts in each step: padded and real tokens of scoring's forwards, the forwards,
# the models loaded for scoring, and the padded tokens of them that a MoE model ran
COUNTED = ("padded", "real", "forwards", "loads", "moe_padded")


def scaled_preset(model: str, fraction: float, batch_size: int) -> Preset:
    gpu = PRESETS["gpu"]
    sizes = {
        **NAMED_CONFIGS[model],
        "max_position_embeddings": gpu.model["max_position_embeddings"],
    }
    tokens = {name: int(getattr(gpu, name) * fraction) for name in SCALED}
    train = {**gpu.train, "batch_size": batch_size}
    return dataclasses.replace(gpu, model=sizes, train=train, **tokens)


class ForwardCounter:
    """Counts scoring forwards by demo step while installed (patches Demo.step and
    LoadedModel's load and states)."""

    def __init__(self) -> None:
        self.step = "-"
        self.by_step: dict[str, dict[str, int]] = {}

    def _add(self, key: str, count: int) -> None:
        counts = self.by_step.setdefault(self.step, dict.fromkeys(COUNTED, 0))
        counts[key] += count

    def install(self) -> None:
        step, load, states = Demo.step, LoadedModel.load.__func__, LoadedModel.states
        swap = LoadedModel.swap
        counter = self

        def counted_step(demo: Demo, name: str, work: Any) -> Any:
            outer, counter.step = counter.step, name
            try:
                return step(demo, name, work)
            finally:
                counter.step = outer

        def counted_load(cls: type, *args: Any, **kwargs: Any) -> Any:
            counter._add("loads", 1)
            return load(cls, *args, **kwargs)

        def counted_swap(model: Any, *args: Any, **kwargs: Any) -> Any:
            counter._add("loads", 1)
            return swap(model, *args, **kwargs)

        def counted_states(model: Any, input_ids: Any, attention_mask: Any, *rest: Any,
                           **kwargs: Any) -> Any:  # fmt: skip
            padded = int(input_ids.numel())
            # a mask after a cache covers the cached positions too: this forward's are its last
            width = input_ids.shape[1]
            real = padded if attention_mask is None else int(attention_mask[:, -width:].sum())
            counter._add("padded", padded)
            counter._add("real", real)
            counter._add("forwards", 1)
            if getattr(model.model.config, "num_local_experts", None):
                counter._add("moe_padded", padded)
            return states(model, input_ids, attention_mask, *rest, **kwargs)

        Demo.step = counted_step  # type: ignore[method-assign]
        LoadedModel.load = classmethod(counted_load)  # type: ignore[method-assign,assignment]
        LoadedModel.states = counted_states  # type: ignore[method-assign]
        LoadedModel.swap = counted_swap  # type: ignore[method-assign]


def print_counts(counts: dict[str, dict[str, int]], per_second: float | None) -> None:
    print(
        f"\n{'step':<16}{'forwards':>9}{'padded tokens':>15}{'real tokens':>13}"
        f"{'of them MoE':>13}{'loads':>7}" + (f"{'est. s':>8}" if per_second else "")
    )
    total = {key: sum(c[key] for c in counts.values()) for key in COUNTED}
    for name, c in [*counts.items(), ("all", total)]:
        print(
            f"{name:<16}{c['forwards']:>9,}{c['padded']:>15,}{c['real']:>13,}"
            f"{c['moe_padded']:>13,}{c['loads']:>7}"
            + (f"{c['padded'] / per_second:>8.1f}" if per_second else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--model", default="tiny", choices=sorted(NAMED_CONFIGS))
    parser.add_argument("--fraction", type=float, default=0.01, help="of each run's tokens")
    parser.add_argument("--batch-size", type=int, default=2, help="blocks of 512 tokens a step")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="run folder (default: a temporary one)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--count", action="store_true", help="count scoring forwards by step")
    parser.add_argument(
        "--batch-tokens",
        type=int,
        help="scoring batches' padded tokens (default: the device's; "
        f"a GPU's is {scoring.CUDA_BATCH_TOKENS:,})",
    )
    parser.add_argument(
        "--forward-tokens-per-second",
        type=float,
        help="with --count: the seconds those tokens take at this speed",
    )
    args = parser.parse_args()
    if args.batch_tokens:  # running text's and choices' budgets alike, as on a GPU
        scoring.DEFAULT_BATCH_TOKENS = scoring.CUDA_BATCH_TOKENS = args.batch_tokens
        choices.CPU_CHOICE_BATCH_TOKENS = args.batch_tokens
    counter = ForwardCounter()
    if args.count:
        counter.install()
    preset = scaled_preset(args.model, args.fraction, args.batch_size)
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch) / "run"
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        results, _ = run_demo(preset, args.data, out, device=args.device)
        wall = time.perf_counter() - started
        load_after = os.getloadavg()[0]
    steps: dict[str, float] = results["steps"]
    training = {name: t["seconds"] for name, t in results.get("training", {}).items()}
    report = {
        "preset": "gpu",
        "model": args.model,
        "fraction": args.fraction,
        "batch_tokens": preset.batch_tokens,
        "training_tokens": sum(t["tokens"] for t in results.get("training", {}).values()),
        "wall_seconds": round(wall, 1),
        "load_average": [load_before, load_after],  # 1-minute, at the start and the end
        "steps": steps,
        "training_seconds": training,
        "outside_training_seconds": round(sum(steps.values()) - sum(training.values()), 1),
    }
    if args.count:
        report["scoring_forwards"] = counter.by_step
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"gpu preset, {args.model} model, {args.fraction:g} of its tokens "
        f"({report['training_tokens']:,}) in steps of {preset.batch_tokens:,}, "
        f"device {args.device}: {wall:.0f} s (load average {load_before:.1f} at the start, "
        f"{load_after:.1f} at the end)"
    )
    print(f"{'step':<16}{'seconds':>9}{'training':>10}{'rest':>8}")
    for name, seconds in steps.items():
        trained = training.get(name, 0.0)
        print(f"{name:<16}{seconds:>9.1f}{trained:>10.1f}{seconds - trained:>8.1f}")
    print(f"{'all':<16}{sum(steps.values()):>9.1f}{sum(training.values()):>10.1f}"
          f"{report['outside_training_seconds']:>8.1f}")  # fmt: skip
    if args.count:
        print_counts(counter.by_step, args.forward_tokens_per_second)


if __name__ == "__main__":
    main()
