"""Every GPU measurement of issue 15 in one run, written to benchmarks/gpu.md.

    python benchmarks/gpu.py [--cpu-smoke] [--out benchmarks/gpu.md] [--peak-tflops 989]
                             [--no-compile] [--budget 480] [--demo-data DIR]
                             [--sections training,preset,memory,attention,ensemble,...]

(``benchmarks/gpu.sh`` runs it.) On one NVIDIA H200 (2026-12-04, benchmarks/gpu.md) the
default sections took 399 s: training 29, preset 13, memory 41, ensemble 155, choices 75 and
compile 86 (what --budget left it).

1. Training throughput of a Llama-style seed (SIZES; 0.84B parameters, hidden 2048):
   `xelm train` next to a bare PyTorch loop with the same optimisations (bf16 autocast, fused
   AdamW, the chunked loss, the host waiting for the device only when a loss is logged) and
   next to `transformers.Trainer`; tokens/s after the warm-up steps (the first logged
   interval; its seconds are reported apart), the ratio to the bare loop and the model FLOP
   utilisation MFU = (6 N + 12 L d s) x tokens/s / peak FLOP/s, with N the parameters without
   the input embedding, L layers, d hidden size, s block size (the attention term of PaLM's
   appendix B), over the GPU's bf16 dense peak (--peak-tflops; 989 for an H100 SXM). Each
   loop is timed on its own: one that fails is named in its row and the others still run.
2. The `gpu` demo preset (``PRESETS["gpu"]``, read when the script runs): `xelm train` of a
   seed of its model sizes, with a BPE of its vocabulary size trained by xelm on the text
   under --data (a vocabulary that falls short is reported, not hidden), at its block, batch
   and other train options (logging every 10 steps, no checkpoints), 40 steps; tokens/s after
   the first 10, and `Preset.training_tokens()` / tokens/s, the seconds all the demo's
   training runs would take, next to the demo's 8-minute goal (which also holds its data
   preparation and evaluation).
3. Peak GPU memory of one training step (forward, backward, AdamW) at XGLM's vocabulary of
   256,008 tokens with the chunked loss and with transformers' plain loss, same batch, each
   next to `xelm plan`'s estimate for the same model, batch, block and loss
   (``training_memory``) and their ratio.
4. Scoring's attention backend (benchmarks/attention_shapes.py): `score_sequences` over about
   1M tokens of random documents in batches of the device's budget (nearly every batch a shape
   of its own), twice, and 200 single-token forwards onto a growing cache, by the ensemble's
   model, with xelm's backends (all but cuDNN's) and with PyTorch's own order (cuDNN first on
   Hopper with cuDNN 9.15.1 or newer, a plan built for every new shape), each in a fresh
   process; the torch, CUDA and cuDNN versions and PyTorch's backend order.
5. Ensemble perplexity evaluation with k = 8 experts (benchmarks/ensemble.py): the posterior
   ensemble's wall time / (8 x one expert's) and the language router's / one expert's, on
   all 1,012 FLORES-200 devtest sentences of each of 16 languages (1.06M tokens). The timed
   part loads the experts too: on the CPU one 109M-parameter expert loaded in 0.5 s (1.0 s
   swapped in, files checked), while the host's share of evaluating took 0.13-0.25 ms a
   sentence and expert, so on a GPU (~0.6 s of FLOPs a pass) evaluation should be 80-90% of
   one expert's timed seconds and about 70% of the posterior's (at 48 sentences, 20-30%).
   Then one expert's evaluation and the router's once more under torch.profiler
   (benchmarks/profiling.py): where their time goes, Python, operators or waits.
6. Multiple-choice scoring (benchmarks/icl_throughput.py): 400 SIB-200-shaped items of 7
   choices on a 25M-parameter Llama in bf16, zero-shot and few-shot contexts, one item per
   forward pair against items batched within the device's token budget (seconds on a GPU);
   the batched few-shot run again under torch.profiler (the H200 took 90 ms a batch).
7. Scoring's logit chunk (benchmarks/logit_chunks.py): `score_sequences` at XGLM's vocabulary
   of 256,008 tokens with the GPU's chunk of 2^26 logits (262 positions) against chunks of 16
   positions (2^22 logits: 1,024 chunks of about ten operators each a batch), 128 and 1,024,
   alternating.
8. The bare loop and `xelm train` of 1. again under torch.compile (`xelm train --compile`),
   last and in a process of their own (compiling is the slowest and least tried part): not
   begun when under a minute of --budget is left, stopped when it runs out, and a loop it did
   not finish is named as failed; --no-compile leaves it out, and where torch.compile cannot
   run one line says why.
9. Only when named (--sections demo; it needs 8 minutes of its own): `xelm demo --preset gpu`
   from start to end in a process of its own, on --demo-data (default: --data's demo/, which
   benchmarks/gpu_demo_data.py writes and gpu-prepare.sh puts in gpu-data/demo), its wall
   seconds against the 8-minute goal and each step's seconds (--cpu-smoke: the smoke preset).
   Its progress goes to the log as it comes, and it is stopped when --budget runs out (pass
   more than 480 to see a slow demo end), keeping the steps it finished and the one it was in.
10. Only when named (--sections cuda-tests): the test files with tests that need
   CUDA (CUDA_TESTS; CI's CPU skips those) under pytest, on --data; the summary and each
   failed test in gpu.md (a failed test makes the exit status non-zero).

The sections run in turn (--sections picks some, e.g. to rerun one); one that fails is
reported in gpu.md with its error and the others still run, and gpu.md and gpu.json are
rewritten after each section, so a run stopped by a time limit keeps what it measured. The
exit status is non-zero when a section or a loop failed. XELM_DEBUG is set (a failed `xelm
train` raises, its traceback goes to the log); XELM_GPU_FAIL="training: xelm train;..." makes
the named loops fail, for the tests.

--cpu-training runs only the training comparison and its compiled loops on the CPU (30 steps
of 8 x 256 tokens, a 5.3M-parameter model); --cpu-smoke runs everything with tiny sizes on
the CPU (about 2 minutes on 2 cores) to check the script, and its numbers say nothing about a
GPU. Text comes from ../shared/data (--data).
"""

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
import profiling
import train_throughput as throughput
import workers
from xelm_trainer.lean_loss import use_lean_loss

from xelm_cli.bundle.seed import NAMED_CONFIGS, init_from_config
from xelm_cli.data.corpus import iter_documents
from xelm_cli.data.prepare import prepare
from xelm_cli.data.tokenizer import train_bpe_tokenizer
from xelm_cli.demo.presets import PRESETS, Preset
from xelm_cli.training.estimates import ModelShape, training_memory

ROOT = Path(__file__).resolve().parent
XGLM_VOCAB = 256_008
DATA_NEEDED = ("eval/udhr", "eval/flores200-devtest", "corpus/valid")  # under --data
DEMO_GOAL_SECONDS = 8 * 60  # `xelm demo --preset gpu` on one H100-class GPU, all of it
DEMO_STEP_BEGUN = re.compile(r"\[\s*\d+\] (?P<step>\S+) \.\.\.$")  # the demo's progress lines
DEMO_STEP_ENDED = re.compile(r"\[\s*\d+\] (?P<step>\S+): (?P<seconds>\d+\.\d) s")
SIZES = {  # name: (training model, steps (the first log_every of them warm-up), block, batch,
    #                256k-vocabulary model, ensemble model; cpu-smoke: the gpu preset's
    #                stand-in, timed at its block and batch)
    # the H200 run of benchmarks/gpu.md trained hidden 1024 x 20 layers (265M): 20.4% MFU eager,
    # 35.5% compiled, under the 40%; hidden 2048 x 16 layers (0.84B) is next to measure
    "gpu": dict(hidden=2048, layers=16, steps=40, log_every=10, block=1024, batch=8,
                vocab_layers=4, vocab_batch=8, vocab_block=1024, ens_hidden=1024, ens_layers=8,
                attention_tokens=1_000_000, attention_decode=200,
                docs=1012, icl_model="llama-25m", icl_requests=400, chunk_vocab=256_008,
                chunk_hidden=1024, chunk_tokens=65_536, chunk_repeat=3),
    "cpu-smoke": dict(hidden=64, layers=2, steps=4, log_every=2, block=64, batch=4,
                      vocab_layers=1, vocab_batch=2, vocab_block=32, ens_hidden=64, ens_layers=2,
                      docs=4, preset_hidden=64, preset_layers=2, preset_vocab=2000,
                      icl_model="demo-small", icl_requests=6, demo_preset="smoke",
                      chunk_vocab=2000, chunk_hidden=64, chunk_tokens=2048, chunk_repeat=1,
                      attention_tokens=4000, attention_decode=5),
    # --cpu-training: the training comparison alone, at a size where a CPU step is compute
    "cpu-training": dict(hidden=256, layers=4, steps=30, log_every=5, block=256, batch=8),
}  # fmt: skip
BARE, XELM = "bare loop, same optimisations", "xelm train"
COMPILED = {BARE: "bare loop + torch.compile", XELM: "xelm train --compile"}
BUDGET_SECONDS = 480  # the whole run (--budget); the compile section gets what is left
COMPILE_MIN_SECONDS = 60  # not begun with less left


def seed_config(hidden: int, layers: int) -> dict[str, Any]:
    return dict(
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4 // 64 * 64 or hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=4096,
    )


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
    profiling.sync(args.device)
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


def meta_model(config: PretrainedConfig) -> PreTrainedModel:
    """The model of ``config`` without its weights' memory (their shapes only)."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def model_shape(model: PreTrainedModel) -> ModelShape:
    """What `xelm plan` reads from a bundle, read from the model itself."""
    config = model.config
    return ModelShape(
        parameters=sum(p.numel() for p in model.parameters()),
        embedding=sum(p.numel() for p in model.get_input_embeddings().parameters()),
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        intermediate=config.intermediate_size,
        vocab=config.vocab_size,
        heads=config.num_attention_heads,
        tied=getattr(model.get_output_embeddings(), "weight", None)
        is model.get_input_embeddings().weight,
    )


def mfu_flops_per_token(model: PreTrainedModel, block: int) -> float:
    shape = model_shape(model)
    return 6 * (shape.parameters - shape.embedding) + 12 * shape.layers * shape.hidden * block


def training_setup(
    work: Path, size: dict, args: argparse.Namespace
) -> tuple[Path, Path, torch.Tensor, argparse.Namespace]:
    """The seed, shards, blocks and run options the training loops share."""
    NAMED_CONFIGS["gpu-bench"] = seed_config(size["hidden"], size["layers"])
    seed, shards = throughput.setup(work, args.data, "gpu-bench")
    run = argparse.Namespace(
        steps=size["steps"], block_size=size["block"], batch_size=size["batch"], lr=1e-4,
        device=args.device, log_every=size["log_every"],
    )  # fmt: skip
    data = throughput.blocks(shards, seed, run.block_size, run.steps * run.batch_size)
    return seed, shards, data, run


def time_loops(
    section: str, loops: dict[str, Callable[[int], list[throughput.Interval]]], warmup: int
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Each loop timed on its own (steady_speeds); one that fails is recorded as one line and
    the others still run. XELM_GPU_FAIL ("section: loop;..."): loops made to fail, for the
    tests."""
    forced = {name.strip() for name in os.environ.get("XELM_GPU_FAIL", "").split(";")}
    timed: dict[str, dict[str, float]] = {}
    failed: dict[str, str] = {}
    for name, loop in loops.items():
        try:
            if f"{section}: {name}" in forced:
                raise RuntimeError(f"forced to fail by XELM_GPU_FAIL={os.environ['XELM_GPU_FAIL']}")
            timed |= throughput.steady_speeds({name: loop}, 1, warmup=warmup)
        except (Exception, SystemExit) as exc:  # one failed loop must not cost the others
            traceback.print_exc()
            failed[name] = failure(exc)
    return timed, failed


def loop_rows(
    timed: dict[str, dict[str, float]],
    tokens_per_step: int,
    flops: float,
    bare: float | None,
    peak_tflops: float,
) -> dict[str, dict[str, float | None]]:
    """Tokens/s, the ratio to the bare loop's ``bare`` tokens/s (None when it has none), MFU
    and warm-up seconds of each timed loop."""
    rows: dict[str, dict[str, float | None]] = {}
    for name, t in timed.items():
        speed = tokens_per_step / t["step_seconds"]
        rows[name] = {
            "tokens_per_s": speed,
            "vs_bare_loop": speed / bare if bare else None,
            "mfu": flops * speed / (peak_tflops * 1e12),
            "warmup_seconds": t["warmup_seconds"],
        }
    return rows


def training(work: Path, size: dict, args: argparse.Namespace, done: dict) -> dict:
    """`xelm train`, the bare loop and transformers.Trainer, eager (the compiled loops are the
    compile section's)."""
    seed, shards, data, run = training_setup(work, size, args)
    loops = {
        BARE: lambda i: optimised_bare_loop(seed, data, run),
        XELM: lambda i: throughput.xelm_train(seed, shards, work / "xelm", run),
        "transformers.Trainer": lambda i: throughput.hf_trainer(seed, data, work / "hf", run),
    }
    timed, failed = time_loops("training", loops, run.log_every)
    model = meta_model(AutoConfig.from_pretrained(seed))
    flops = mfu_flops_per_token(model, run.block_size)
    tokens_per_step = run.batch_size * run.block_size
    bare = tokens_per_step / timed[BARE]["step_seconds"] if BARE in timed else None
    xelm_record = work / "xelm" / "xelm.json"
    implementation = (
        json.loads(xelm_record.read_text())["training"].get("implementation")
        if XELM in timed
        else None
    )
    return {
        "parameters": model_shape(model).parameters, "vocab": model.config.vocab_size,
        "steps": run.steps, "warmup_steps": run.log_every, "block": run.block_size,
        "batch": run.batch_size, "flops_per_token": flops, "implementation": implementation,
        "rows": loop_rows(timed, tokens_per_step, flops, bare, args.peak_tflops),
        "failed": failed,
    }  # fmt: skip


def compiled_training(work: str, size: dict, data: str, device: str) -> None:
    """(The compile section's own process.) The torch.compile'd twins of the bare loop and of
    `xelm train`, timed as the training section's loops; what is measured goes to
    ``work``/measured.json after each loop, so a crash or the time budget costs only what
    comes after it."""
    out = Path(work) / "measured.json"
    unavailable = throughput.compile_unavailable(device)
    if unavailable:
        out.write_text(json.dumps({"skipped": f"torch.compile cannot run here: {unavailable}"}))
        return
    args = argparse.Namespace(data=Path(data), device=device)
    seed, shards, blocks, run = training_setup(Path(work) / "run", size, args)
    loops = {
        COMPILED[BARE]: lambda i: optimised_bare_loop(seed, blocks, run, compiled=True),
        COMPILED[XELM]: lambda i: throughput.xelm_train(
            seed, shards, Path(work) / "xelm-compiled", run, ["--compile"]
        ),
    }
    model = meta_model(AutoConfig.from_pretrained(seed))
    measured: dict[str, Any] = {
        "flops_per_token": mfu_flops_per_token(model, run.block_size), "timed": {}, "failed": {},
    }  # fmt: skip
    for name, loop in loops.items():
        timed, failed = time_loops("compile", {name: loop}, run.log_every)
        measured["timed"] |= timed
        measured["failed"] |= failed
        out.write_text(json.dumps(measured))


def stream_within(
    command: list[str],
    seconds: float,
    *,
    stdout: IO[str] | None = None,
    progress: Callable[[str], None] | None = None,
    cwd: Path | None = None,
) -> int | None:
    """Runs ``command`` in a session of its own (its own child processes stop with it), its
    stdout into ``stdout`` (default: ours), each line of its stderr to ours (the log, as it
    comes) and, stripped, to ``progress``; stopped after ``seconds``: None then, else its exit
    status."""
    stopped = threading.Event()
    with subprocess.Popen(
        command, stdout=stdout, stderr=subprocess.PIPE, text=True, cwd=cwd, start_new_session=True
    ) as child:

        def stop() -> None:
            stopped.set()
            with suppress(ProcessLookupError):  # it ended just now
                os.killpg(child.pid, signal.SIGKILL)

        killer = threading.Timer(max(seconds, 0), stop)
        killer.start()
        try:
            for line in child.stderr or ():
                sys.stderr.write(line)
                sys.stderr.flush()
                if progress is not None:
                    progress(line.strip())
            status = child.wait()
        finally:
            killer.cancel()
    return None if stopped.is_set() and status != 0 else status


def run_within(code: str, seconds: float) -> str | None:
    """Runs Python ``code`` in a process of its own (in a session of its own, so that the
    compiler's worker processes stop with it), for at most ``seconds``: None when it ended
    well, else why not, in one line."""
    status = stream_within([sys.executable, "-c", code], seconds, cwd=ROOT)
    if status is None:
        return f"stopped when the time budget ran out ({seconds:.0f} s were left for it)"
    return None if status == 0 else f"its process ended with status {status}"


def compiled(work: Path, size: dict, args: argparse.Namespace, done: dict) -> dict:
    """The compiled loops, last and in a process of their own (compiling is the riskiest and
    slowest part): stopped when --budget seconds since the start have passed, and not begun
    with less than COMPILE_MIN_SECONDS of them left."""
    if args.no_compile:
        return {"skipped": "--no-compile"}
    left = args.budget - (time.perf_counter() - args.started)
    if left < COMPILE_MIN_SECONDS:
        spent = f"{max(left, 0):.0f} s of the {args.budget:g}-second budget (--budget) were left"
        return {"skipped": f"{spent}, under the {COMPILE_MIN_SECONDS} s it needs"}
    code = (
        "import sys; sys.argv = ['gpu.py']; import gpu; gpu.compiled_training("
        f"{str(work)!r}, {size!r}, {str(args.data.resolve())!r}, {args.device!r})"
    )
    stopped = run_within(code, left)
    out = work / "measured.json"
    measured = json.loads(out.read_text()) if out.exists() else {"timed": {}, "failed": {}}
    if "skipped" in measured:
        return measured
    failed = measured["failed"] | {name: stopped for name in COMPILED.values()
                                   if stopped and name not in measured["timed"]}  # fmt: skip
    eager = done.get("training", {}).get("rows", {})
    bare = eager.get(BARE, {}).get("tokens_per_s")
    rows = loop_rows(measured["timed"], size["batch"] * size["block"],
                     measured.get("flops_per_token", 0.0), bare, args.peak_tflops)  # fmt: skip
    return {
        "rows": rows, "failed": failed, "skipped": None,
        "speedup": {name: rows[twin]["tokens_per_s"] / eager[name]["tokens_per_s"]
                    for name, twin in COMPILED.items() if twin in rows and name in eager},
    }  # fmt: skip


def preset_shape(preset: Preset, size: dict) -> tuple[dict[str, int], int, int, int]:
    """The model sizes, vocabulary, block and batch that stand for ``preset``: its own, or in
    --cpu-smoke a tiny stand-in at the smoke sizes."""
    if "preset_hidden" in size:
        model = seed_config(size["preset_hidden"], size["preset_layers"])
        return model, size["preset_vocab"], size["block"], size["batch"]
    train = preset.train
    return dict(preset.model), preset.vocab_size, train["block_size"], train["batch_size"]


def preset_texts(data: Path) -> list[str]:
    """Every line of UDHR and FLORES-200 devtest and every document of corpus/valid (4.8 MB in
    20 languages: a BPE reaches 32,000 tokens on it)."""
    lines = [line for name in ("udhr", "flores200-devtest")
             for path in sorted((data / "eval" / name).glob("*.txt"))
             for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]  # fmt: skip
    return lines + [doc.text for doc in iter_documents(data / "corpus" / "valid")]


def preset_seed(work: Path, data: Path, model: dict[str, int], vocab: int) -> tuple[Path, Path]:
    """A seed of ``model``'s sizes with a BPE of ``vocab`` tokens trained on preset_texts (the
    seed's vocabulary is what the BPE reached), and corpus/valid's shards for it."""
    tokenizer = train_bpe_tokenizer(preset_texts(data), work / "tok", vocab_size=vocab)
    valid = data / "corpus" / "valid"
    languages = sorted(path.name.split(".")[0] for path in valid.glob("*.jsonl.zst"))
    NAMED_CONFIGS["gpu-preset"] = model
    seed = init_from_config("gpu-preset", tokenizer, work / "seed", languages=languages).path
    prepare(valid, seed, work / "shards", languages=languages)
    return seed, work / "shards"


def preset_training(work: Path, size: dict, args: argparse.Namespace, done: dict) -> dict:
    """`xelm train` at the `gpu` demo preset's model, vocabulary, block, batch and train
    options (read from PRESETS now), and the seconds its training runs would take at that
    speed. Logging every ``log_every`` steps (the timing's intervals) and no checkpoints."""
    preset = PRESETS["gpu"]
    model, vocab, block, batch = preset_shape(preset, size)
    seed, shards = preset_seed(work, args.data, model, vocab)
    run = argparse.Namespace(
        steps=size["steps"], block_size=block, batch_size=batch,
        lr=preset.train.get("lr", 1e-4), device=args.device, log_every=size["log_every"],
    )  # fmt: skip
    flagged = {"block_size", "batch_size", "lr", "log_every", "checkpoint_every", "device"}
    options = [f"--train-arg={key}={value}" for key, value in preset.train.items()
               if key not in flagged]  # the rest: xelm_train's own flags  # fmt: skip
    loop = {XELM: lambda i: throughput.xelm_train(seed, shards, work / "xelm", run, options)}
    timed = throughput.steady_speeds(loop, 1, warmup=run.log_every)[XELM]
    speed = block * batch / timed["step_seconds"]
    timed_model = meta_model(AutoConfig.from_pretrained(seed))
    runs = {name: sum(tokens) for name, tokens in preset.training_runs().items()}
    return {
        "preset": preset.name, "stand_in": "preset_hidden" in size,
        "parameters": model_shape(timed_model).parameters,
        "vocab_requested": vocab, "vocab": timed_model.config.vocab_size,
        "steps": run.steps, "warmup_steps": run.log_every, "block": block, "batch": batch,
        "train_options": preset.train, "tokens_per_s": speed,
        "mfu": mfu_flops_per_token(timed_model, block) * speed / (args.peak_tflops * 1e12),
        "warmup_seconds": timed["warmup_seconds"],
        "training_tokens": preset.training_tokens(),
        "expected_seconds": preset.training_tokens() / speed,
        "run_seconds": {name: tokens / speed for name, tokens in runs.items()},
    }  # fmt: skip


def whole_demo(work: Path, size: dict, args: argparse.Namespace, done: dict) -> dict:
    """`xelm demo --preset gpu` (on --cpu-smoke: the smoke preset) from start to end on the
    data folder --demo-data (benchmarks/gpu_demo_data.py writes one), in a process of its own;
    its wall seconds and each step's, from its --json output and results. Its progress goes to
    the log as it is printed, and it is stopped when --budget runs out: then the steps it
    finished (their seconds read from its progress lines) and the one it was in are kept."""
    preset = size.get("demo_preset", "gpu")
    data = args.demo_data or args.data / "demo"
    command = [sys.executable, "-m", "xelm_cli", "demo", "--preset", preset, "--data",
               str(data), "-o", str(work / "run"), "--device", args.device, "--json"]  # fmt: skip
    left = args.budget - (time.perf_counter() - args.started)
    printed, steps, current, last = work / "demo.json", {}, None, ""

    def progress(line: str) -> None:
        nonlocal current, last
        last = line or last
        if begun := DEMO_STEP_BEGUN.match(line):
            current = begun["step"]
        elif ended := DEMO_STEP_ENDED.match(line):
            steps[ended["step"]], current = float(ended["seconds"]), None

    began = time.perf_counter()
    with printed.open("w") as out:
        status = stream_within(command, left, stdout=out, progress=progress)
    wall = time.perf_counter() - began
    if status is None:
        return {"preset": preset, "wall_seconds": wall, "steps": steps, "training": {},
                "stopped": {"budget": args.budget, "in_step": current}}  # fmt: skip
    if status != 0:
        raise subprocess.CalledProcessError(status, command, stderr=last)
    shown = json.loads(printed.read_text(encoding="utf-8"))
    results = json.loads(Path(shown["results"]).read_text(encoding="utf-8"))
    return {
        "preset": preset, "wall_seconds": wall, "steps": results["steps"],
        "training": results.get("training", {}),
        "claims": {c["claim"]: c["verdict"] for c in shown["claims"]},
    }  # fmt: skip


def vocab_config(size: dict) -> LlamaConfig:
    return LlamaConfig(vocab_size=XGLM_VOCAB, tie_word_embeddings=False,
                       **seed_config(size["hidden"], size["vocab_layers"]))  # fmt: skip


def step_peak_memory(lean: bool, size: dict, device: str) -> float:
    """Peak memory (GiB) of two training steps at a 256,008-token vocabulary (the second
    runs with AdamW's moments allocated, as every later step does)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(vocab_config(size), dtype=torch.float32).to(device)
    if lean:
        use_lean_loss(model)
    optimizer = torch.optim.AdamW(model.parameters(), fused=device == "cuda")
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


def memory(work: Path, size: dict, args: argparse.Namespace, done: dict) -> dict:
    """Each loss's measured peak (GiB) next to `xelm plan`'s estimate of the same: on CUDA
    both the total, weights included; on the CPU both without the weights (the measurement is
    the growth above them)."""
    shape = model_shape(meta_model(vocab_config(size)))
    cuda = args.device == "cuda"
    results, estimates = {}, {}
    for lean in (True, False):  # each in a fresh process: peaks do not mix
        code = (
            "import json, sys; sys.argv = ['gpu.py']; import gpu; "
            f"print(json.dumps(gpu.step_peak_memory({lean}, {size!r}, {args.device!r})))"
        )
        name = "chunked loss" if lean else "plain loss"
        results[name] = workers.printed_json([sys.executable, "-c", code], cwd=ROOT)
        estimates[name] = training_memory(
            shape, size["vocab_batch"], size["vocab_block"], cuda=cuda, lean_loss=lean
        ).as_dict()
    compared = {name: (e["total"] - (0 if cuda else e["weights"])) / 2**30
                for name, e in estimates.items()}  # fmt: skip
    return {
        "tokens": size["vocab_batch"] * size["vocab_block"], "parameters": shape.parameters,
        "gib": results, "estimate_gib": compared, "estimate_bytes": estimates,
        "weights_included": cuda,
    }  # fmt: skip


def ensembles(work: Path, size: dict, args: argparse.Namespace, done: dict) -> dict:
    argv = [sys.executable, str(ROOT / "ensemble.py"), "--ks", "8", "--json", "--repeat", "1",
            "--device", args.device, "--hidden", str(size["ens_hidden"]),
            "--layers", str(size["ens_layers"]), "--docs", str(size["docs"]),
            "--profile"]  # fmt: skip
    data = os.environ | {"XELM_BENCH_DATA": str(args.data.resolve())}
    out = subprocess.run(argv, check=True, capture_output=True, text=True, env=data).stdout
    return dict(json.loads(out)[0]) | {"docs": size["docs"]}


def choice_scoring(work: Path, size: dict, args: argparse.Namespace, done: dict) -> dict:
    """benchmarks/icl_throughput.py: multiple-choice items one to a forward against batched."""
    argv = [sys.executable, str(ROOT / "icl_throughput.py"), "--json", "--device", args.device,
            "--model", size["icl_model"], "--requests", str(size["icl_requests"]),
            "--profile"]  # fmt: skip
    return dict(workers.printed_json(argv))


def attention_backends(work: Path, size: dict, args: argparse.Namespace, done: dict) -> dict:
    """benchmarks/attention_shapes.py: scoring with xelm's attention backends and PyTorch's."""
    argv = [sys.executable, str(ROOT / "attention_shapes.py"), "--json", "--device", args.device,
            "--hidden", str(size["ens_hidden"]), "--layers", str(size["ens_layers"]),
            "--tokens", str(size["attention_tokens"]),
            "--decode", str(size["attention_decode"])]  # fmt: skip
    return dict(workers.printed_json(argv))


def logit_chunks(work: Path, size: dict, args: argparse.Namespace, done: dict) -> dict:
    """benchmarks/logit_chunks.py: scoring with logit chunks of several sizes."""
    argv = [sys.executable, str(ROOT / "logit_chunks.py"), "--json", "--device", args.device,
            "--vocab", str(size["chunk_vocab"]), "--hidden", str(size["chunk_hidden"]),
            "--tokens", str(size["chunk_tokens"]),
            "--repeat", str(size["chunk_repeat"])]  # fmt: skip
    return dict(workers.printed_json(argv))


def machine(device: str) -> str:
    if device == "cuda":
        return (f"{torch.cuda.get_device_name()} ({torch.cuda.device_count()} visible), CUDA "
                f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")  # fmt: skip
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def report(results: dict, args: argparse.Namespace) -> str:
    """gpu.md: the sections measured, in order, then those that failed, each with its error."""
    smoke = " (CPU smoke run: checks the script, not a GPU measurement)" if args.cpu_smoke else ""
    lines = [
        "# GPU measurements (issue 15)", "",
        f"Machine: {results['machine']}; torch {torch.__version__}; written by "
        f"`benchmarks/gpu.sh` in {results['seconds']:.0f} s{smoke}. Seconds per section: "
        + ", ".join(f"{name} {s:.0f}" for name, s in results["section_seconds"].items()) + ".",
    ]  # fmt: skip
    for name, render in RENDERERS.items():
        if name in results:
            lines += render(results[name], args)
    for name, error in results["failed"].items():
        lines += ["", f"## {name}: failed", "", f"`{error}` (the rest ran; see the log)"]
    return "\n".join(lines)


def training_report(t: dict, args: argparse.Namespace) -> list[str]:
    lines = [
        "", f"## Training throughput: {t['parameters'] / 1e6:.0f}M-parameter Llama-style seed",
        "", f"{t['steps']} steps of {t['batch']} x {t['block']} tokens, vocabulary "
        f"{t['vocab']:,}; xelm's implementation: `{json.dumps(t['implementation'])}`.",
        f"Tokens/s after the first {t['warmup_steps']} steps (warm-up), whose seconds are the "
        "last column; each loop timed on its own, one that fails is named in its row.",
        f"MFU = (6 N + 12 L d s) x tokens/s / {args.peak_tflops:g} TFLOP/s, "
        f"{t['flops_per_token'] / 1e9:.2f} GFLOP per token.", "",
        *loop_table(t["rows"], t["failed"]),
    ]  # fmt: skip
    return lines


def loop_table(rows: dict[str, dict], failed: dict[str, str]) -> list[str]:
    """The timed loops' rows, then those that failed, each with its error."""
    lines = ["| loop | tokens/s | vs bare loop | MFU | warm-up s |", "|---|---:|---:|---:|---:|"]
    for name, row in rows.items():
        ratio = "" if row["vs_bare_loop"] is None else f"{row['vs_bare_loop']:.3f}"
        lines.append(f"| {name} | {row['tokens_per_s']:,.0f} | {ratio} | {row['mfu']:.1%} | "
                     f"{row['warmup_seconds']:.1f} |")  # fmt: skip
    lines += [f"| {name} | failed: `{error}` | | | |" for name, error in failed.items()]
    return lines


def compiled_report(c: dict, args: argparse.Namespace) -> list[str]:
    lines = ["", "## Training under torch.compile (the training section's model and steps)", ""]
    if c["skipped"]:
        return [*lines, f"Left out: {c['skipped']}."]
    lines += [
        "Each compiled loop timed as the training section's, in a process of its own run last; "
        "the warm-up seconds hold the compilation. vs bare loop: against the eager bare loop.",
        "", *loop_table(c["rows"], c["failed"]), "",
    ]  # fmt: skip
    return lines + [f"torch.compile speed-up of {name}: {ratio:.3f}x."
                    for name, ratio in c["speedup"].items()]  # fmt: skip


def memory_report(m: dict, args: argparse.Namespace) -> list[str]:
    gib, estimate = m["gib"], m["estimate_gib"]
    compared = (
        "both are totals, weights included (torch.cuda.max_memory_allocated; the estimate's "
        "`total`)"
        if m["weights_included"]
        else "both leave the weights out: measured, the "
        "resident memory's growth above the weights; estimated, `total` minus `weights`"
    )
    return [
        "", f"## Peak memory of one training step at a {XGLM_VOCAB:,}-token vocabulary", "",
        f"{m['tokens']:,} tokens a step; two steps of forward, backward and AdamW, a "
        f"{m['parameters'] / 1e6:.0f}M-parameter model. Estimate: `xelm plan`'s "
        "(`xelm_cli.training.estimates.training_memory`) for the same model, batch, block and "
        f"loss; {compared}.", "",
        "| loss | peak GiB | estimate GiB | estimate / measured |", "|---|---:|---:|---:|",
        *(f"| {name} | {value:.2f} | {estimate[name]:.2f} | "
          f"{estimate[name] / max(value, 1e-9):.3f} |" for name, value in gib.items()),
        f"| ratio chunked / plain | {gib['chunked loss'] / max(gib['plain loss'], 1e-9):.3f} | "
        f"{estimate['chunked loss'] / estimate['plain loss']:.3f} | |",
    ]  # fmt: skip


def ensemble_report(e: dict, args: argparse.Namespace) -> list[str]:
    return [
        "", "## Ensemble evaluation, k = 8 (benchmarks/ensemble.py)", "",
        f"Perplexity of the first {e['docs']:,} FLORES-200 devtest sentences of each of 16 "
        "languages, 8 experts of two languages each. Timed: the second of two evaluations in a "
        "fresh process, each with fresh models, so loading every expert's weights (and checking "
        "their files) and tokenizing are inside the timed part; the one-off start-up is not.",
        "",
        "| measure | value | goal |", "|---|---:|---:|",
        f"| posterior wall time / (8 x one expert) | {e['posterior_time_vs_k_single']:.3f} | "
        "<= 1.1 |",
        f"| language router wall time / one expert | {e['language_time_vs_one_expert']:.3f} | "
        "<= 1.1 |",
        f"| one expert's evaluation | {e['single_seconds']:.2f} s | |",
        *([f"| of it loading experts: one expert / posterior / language router | "
           f"{e['single_load_seconds']:.2f} / {e['posterior_load_seconds']:.2f} / "
           f"{e['language_load_seconds']:.2f} s | |"] if "single_load_seconds" in e else []),
        *(line for mode, label in (("single", "one expert"), ("language", "language router"))
          if e.get(f"{mode}_profile")
          for line in profiling.markdown(e[f"{mode}_profile"], f"A third evaluation ({label})")),
        "",
    ]  # fmt: skip


def choice_report(c: dict, args: argparse.Namespace) -> list[str]:
    return [
        "", "## Multiple-choice scoring (benchmarks/icl_throughput.py)", "",
        f"{c['requests']} SIB-200-shaped items of {c['choices']} choices (random tokens, the "
        f"`{c['model']}` Llama, random weights), scored one item per forward pair and batched "
        f"within {c['budget']:,} tokens; the largest difference between the two paths' "
        "log-probabilities.", "",
        "| context | one at a time, items/s | batched, items/s | ratio | batches | max diff |",
        "|---|---:|---:|---:|---:|---:|",
        *(f"| {shape} | {r['per_request_per_s']:,.1f} | {r['batched_per_s']:,.1f} | "
          f"{r['ratio']:.2f} | {r['batches']} | {r['max_difference']:.1e} |"
          for shape, r in c["shapes"].items()),
        *(profiling.markdown(c["profile"], f"The batched few-shot run again "
                             f"({c['profile']['batches']} batches)") if c.get("profile") else []),
    ]  # fmt: skip


def attention_report(a: dict, args: argparse.Namespace) -> list[str]:
    xelm, default = a["arms"]["xelm"], a["arms"]["default"]
    setup = ", ".join(f"{key} {xelm[key]}" for key in ("torch", "cuda", "cudnn") if key in xelm)
    order = " > ".join(xelm.get("sdpa_order", [])) or "-"

    def row(name: str, r: dict) -> str:
        per_batch = 1000 * r["first_pass_s"] / r["batches"]
        per_token = 1000 * r["decode_s"] / a["decode_steps"]
        return (f"| {name} | {r['first_pass_s']:.3f} | {per_batch:.1f} | "
                f"{r['second_pass_s']:.3f} | {per_token:.2f} |")  # fmt: skip

    return [
        "", "## Scoring's attention backend (benchmarks/attention_shapes.py)",
        "", f"`score_sequences` of {xelm['tokens']:,} random tokens in documents of 20-120 by a "
        f"Llama of hidden {a['hidden']} x {a['layers']} layers, {xelm['batches']} batches of "
        f"{a['batch_tokens']:,} tokens, twice (the first pass meets each batch shape for the "
        f"first time); then {a['decode_steps']} single-token forwards onto a growing cache. "
        f"Each arm in a fresh process. {setup or 'CPU'}; PyTorch's backend order: {order}.", "",
        "| backends | 1st pass s | ms a batch | 2nd pass s | ms a decoded token |",
        "|---|---:|---:|---:|---:|",
        row("xelm: all but cuDNN", xelm), row("PyTorch's order", default), "",
        "PyTorch's order / xelm's: " + ", ".join(
            f"{key.replace('_s', '')} {ratio:.2f}" for key, ratio in a["default_vs_xelm"].items()
        ) + ".",
    ]  # fmt: skip


def chunks_report(c: dict, args: argparse.Namespace) -> list[str]:
    own = str(c["device_rows"])
    return [
        "", f"## Logit chunks at a {c['vocab']:,}-token vocabulary (benchmarks/logit_chunks.py)",
        "", f"`score_sequences` of {c['tokens']:,} random tokens by a 2-layer Llama, batches of "
        f"{c['batch_tokens']:,} tokens, with chunks of several sizes, alternating "
        f"{len(c['seconds'][own])} times; medians. This device's chunk: {int(own):,} positions "
        f"(the rule before: 2^22 logits, {max(1, 2**22 // c['vocab']):,} positions).", "",
        "| positions a chunk | seconds | vs this device's chunk |", "|---:|---:|---:|",
        *(f"| {int(rows):,} | {seconds:.3f} | {c['vs_device_rows'][rows]:.3f} |"
          for rows, seconds in c["median_seconds"].items()), "",
        f"Largest difference from this device's chunk's log-probabilities: "
        f"{c['max_difference']:.1e}.",
    ]  # fmt: skip


def preset_report(p: dict, args: argparse.Namespace) -> list[str]:
    timed = (
        f"a tiny stand-in ({p['parameters'] / 1e6:.1f}M parameters), not the preset's shape"
        if p["stand_in"]
        else f"the preset's model, {p['parameters'] / 1e6:.0f}M parameters"
    )
    vocab = f"vocabulary {p['vocab']:,}, a BPE trained here by xelm"
    if p["vocab"] != p["vocab_requested"]:
        vocab += (
            f" that reached only {p['vocab']:,} of the {p['vocab_requested']:,} tokens "
            "asked for on the text it had: the speed is that of the smaller vocabulary"
        )
    kept = "the stand-in's block and batch, " if p["stand_in"] else ""
    minutes = DEMO_GOAL_SECONDS / 60
    return [
        "", f"## `xelm demo --preset {p['preset']}`: training speed and expected training time",
        "", f"`xelm train` of {timed}; {vocab}; {p['steps']} steps of {p['batch']} x "
        f"{p['block']} tokens with the preset's train options "
        f"(`{json.dumps(p['train_options'])}`) but {kept}a logged loss every "
        f"{p['warmup_steps']} steps and no checkpoints. Tokens/s after the first "
        f"{p['warmup_steps']} steps (warm-up, {p['warmup_seconds']:.1f} s).",
        f"Expected training seconds = `Preset.training_tokens()` / tokens/s: every training "
        "run of the demo at this speed. Training alone: the demo's data preparation (corpus, "
        "tokenizer, shards), clustering, evaluation, checkpoints and saved bundles are not in "
        f"it, and the MoE fine-tune is counted at the dense model's speed. The {minutes:g}-minute "
        "goal is the whole demo's.", "",
        "| measure | value | goal |", "|---|---:|---:|",
        f"| tokens/s | {p['tokens_per_s']:,.0f} | |",
        f"| MFU | {p['mfu']:.1%} | |",
        f"| training tokens, all runs | {p['training_tokens']:,} | |",
        f"| expected training seconds | {p['expected_seconds']:,.0f} | "
        f"<= {DEMO_GOAL_SECONDS} (whole demo) |", "",
        "| demo step | expected training seconds |", "|---|---:|",
        *(f"| {name} | {seconds:,.1f} |" for name, seconds in p["run_seconds"].items()),
    ]  # fmt: skip


# the test files with tests that need CUDA (skipped on a CPU, so never run by CI): run whole
CUDA_TESTS = ("tests/test_ensemble.py", "tests/test_ensemble_load_ahead.py",
              "tests/test_moe_gate.py", "tests/test_choice_batching.py",
              "tests/test_product.py")  # fmt: skip
PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)")


def cuda_tests(work: Path, size: dict, args: argparse.Namespace, done: dict) -> dict:
    """CUDA_TESTS under pytest on this machine, reading --data (XELM_TEST_DATA): the
    counts of its summary line and each test that failed."""
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            f"--basetemp={work / 'pytest'}", *CUDA_TESTS]  # fmt: skip
    env = {name: value for name, value in os.environ.items() if name != "XELM_DEBUG"}
    env["XELM_TEST_DATA"] = str(args.data.resolve())  # XELM_DEBUG: tests expect one-line errors
    run = subprocess.run(argv, cwd=ROOT.parent, capture_output=True, text=True, env=env)
    print(run.stdout[-4000:], run.stderr[-2000:], sep="\n", file=sys.stderr)
    outcome = pytest_outcome(run.stdout)
    if run.returncode not in (0, 1) or not outcome["counts"]:
        raise RuntimeError(f"pytest exited {run.returncode}: {outcome['summary'] or '?'}")
    return outcome | {"files": list(CUDA_TESTS)}


def pytest_outcome(stdout: str) -> dict:
    """pytest -q's last line as counts ({"passed": 40, "skipped": 2}), the line itself, and
    each FAILED or ERROR line of its short summary by test id (``failed``)."""
    lines = stdout.strip().splitlines()
    summary = lines[-1].strip("= ") if lines else ""
    failed = {}
    for line in lines:
        if line.startswith(("FAILED ", "ERROR ")):
            test, _, reason = line.split(" ", 1)[1].partition(" - ")
            failed[test] = reason
    counts = {word: int(n) for n, word in PYTEST_COUNT.findall(summary)}
    return {"counts": counts, "summary": summary, "failed": failed}


def cuda_tests_report(t: dict, args: argparse.Namespace) -> list[str]:
    return [
        "", "## Tests that need CUDA", "",
        f"`python -m pytest {' '.join(t['files'])}` on this machine (the CPU runs skip the "
        f"tests that need CUDA): {t['summary']}.",
        *(["", *(f"- {test}: {reason}" for test, reason in t["failed"].items())]
          if t["failed"] else []),
    ]  # fmt: skip


def demo_report(d: dict, args: argparse.Namespace) -> list[str]:
    trained = {name: t.get("seconds", 0.0) for name, t in d["training"].items()}
    if "stopped" in d:
        stopped = d["stopped"]
        wall = (f"Stopped after {d['wall_seconds']:,.0f} s, when the {stopped['budget']:g}-second "
                f"budget (--budget) ran out, in step {stopped['in_step'] or '(between steps)'}; "
                f"the steps it finished are below (goal <= {DEMO_GOAL_SECONDS} s on one "
                "H100-class GPU for the whole demo)")  # fmt: skip
    else:
        wall = (f"Wall time {d['wall_seconds']:,.0f} s (goal <= {DEMO_GOAL_SECONDS} s on one "
                "H100-class GPU)")  # fmt: skip
    return [
        "", f"## `xelm demo --preset {d['preset']}` from start to end", "",
        f"{wall}, the command in a process of its own on the data of "
        "benchmarks/gpu_demo_data.py; each step's seconds, and those of its training runs.", "",
        "| step | seconds | of it training |", "|---|---:|---:|",
        *(f"| {name} | {seconds:,.1f} | {trained.get(name, 0.0):,.1f} |"
          for name, seconds in d["steps"].items()),
    ]  # fmt: skip


SECTIONS = {  # name: the measurement, given a scratch directory of its own and what the
    # sections before it measured
    "training": training,
    "preset": preset_training,
    "memory": memory,
    "attention": attention_backends,
    "ensemble": ensembles,
    "choices": choice_scoring,
    "chunks": logit_chunks,
    "compile": compiled,
    "demo": whole_demo,  # 8 minutes of its own
    "cuda-tests": cuda_tests,
}
ONLY_WHEN_NAMED = ("demo", "cuda-tests")  # --sections ...,demo
DEFAULT_SECTIONS = [name for name in SECTIONS if name not in ONLY_WHEN_NAMED]
RENDERERS = {
    "training": training_report,
    "preset": preset_report,
    "memory": memory_report,
    "attention": attention_report,
    "ensemble": ensemble_report,
    "choices": choice_report,
    "chunks": chunks_report,
    "compile": compiled_report,
    "demo": demo_report,
    "cuda-tests": cuda_tests_report,
}


def sections(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose among {', '.join(SECTIONS)}")
    return names


def failure(exc: BaseException) -> str:
    """One line for a failed section: a subprocess's last line of stderr, else the error."""
    if isinstance(exc, subprocess.CalledProcessError) and exc.stderr:
        return exc.stderr.strip().splitlines()[-1]
    return (f"{type(exc).__name__}: {exc}".strip().splitlines() or ["?"])[0]


def measure(names: list[str], size: dict, args: argparse.Namespace) -> dict:
    """Each section in turn; one that fails is recorded and the others still run, and the
    report is rewritten after each (a run cut short by a time limit keeps what it measured)."""
    started = args.started = time.perf_counter()
    results: dict[str, Any] = {"machine": machine(args.device), "failed": {},
                               "section_seconds": {}}  # fmt: skip
    for name in names:
        began = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix=f"xelm-gpu-{name}-") as work:
                results[name] = SECTIONS[name](Path(work), size, args, results)
        except (Exception, SystemExit) as exc:  # one failed measurement must not cost the others
            traceback.print_exc()
            results["failed"][name] = failure(exc)
        results["section_seconds"][name] = round(time.perf_counter() - began, 1)
        results["seconds"] = time.perf_counter() - started
        write(results, args)
    return results


def write(results: dict, args: argparse.Namespace) -> None:
    args.out.write_text(report(results, args) + "\n", encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    # set here, not on import: tests import this module beside every other test
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("XELM_DEBUG", "1")  # a failed `xelm train` raises: its traceback logged
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
    parser.add_argument(
        "--budget", type=float, default=BUDGET_SECONDS,
        help="seconds the whole run may take: the compile section, last, is stopped then",
    )  # fmt: skip
    parser.add_argument(
        "--sections", type=sections, default=DEFAULT_SECTIONS,
        help=f"which measurements, in order (default: {','.join(DEFAULT_SECTIONS)}; "
        f"{' and '.join(ONLY_WHEN_NAMED)} only when named; demo: the whole gpu preset)",
    )  # fmt: skip
    parser.add_argument(
        "--demo-data", type=Path,
        help="the demo section's data folder (default: --data's demo/; gpu_demo_data.py)",
    )  # fmt: skip
    args = parser.parse_args()
    args.device = "cpu" if args.cpu_smoke or args.cpu_training else "cuda"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu.py: no CUDA device; use --cpu-smoke to check the script on a CPU")
    if args.cpu_training:
        args.started = time.perf_counter()
        done: dict[str, dict] = {}
        for name in ("training", "compile"):
            with tempfile.TemporaryDirectory(prefix=f"xelm-cpu-{name}-") as cpu_work:
                done[name] = SECTIONS[name](Path(cpu_work), SIZES["cpu-training"], args, done)
        print(json.dumps(done | {"machine": machine("cpu")}, indent=2))
        return
    missing = [need for need in DATA_NEEDED if not (args.data / need).is_dir()]
    if missing:
        raise SystemExit(f"gpu.py: {args.data} has no {', '.join(missing)}; pass --data DIR")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = measure(args.sections, SIZES["cpu-smoke" if args.cpu_smoke else "gpu"], args)
    print(report(results, args))
    failed = failures(results)
    if failed:
        raise SystemExit(f"gpu.py: failed: {', '.join(failed)} (the rest written)")


def failures(results: dict) -> list[str]:
    """The sections that failed, the loops that failed in those that ran ("section: loop"),
    and the demo when --budget stopped it."""
    loops = [f"{name}: {loop}" for name in SECTIONS if isinstance(results.get(name), dict)
             for loop in results[name].get("failed", {})]  # fmt: skip
    stopped = ["demo: stopped by --budget"] if "stopped" in results.get("demo", {}) else []
    return list(results["failed"]) + loops + stopped


if __name__ == "__main__":
    main()
