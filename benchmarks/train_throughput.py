"""Training speed: `xelm train` next to a bare PyTorch loop and `transformers.Trainer`.

    python benchmarks/train_throughput.py [--config tiny|small] [--steps 30] [--block-size 256]
                                          [--batch-size 8] [--device cpu|cuda] [--json]

All three train the same seed bundle on the same blocks (xelm's BlockStream over shards of the
sample validation corpus), with the same batch, optimiser (AdamW 0.9/0.95, eps 1e-6, no weight
decay, clipping 1.0) and number of steps. Each reports the summed wall time of its optimizer
steps (xelm: the training record's ``seconds``; the others: timed around each step), so start-up,
validation and saving are left out of all three; after one warm-up, the best of --repeat
runs of each is kept. On CUDA the model FLOP utilisation is printed
too (6 x parameters x tokens per second over the GPU's peak bf16 FLOP/s, given with --peak-tflops).
"""

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # before transformers is imported

import torch
from transformers import AutoModelForCausalLM

from xelm_cli.api import Bundle, Shards
from xelm_cli.bundle.seed import init_from_config
from xelm_cli.cli import run
from xelm_cli.data.prepare import prepare
from xelm_cli.data.tokenizer import train_bpe_tokenizer
from xelm_cli.training.checkpoints import BlockStream

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LANGS = ["en", "de", "ru", "zh"]


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
        (corpus / source.name).symlink_to(source)
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


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bare_loop(seed: Path, data: torch.Tensor, args: argparse.Namespace) -> float:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(seed).to(args.device).train()
    optimizer = optimizer_for(model, args.lr)
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=args.device == "cuda")
    seconds = 0.0
    for step in range(args.steps):
        batch = data[step * args.batch_size : (step + 1) * args.batch_size].to(args.device)
        sync(args.device)
        started = time.perf_counter()
        with autocast:
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        sync(args.device)
        seconds += time.perf_counter() - started
    return seconds


def hf_trainer(seed: Path, data: torch.Tensor, work: Path, args: argparse.Namespace) -> float:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class StepTimer(TrainerCallback):
        seconds = 0.0

        def on_step_begin(self, *_: object, **__: object) -> None:
            sync(args.device)
            self.started = time.perf_counter()

        def on_step_end(self, *_: object, **__: object) -> None:
            sync(args.device)
            StepTimer.seconds += time.perf_counter() - self.started

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
    StepTimer.seconds = 0.0
    Trainer(model=model, args=training_args, train_dataset=rows, callbacks=[StepTimer()]).train()
    return StepTimer.seconds


def xelm_train(seed: Path, shards: Path, work: Path, args: argparse.Namespace) -> float:
    tokens = args.steps * args.batch_size * args.block_size
    argv = ["train", str(seed), "--data", str(shards), "--tokens", str(tokens), "-o",
            str(work), "--block-size", str(args.block_size), "--batch-size",
            str(args.batch_size), "--lr", str(args.lr), "--device", args.device,
            "--checkpoint-every", str(10**9)]  # fmt: skip
    if run(argv) != 0:
        raise SystemExit("xelm train failed")
    record = Bundle.read(work).manifest.training
    assert record is not None and record["steps"] == args.steps
    return float(record["seconds"])


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
    parser.add_argument("--repeat", type=int, default=2, help="best of this many runs each")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="xelm-train-bench-"))
    try:
        seed, shards = setup(work, args.data, args.config)
        data = blocks(shards, seed, args.block_size, args.steps * args.batch_size)
        bare_loop(seed, data, argparse.Namespace(**{**vars(args), "steps": 2}))  # warm-up
        contenders = {
            "bare PyTorch loop": lambda i: bare_loop(seed, data, args),
            "transformers.Trainer": lambda i: hf_trainer(seed, data, work / f"hf{i}", args),
            "xelm train": lambda i: xelm_train(seed, shards, work / f"xelm{i}", args),
        }
        seconds = {name: min(f(i) for i in range(args.repeat)) for name, f in contenders.items()}
        parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(seed).parameters())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tokens = args.steps * args.batch_size * args.block_size
    bare = tokens / seconds["bare PyTorch loop"]
    result = {
        "config": args.config, "parameters": parameters, "device": args.device,
        "steps": args.steps, "tokens_per_step": args.batch_size * args.block_size,
        "tokens_per_s": {name: round(tokens / s) for name, s in seconds.items()},
        "ratio_to_bare_loop": {name: round(tokens / s / bare, 3) for name, s in seconds.items()},
    }  # fmt: skip
    if args.device == "cuda":
        result["mfu"] = {name: round(6 * parameters * tokens / s / (args.peak_tflops * 1e12), 4)
                         for name, s in seconds.items()}  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.config} model, {parameters:,} parameters, {args.device}, {args.steps} steps of "
          f"{result['tokens_per_step']:,} tokens")  # fmt: skip
    for name in seconds:
        line = f"{name:22s} {result['tokens_per_s'][name]:>10,} tokens/s  "
        line += f"{result['ratio_to_bare_loop'][name]:.3f}x the bare loop"
        if "mfu" in result:
            line += f"  MFU {result['mfu'][name]:.1%}"
        print(line)


if __name__ == "__main__":
    main()
