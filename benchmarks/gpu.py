"""Every GPU measurement of issue 15 in one run, written to benchmarks/gpu.md.

    python benchmarks/gpu.py [--cpu-smoke] [--out benchmarks/gpu.md] [--peak-tflops 989]
                             [--no-compile]

(``benchmarks/gpu.sh`` runs it.) On one H100-class GPU it takes about 6 minutes, plus the
compilation of the two torch.compile loops (not yet timed on a GPU):

1. Training throughput of a Llama-style seed (--hidden/--layers; 0.3B parameters by default):
   `xelm train` next to a bare PyTorch loop with the same optimisations (bf16 autocast, fused
   AdamW, the chunked loss, the host waiting for the device only when a loss is logged) and
   next to `transformers.Trainer`, and both loops again under torch.compile (`xelm train
   --compile`; --no-compile leaves them out); tokens/s after the warm-up steps (the first
   logged interval, where compilation happens; its seconds are reported apart), the ratio to
   the bare loop and the model FLOP utilisation MFU = (6 N + 12 L d s) x tokens/s / peak
   FLOP/s, with N the parameters without the input embedding, L layers, d hidden size, s block
   size (the attention term of PaLM's appendix B), over the GPU's bf16 dense peak
   (--peak-tflops; 989 for an H100 SXM). Where torch.compile cannot run, one line says why.
2. Peak GPU memory of one training step (forward, backward, AdamW) at XGLM's vocabulary of
   256,008 tokens with the chunked loss and with transformers' plain loss, same batch.
3. Ensemble perplexity evaluation with k = 8 experts (benchmarks/ensemble.py): the posterior
   ensemble's wall time / (8 x one expert's) and the language router's / one expert's.

--cpu-training runs only the training comparison on the CPU (30 steps of 8 x 256 tokens, a
5.3M-parameter model); --cpu-smoke runs everything with tiny sizes on the CPU (about 2 minutes
on 2 cores) to check the script, and its numbers say nothing about a GPU. Text comes from
../shared/data (--data).
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
import train_throughput as throughput
from xelm_trainer.lean_loss import use_lean_loss

from xelm_cli.bundle.seed import NAMED_CONFIGS

ROOT = Path(__file__).resolve().parent
XGLM_VOCAB = 256_008
SIZES = {  # name: (training model, steps (the first log_every of them warm-up), block, batch,
    #                256k-vocabulary model, ensemble model)
    "gpu": dict(hidden=1024, layers=20, steps=40, log_every=10, block=1024, batch=8,
                vocab_layers=4, vocab_batch=8, vocab_block=1024, ens_hidden=1024, ens_layers=8,
                docs=48),
    "cpu-smoke": dict(hidden=64, layers=2, steps=4, log_every=2, block=64, batch=4,
                      vocab_layers=1, vocab_batch=2, vocab_block=32, ens_hidden=64, ens_layers=2,
                      docs=4),
    # --cpu-training: the training comparison alone, at a size where a CPU step is compute
    "cpu-training": dict(hidden=256, layers=4, steps=30, log_every=5, block=256, batch=8),
}  # fmt: skip
BARE, XELM = "bare loop, same optimisations", "xelm train"
COMPILED = {BARE: "bare loop + torch.compile", XELM: "xelm train --compile"}


def seed_config(hidden: int, layers: int) -> dict[str, int]:
    return dict(
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4 // 64 * 64 or hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=4096,
    )


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def optimised_bare_loop(
    seed: Path, data: torch.Tensor, args: argparse.Namespace, compiled: bool = False
) -> list[throughput.Interval]:
    """The loop `xelm train` runs, without xelm: same optimisations, nothing else. The seconds
    of each ``log_every`` steps (a logged loss: the one wait for the device)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(seed, dtype=torch.float32).to(args.device)
    use_lean_loss(model)
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.0,
        **({"fused": True} if args.device == "cuda" else {}),
    )  # fmt: skip
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=args.device == "cuda")
    intervals, since = [], 0
    sync(args.device)
    last = time.perf_counter()
    for step in range(args.steps):
        batch = data[step * args.batch_size : (step + 1) * args.batch_size].to(args.device)
        with autocast:
            loss = forward(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        since += 1
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            loss.item()
            now = time.perf_counter()
            intervals.append((since, now - last))
            last, since = now, 0
    return intervals


def mfu_flops_per_token(model: torch.nn.Module, block: int) -> float:
    config = model.config
    embedding = model.get_input_embeddings().weight.numel()
    n = sum(p.numel() for p in model.parameters()) - embedding
    return 6 * n + 12 * config.num_hidden_layers * config.hidden_size * block


def training(work: Path, size: dict, args: argparse.Namespace) -> dict:
    NAMED_CONFIGS["gpu-bench"] = seed_config(size["hidden"], size["layers"])
    seed, shards = throughput.setup(work, args.data, "gpu-bench")
    run = argparse.Namespace(
        steps=size["steps"], block_size=size["block"], batch_size=size["batch"], lr=1e-4,
        device=args.device, log_every=size["log_every"],
    )  # fmt: skip
    data = throughput.blocks(shards, seed, run.block_size, run.steps * run.batch_size)
    loops = {
        BARE: lambda i: optimised_bare_loop(seed, data, run),
        XELM: lambda i: throughput.xelm_train(seed, shards, work / "xelm", run),
        "transformers.Trainer": lambda i: throughput.hf_trainer(seed, data, work / "hf", run),
    }
    skipped = "--no-compile" if args.no_compile else throughput.compile_unavailable(args.device)
    if skipped is None:
        loops |= {
            COMPILED[BARE]: lambda i: optimised_bare_loop(seed, data, run, compiled=True),
            COMPILED[XELM]: lambda i: throughput.xelm_train(
                seed, shards, work / "xelm-compiled", run, ["--compile"]
            ),
        }
    timed = throughput.steady_speeds(loops, 1, warmup=run.log_every)
    record = json.loads((work / "xelm" / "xelm.json").read_text())["training"]
    model = AutoModelForCausalLM.from_pretrained(seed)
    flops = mfu_flops_per_token(model, run.block_size)
    speed = {name: run.batch_size * run.block_size / t["step_seconds"] for name, t in timed.items()}
    rows = {
        name: {
            "tokens_per_s": s,
            "vs_bare_loop": s / speed[BARE],
            "mfu": flops * s / (args.peak_tflops * 1e12),
            "warmup_seconds": timed[name]["warmup_seconds"],
        }
        for name, s in speed.items()
    }
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab": model.config.vocab_size,
        "steps": run.steps, "warmup_steps": run.log_every, "block": run.block_size,
        "batch": run.batch_size, "flops_per_token": flops,
        "implementation": record.get("implementation"), "rows": rows,
        "compile_speedup": {name: speed[COMPILED[name]] / speed[name]
                            for name in COMPILED if COMPILED[name] in speed},
        "compile_skipped": skipped,
    }  # fmt: skip


def step_peak_memory(lean: bool, size: dict, device: str) -> float:
    """Peak memory (GiB) of two training steps at a 256,008-token vocabulary (the second
    runs with AdamW's moments allocated, as every later step does)."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=XGLM_VOCAB, tie_word_embeddings=False,
                         **seed_config(size["hidden"], size["vocab_layers"]))  # fmt: skip
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(device)
    if lean:
        use_lean_loss(model)
    optimizer = torch.optim.AdamW(
        model.parameters(), **({"fused": True} if device == "cuda" else {})
    )
    batch = torch.randint(0, XGLM_VOCAB, (size["vocab_batch"], size["vocab_block"]), device=device)
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda")

    def steps() -> None:
        for _ in range(2):
            with autocast:
                loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        steps()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**30
    from ensemble import PeakMemory

    with PeakMemory(device) as memory:  # growth above the model's weights
        steps()
    return memory.growth / 2**30


def memory(size: dict, args: argparse.Namespace) -> dict:
    results = {}
    for lean in (True, False):  # each in a fresh process: peaks do not mix
        code = (
            "import json, sys; sys.argv = ['gpu.py']; import gpu; "
            f"print(json.dumps(gpu.step_peak_memory({lean}, {size!r}, {args.device!r})))"
        )
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
        results["chunked loss" if lean else "plain loss"] = json.loads(out.splitlines()[-1])
    return {"tokens": size["vocab_batch"] * size["vocab_block"], "gib": results}


def ensembles(size: dict, args: argparse.Namespace) -> dict:
    argv = [sys.executable, str(ROOT / "ensemble.py"), "--ks", "8", "--json", "--repeat", "1",
            "--device", args.device, "--hidden", str(size["ens_hidden"]),
            "--layers", str(size["ens_layers"]), "--docs", str(size["docs"])]  # fmt: skip
    data = os.environ | {"XELM_BENCH_DATA": str(args.data.resolve())}
    out = subprocess.run(argv, check=True, capture_output=True, text=True, env=data).stdout
    return dict(json.loads(out)[0])


def machine(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} ({torch.cuda.device_count()} visible)"
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def report(results: dict, args: argparse.Namespace) -> str:
    t, m, e = results["training"], results["memory"], results["ensemble"]
    smoke = " (CPU smoke run: checks the script, not a GPU measurement)" if args.cpu_smoke else ""
    lines = [
        "# GPU measurements (issue 15)", "",
        f"Machine: {results['machine']}; torch {torch.__version__}; written by "
        f"`benchmarks/gpu.sh` in {results['seconds']:.0f} s{smoke}.", "",
        f"## Training throughput: {t['parameters'] / 1e6:.0f}M-parameter Llama-style seed",
        "", f"{t['steps']} steps of {t['batch']} x {t['block']} tokens, vocabulary "
        f"{t['vocab']:,}; xelm's implementation: `{json.dumps(t['implementation'])}`.",
        f"Tokens/s after the first {t['warmup_steps']} steps (warm-up; torch.compile compiles "
        "there), whose seconds are the last column.",
        f"MFU = (6 N + 12 L d s) x tokens/s / {args.peak_tflops:g} TFLOP/s, "
        f"{t['flops_per_token'] / 1e9:.2f} GFLOP per token.", "",
        "| loop | tokens/s | vs bare loop | MFU | warm-up s |", "|---|---:|---:|---:|---:|",
    ]  # fmt: skip
    for name, row in t["rows"].items():
        lines.append(f"| {name} | {row['tokens_per_s']:,.0f} | {row['vs_bare_loop']:.3f} | "
                     f"{row['mfu']:.1%} | {row['warmup_seconds']:.1f} |")  # fmt: skip
    lines.append("")
    if t["compile_skipped"]:
        lines.append(f"torch.compile loops left out: {t['compile_skipped']}")
    for name, ratio in t["compile_speedup"].items():
        lines.append(f"torch.compile speed-up of {name}: {ratio:.3f}x.")
    gib = m["gib"]
    lines += [
        "", f"## Peak memory of one training step at a {XGLM_VOCAB:,}-token vocabulary", "",
        f"{m['tokens']:,} tokens a step; two steps of forward, backward and AdamW.", "",
        "| loss | peak GiB |", "|---|---:|",
        *(f"| {name} | {value:.2f} |" for name, value in gib.items()),
        f"| ratio chunked / plain | {gib['chunked loss'] / max(gib['plain loss'], 1e-9):.3f} |",
        "", "## Ensemble evaluation, k = 8 (benchmarks/ensemble.py)", "",
        "| measure | value | goal |", "|---|---:|---:|",
        f"| posterior wall time / (8 x one expert) | {e['posterior_time_vs_k_single']:.3f} | "
        "<= 1.1 |",
        f"| language router wall time / one expert | {e['language_time_vs_one_expert']:.3f} | "
        "<= 1.1 |",
        f"| one expert's evaluation | {e['single_seconds']:.2f} s | |", "",
    ]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument(
        "--cpu-training", action="store_true", help="only the training comparison, on the CPU"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "gpu.md")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak")
    parser.add_argument("--data", type=Path, default=throughput.DATA)
    parser.add_argument(
        "--no-compile", action="store_true", help="leave out the torch.compile'd loops"
    )
    args = parser.parse_args()
    args.device = "cpu" if args.cpu_smoke or args.cpu_training else "cuda"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu.py: no CUDA device; use --cpu-smoke to check the script on a CPU")
    if args.cpu_training:
        with tempfile.TemporaryDirectory(prefix="xelm-cpu-bench-") as work:
            result = training(Path(work), SIZES["cpu-training"], args)
        print(json.dumps(result | {"machine": machine("cpu")}, indent=2))
        return
    size = SIZES["cpu-smoke" if args.cpu_smoke else "gpu"]
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="xelm-gpu-bench-"))
    try:
        results = {"machine": machine(args.device), "training": training(work, size, args)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["memory"] = memory(size, args)
    results["ensemble"] = ensembles(size, args)
    results["seconds"] = time.perf_counter() - started
    text = report(results, args)
    args.out.write_text(text + "\n", encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
