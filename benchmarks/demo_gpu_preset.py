"""The `gpu` demo preset's whole pipeline, scaled down to run on a CPU: where its time goes
outside training.

    python benchmarks/demo_gpu_preset.py [--data ../shared/data] [--model tiny]
                                         [--fraction 0.01] [--batch-size 2] [--device cpu]
                                         [--out DIR] [--json]

Runs `xelm demo`'s steps (run_demo) with the `gpu` preset's data sizes unchanged (2 MB of
text per language, the 32,000-token tokenizer, TF-IDF fitted on 1,000 documents a language,
500 FLORES sentences per language, SIB-200 100 examples, one run) but a smaller model
(--model, one of the named seed configurations, blocks of the preset's 512 tokens) and
--fraction of each training run's tokens in steps of --batch-size blocks, so that it ends in
minutes on a CPU. It prints each step's wall seconds, the seconds its training runs took,
and the rest (tokenizing, clustering, evaluation, merging: what a GPU speeds up only where it
is model forwards). `--fraction 1 --batch-size 16 --model small` is the preset itself, as
`xelm demo --preset gpu` runs it.
"""

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from xelm_cli.api import run_demo
from xelm_cli.bundle.seed import NAMED_CONFIGS
from xelm_cli.demo.presets import PRESETS, Preset

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SCALED = ("seed_tokens", "budget", "adapt_tokens", "moe_tokens")


def scaled_preset(model: str, fraction: float, batch_size: int) -> Preset:
    gpu = PRESETS["gpu"]
    sizes = {
        **NAMED_CONFIGS[model],
        "max_position_embeddings": gpu.model["max_position_embeddings"],
    }
    tokens = {name: int(getattr(gpu, name) * fraction) for name in SCALED}
    train = {**gpu.train, "batch_size": batch_size}
    return dataclasses.replace(gpu, model=sizes, train=train, **tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--model", default="tiny", choices=sorted(NAMED_CONFIGS))
    parser.add_argument("--fraction", type=float, default=0.01, help="of each run's tokens")
    parser.add_argument("--batch-size", type=int, default=2, help="blocks of 512 tokens a step")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="run folder (default: a temporary one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
