"""Ensemble cost: memory and time of k experts against one.

    python benchmarks/ensemble.py [--docs 48] [--ks 1,2,4,8] [--hidden 256] [--layers 4]
                                  [--device cpu|cuda] [--batch-tokens N] [--repeat 2] [--json]
                                  [--profile]

Builds 8 experts (random Llama-style decoders of --hidden/--layers, a 4,000-token BPE tokenizer
trained on FLORES text), each covering two of the 16 training languages, and evaluates the
perplexity of --docs FLORES-200 sentences per language. Every measurement runs in a fresh
process, which evaluates twice with fresh models (nothing cached or loaded): peak memory is the
growth of the resident set during the first evaluation (sampled every millisecond; on CUDA the
peak allocated GPU memory), wall time is that of the second (one-off start-up costs of the
process, such as first-call kernel set-up, excluded for single and ensemble alike). For
k = 1, 2, 4, 8 it prints

- posterior: peak memory of the posterior ensemble / one expert on the same documents (goal
  <= 1.15 at k=8), wall time / (k x one expert's evaluation) (goal <= 1.1);
- language: the language router's wall time / one expert on the same documents (goal <= 1.1).

With k < 8 the ensemble is the first k experts and the documents are those of their languages.
--batch-tokens sets the padded tokens of a forward batch (default: the device's, 2,048 on a
CPU, EnsembleModel's batch_tokens); run twice with two values to compare them. --profile adds,
for one expert and the language router, a third evaluation (fresh models again) under
torch.profiler: where its time went (benchmarks/profiling.py).
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import psutil
from workers import printed_json

DATA = Path(os.environ.get("XELM_BENCH_DATA", Path(__file__).resolve().parents[2] / "shared/data"))
LANGS = ["en", "de", "es", "fr", "ru", "bg", "el", "ar"]
LANGS += ["tr", "ja", "ko", "zh", "hi", "ur", "sw", "vi"]
PROFILED = ("single", "language")  # the modes --profile profiles


def build(work: Path, hidden: int, layers: int) -> None:
    from xelm_cli.bundle.seed import NAMED_CONFIGS, init_from_config
    from xelm_cli.data.tokenizer import train_bpe_tokenizer

    texts = [
        line
        for lang in LANGS
        for line in (DATA / "eval" / "flores200-devtest" / f"{lang}.txt")
        .read_text()
        .splitlines()[200:600]
    ]
    tokenizer = train_bpe_tokenizer(texts, work / "tok", vocab_size=4000)
    NAMED_CONFIGS["bench"] = dict(
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=512,
    )
    for e in range(8):
        init_from_config(
            "bench", tokenizer, work / f"e{e}", languages=LANGS[2 * e : 2 * e + 2], seed=e
        )


class PeakMemory:
    """Peak resident memory (sampled every millisecond) or, on CUDA, peak allocated GPU
    memory, above the level when the block starts."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.growth = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            import torch

            self.growth = torch.cuda.max_memory_allocated() - self.start
            return
        self.running = False
        self.thread.join()
        self.growth = self.peak - self.start


def worker(
    work: Path,
    mode: str,
    k: int,
    docs: int,
    device: str,
    batch_tokens: int | None,
    profile: bool = False,
) -> dict[str, Any]:
    from xelm_cli.api import EvalRequest
    from xelm_cli.bundle.store import Bundle
    from xelm_cli.ensemble.results import build_evaluator
    from xelm_cli.ensemble.routing import build_router
    from xelm_cli.ensemble.runner import EnsembleModel, single_model

    languages = LANGS[: 2 * k]
    request = EvalRequest(
        data=str(DATA / "eval" / "flores200-devtest"), languages=tuple(languages), limit=docs
    )
    evaluator = build_evaluator("perplexity", request)
    members = [Bundle.read(work / f"e{e}") for e in range(k)]

    def model() -> EnsembleModel:  # a fresh model: nothing cached, nothing loaded
        if mode == "single":
            return single_model(members[0], "single", device=device, batch_tokens=batch_tokens)
        return EnsembleModel(members, build_router(mode), device=device, batch_tokens=batch_tokens)

    cold = model()
    cold.count_tokens("load the tokenizer")
    with PeakMemory(device) as memory:  # the first run: every allocation is new
        evaluator.evaluate(cold)
    del cold
    warm = model()
    warm.count_tokens("load the tokenizer")
    started = time.perf_counter()  # the second run: no one-off start-up costs
    evaluator.evaluate(warm)
    seconds = time.perf_counter() - started
    measured: dict[str, Any] = {
        "seconds": seconds,
        "peak_growth": memory.growth,
        "load_seconds": warm.stats.load_seconds,
    }
    if profile:
        from profiling import summary

        again = model()
        again.count_tokens("load the tokenizer")
        measured["profile"] = summary(lambda: evaluator.evaluate(again), again.device.type)
    return measured


def measure(work: Path, mode: str, k: int, args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    options = ["--docs", str(args.docs), "--device", args.device]
    if args.batch_tokens:
        options += ["--batch-tokens", str(args.batch_tokens)]
    if args.profile and mode in PROFILED:
        options.append("--profile")
    for _ in range(args.repeat):
        argv = [sys.executable, __file__, "--worker", mode, str(k), str(work), *options]
        runs.append(printed_json(argv))
    fastest = min(runs, key=lambda r: r["seconds"])
    return {
        "seconds": fastest["seconds"],
        "load_seconds": fastest["load_seconds"],  # of its seconds, loading experts
        "peak_growth": min(r["peak_growth"] for r in runs),
        "profile": fastest.get("profile"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=48, help="FLORES sentences per language")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-tokens", type=int, help="padded tokens a forward batch")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement (best kept)")
    parser.add_argument("--ks", default="1,2,4,8", help="ensemble sizes, e.g. 8")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", action="store_true", help="profile one expert and the router")
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "K", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        mode, k, work = args.worker
        measured = worker(
            Path(work), mode, int(k), args.docs, args.device, args.batch_tokens, args.profile
        )
        print(json.dumps(measured))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build(work, args.hidden, args.layers)
        rows = []
        for k in [int(k) for k in args.ks.split(",")]:
            single = measure(work, "single", k, args)
            posterior = measure(work, "posterior", k, args)
            language = measure(work, "language", k, args)
            rows.append(
                {
                    "k": k,
                    "posterior_memory_vs_one_expert": posterior["peak_growth"]
                    / single["peak_growth"],
                    "posterior_time_vs_k_single": posterior["seconds"] / (k * single["seconds"]),
                    "language_time_vs_one_expert": language["seconds"] / single["seconds"],
                    "single_seconds": single["seconds"],
                    "posterior_seconds": posterior["seconds"],
                    "language_seconds": language["seconds"],
                    "single_load_seconds": single["load_seconds"],
                    "posterior_load_seconds": posterior["load_seconds"],
                    "language_load_seconds": language["load_seconds"],
                    "single_peak_mb": single["peak_growth"] / 2**20,
                    "posterior_peak_mb": posterior["peak_growth"] / 2**20,
                    "single_profile": single["profile"],
                    "language_profile": language["profile"],
                }
            )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"{'k':>2} {'posterior mem/1':>16} {'posterior time/(k x 1)':>23} "
        f"{'language time/1':>16} {'1 expert s':>10} {'1 expert MB':>11}"
    )
    for row in rows:
        print(
            f"{row['k']:>2} {row['posterior_memory_vs_one_expert']:>16.3f} "
            f"{row['posterior_time_vs_k_single']:>23.3f} "
            f"{row['language_time_vs_one_expert']:>16.3f} {row['single_seconds']:>10.2f} "
            f"{row['single_peak_mb']:>11.1f}"
        )


if __name__ == "__main__":
    main()
