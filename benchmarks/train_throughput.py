"""Training speed: `xelm train` next to a bare PyTorch loop and `transformers.Trainer`.

    python benchmarks/train_throughput.py [--config tiny|small] [--steps 30] [--block-size 256]
                                          [--batch-size 8] [--device cpu|cuda] [--compile]
                                          [--warmup-steps 5] [--repeat 2] [--json]

All three train the same seed bundle on the same blocks (xelm's BlockStream over shards of the
sample validation corpus), with the same batch, optimiser (AdamW 0.9/0.95, eps 1e-6, no weight
decay, clipping 1.0) and number of steps, each waiting for its loss on every step. Tokens/s
comes from the median step time after the first --warmup-steps of each run (xelm: from its
metrics log, one line a step; the others: timed around each step) over --repeat runs, which
alternate: start-up, warm-up, validation, saving and a shared machine's load spikes are left
out of all of them. --compile adds `xelm train --compile` and the bare loop under
`torch.compile` (inductor) side by side, with each compiled loop's speed-up over its eager twin
and the seconds its warm-up steps took in its first run (compilation happens there; a later
compiled loop in the same process may reuse the compiled code). Where torch.compile cannot run
(inductor needs a C++ compiler on the CPU) one line says why and the other loops still run. On
CUDA the model FLOP utilisation is printed too (6 x parameters x tokens per second over the
GPU's peak bf16 FLOP/s, given with --peak-tflops).
"""

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # before transformers is imported

import torch
from profiling import sync
from transformers import AutoModelForCausalLM

from xelm_cli.api import Bundle, Shards
from xelm_cli.bundle.seed import init_from_config
from xelm_cli.cli import run
from xelm_cli.common.errors import exception_line
from xelm_cli.data.prepare import prepare
from xelm_cli.data.tokenizer import train_bpe_tokenizer
from xelm_cli.plugin.contracts import checkpoint_dir
from xelm_cli.training.checkpoints import BlockStream

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LANGS = ["en", "de", "ru", "zh"]
Interval = tuple[int, float]  # (optimizer steps, their wall seconds)


def setup(work: Path, data: Path, config: str) -> tuple[Path, Path]:
    texts = [line for lang in LANGS for line in (data / "eval" / "udhr" / f"{lang}.txt")
             .read_text().splitlines() if line.strip()]  # fmt: skip
    tokenizer = train_bpe_tokenizer(texts, work / "tok", vocab_size=4000)
    seed = init_from_config(config, tokenizer, work / "seed", languages=LANGS).path
    shards = work / "shards"
    sources = [data / "corpus" / "valid" / f"{lang}.jsonl.zst" for lang in LANGS]
    corpus = work / "corpus"
    corpus.mkdir()
    for source in sources:
        (corpus / source.name).symlink_to(source.resolve())  # --data may be relative
    prepare(corpus, seed, shards)
    return seed, shards


def blocks(shards: Path, seed: Path, block_size: int, n_blocks: int) -> torch.Tensor:
    tokenizer = Bundle.open(seed).load_tokenizer()
    stream = BlockStream(Shards.open(shards), LANGS, block_size,
                         bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id)  # fmt: skip
    return torch.from_numpy(stream.blocks(0, n_blocks))


def optimizer_for(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-6,
                             weight_decay=0.0)  # fmt: skip


def bare_loop(
    seed: Path, data: torch.Tensor, args: argparse.Namespace, compiled: bool = False
) -> list[Interval]:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(seed).to(args.device).train()
    forward = torch.compile(model) if compiled else model
    optimizer = optimizer_for(model, args.lr)
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=args.device == "cuda")
    steps = []
    for step in range(args.steps):
        batch = data[step * args.batch_size : (step + 1) * args.batch_size].to(args.device)
        sync(args.device)
        started = time.perf_counter()
        with autocast:
            loss = forward(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        sync(args.device)
        steps.append((1, time.perf_counter() - started))
    return steps


def hf_trainer(
    seed: Path, data: torch.Tensor, work: Path, args: argparse.Namespace
) -> list[Interval]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[Interval] = []

        def on_step_begin(self, *_: object, **__: object) -> None:
            sync(args.device)
            self.started = time.perf_counter()

        def on_step_end(self, *_: object, **__: object) -> None:
            sync(args.device)
            self.steps.append((1, time.perf_counter() - self.started))

    rows = [{"input_ids": row, "labels": row} for row in data[: args.steps * args.batch_size]]
    model = AutoModelForCausalLM.from_pretrained(seed)
    training_args = TrainingArguments(
        output_dir=str(work / "hf"), per_device_train_batch_size=args.batch_size,
        max_steps=args.steps, learning_rate=args.lr, adam_beta1=0.9, adam_beta2=0.95,
        adam_epsilon=1e-6, weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="linear",
        logging_strategy="no", save_strategy="no", report_to=[], seed=0,
        use_cpu=args.device == "cpu", bf16=args.device == "cuda", dataloader_num_workers=0,
        disable_tqdm=True,
    )  # fmt: skip
    timer = StepTimer()
    Trainer(model=model, args=training_args, train_dataset=rows, callbacks=[timer]).train()
    return timer.steps


def xelm_train(
    seed: Path, shards: Path, work: Path, args: argparse.Namespace, extra: Sequence[str] = ()
) -> list[Interval]:
    """`xelm train` logging every ``args.log_every`` steps, ``extra``: more flags; the seconds
    of each logged interval."""
    tokens = args.steps * args.batch_size * args.block_size
    argv = ["train", str(seed), "--data", str(shards), "--tokens", str(tokens), "-o",
            str(work), "--block-size", str(args.block_size), "--batch-size",
            str(args.batch_size), "--lr", str(args.lr), "--device", args.device,
            "--checkpoint-every", str(10**9), "--log-every", str(args.log_every),
            *extra]  # fmt: skip
    status = run(argv)
    if status != 0:  # an exception, not SystemExit: a caller timing several loops goes on
        raise RuntimeError(f"xelm train failed with exit status {status} (its error is above)")
    record = Bundle.read(work).manifest.training
    assert record is not None and record["steps"] == args.steps
    return logged_intervals(work)


def logged_intervals(work: Path) -> list[Interval]:
    """The steps between the logged lines of a finished `xelm train` run and their seconds
    (its metrics log: tokens/s over each interval)."""
    lines = (checkpoint_dir(work) / "metrics.jsonl").read_text().splitlines()
    rows = [row for row in map(json.loads, lines) if "tokens_per_s" in row]
    tokens_per_step = rows[0]["tokens"] / rows[0]["step"]
    intervals, previous = [], 0
    for row in rows:
        steps, previous = row["step"] - previous, row["step"]
        intervals.append((steps, steps * tokens_per_step / row["tokens_per_s"]))
    return intervals


def split_warmup(intervals: list[Interval], warmup: int) -> tuple[float, list[float]]:
    """The seconds of the intervals that end within the first ``warmup`` steps, and the
    seconds of every later step (an interval's mean for each of its steps)."""
    done, warmup_seconds, steps = 0, 0.0, []
    for n, seconds in intervals:
        done += n
        if done <= warmup:
            warmup_seconds += seconds
        else:
            steps += [seconds / n] * n
    return warmup_seconds, steps


def compile_unavailable(device: str) -> str | None:
    """Why torch.compile cannot run on ``device`` here (one line), or None when it can."""
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(4, device=device))
    except Exception as exc:  # inductor without a C++ compiler, Triton, ...: said, not raised
        return exception_line(exc, with_type=True)
    return None


def steady_speeds(
    contenders: dict[str, Callable[[int], list[Interval]]], repeat: int, warmup: int
) -> dict[str, dict[str, float]]:
    """Each contender's median seconds per step after ``warmup`` steps, over ``repeat``
    alternating runs (a shared machine's load spikes hit single steps of every loop; the
    median leaves them out), and its first run's warm-up seconds."""
    warmups: dict[str, list[float]] = {name: [] for name in contenders}
    steps: dict[str, list[float]] = {name: [] for name in contenders}
    for i in range(repeat):
        for name, contender in contenders.items():
            warmup_seconds, step_seconds = split_warmup(contender(i), warmup)
            warmups[name].append(warmup_seconds)
            steps[name] += step_seconds
    return {
        name: {"step_seconds": statistics.median(steps[name]), "warmup_seconds": warmups[name][0]}
        for name in contenders
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU bf16 peak (H100 SXM)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each loop")
    parser.add_argument("--warmup-steps", type=int, default=5, help="left out of tokens/s")
    parser.add_argument("--compile", action="store_true", help="also the torch.compile'd loops")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not 0 <= args.warmup_steps < args.steps:
        parser.error("--warmup-steps must leave at least one timed step")
    args.log_every = 1  # xelm waits for its loss on every step, as the other loops do

    work = Path(tempfile.mkdtemp(prefix="xelm-train-bench-"))
    skipped = compile_unavailable(args.device) if args.compile else None
    try:
        seed, shards = setup(work, args.data, args.config)
        data = blocks(shards, seed, args.block_size, args.steps * args.batch_size)
        contenders: dict[str, Callable[[int], list[Interval]]] = {
            "bare PyTorch loop": lambda i: bare_loop(seed, data, args),
            "transformers.Trainer": lambda i: hf_trainer(seed, data, work / f"hf{i}", args),
            "xelm train": lambda i: xelm_train(seed, shards, work / f"xelm{i}", args),
        }
        if args.compile and skipped is None:
            contenders |= {
                "bare loop + torch.compile": lambda i: bare_loop(seed, data, args, compiled=True),
                "xelm train --compile": lambda i: xelm_train(
                    seed, shards, work / f"xelm-compiled{i}", args, ["--compile"]
                ),
            }
        results = steady_speeds(contenders, args.repeat, args.warmup_steps)
        parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(seed).parameters())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = summary(results, parameters, args, skipped)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.config} model, {parameters:,} parameters, {args.device}, {args.steps} steps of "
          f"{result['tokens_per_step']:,} tokens, tokens/s after {args.warmup_steps} warm-up "
          "steps")  # fmt: skip
    for name, speed in result["tokens_per_s"].items():
        line = f"{name:26s} {speed:>10,} tokens/s  "
        line += f"{result['ratio_to_bare_loop'][name]:.3f}x the bare loop  "
        line += f"warm-up {result['warmup_seconds'][name]:.1f} s"
        if "mfu" in result:
            line += f"  MFU {result['mfu'][name]:.1%}"
        print(line)
    for name, ratio in result.get("compile_speedup", {}).items():
        print(f"torch.compile speed-up, {name}: {ratio:.3f}x")
    if skipped:
        print(f"torch.compile loops skipped: it cannot run here ({skipped})")


def summary(
    results: dict[str, dict[str, float]],
    parameters: int,
    args: argparse.Namespace,
    compile_skipped: str | None,
) -> dict:
    tokens_per_step = args.batch_size * args.block_size
    speed = {name: tokens_per_step / r["step_seconds"] for name, r in results.items()}
    bare = speed["bare PyTorch loop"]
    result = {
        "config": args.config, "parameters": parameters, "device": args.device,
        "steps": args.steps, "warmup_steps": args.warmup_steps, "tokens_per_step": tokens_per_step,
        "tokens_per_s": {name: round(s) for name, s in speed.items()},
        "ratio_to_bare_loop": {name: round(s / bare, 3) for name, s in speed.items()},
        "warmup_seconds": {name: round(r["warmup_seconds"], 2) for name, r in results.items()},
    }  # fmt: skip
    twins = {"bare loop": ("bare loop + torch.compile", "bare PyTorch loop"),
             "xelm train": ("xelm train --compile", "xelm train")}  # fmt: skip
    result["compile_speedup"] = {
        name: round(speed[compiled] / speed[eager], 3)
        for name, (compiled, eager) in twins.items()
        if compiled in speed
    }
    if args.compile:
        result["compile_skipped"] = compile_skipped
    if args.device == "cuda":
        result["mfu"] = {name: round(6 * parameters * s / (args.peak_tflops * 1e12), 4)
                         for name, s in speed.items()}  # fmt: skip
    return result


if __name__ == "__main__":
    main()
