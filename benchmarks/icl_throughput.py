"""In-context multiple-choice scoring: one request per forward vs requests batched.

    python benchmarks/icl_throughput.py [--device cpu|cuda] [--model demo-small|llama-25m]
                                        [--requests 200] [--threads N] [--batch-tokens N]
                                        [--profile]

``score_choice_sets`` on SIB-200-like requests (7 choices of 1-3 tokens) with zero-shot
(~60-token) and few-shot (~400-token) contexts, random token ids, a randomly initialised
Llama: ``demo-small`` is the demo's ``small`` preset model (hidden 64, 2 layers, vocabulary
4,000), ``llama-25m`` a 25M-parameter one (hidden 512, 6 layers, vocabulary 8,000). Per
request: ``batch_tokens=1``, a batch of one request each, two forwards per request as before
batching; batched: ``--batch-tokens``, by default the device's budget for choices
(``default_choice_batch_tokens``). One timed run of
each, alternating, after an untimed warm-up; prints requests/s, their ratio and the largest
difference between the two paths' log-probabilities. On a CPU shared with other work,
``--threads 1`` gives steadier numbers than torch's default (one thread per core).
``--profile`` runs the batched few-shot requests once more under torch.profiler and reports
where that run's time went: its wall seconds, the operators' own CPU time (the rest is Python
between them) and the operators that took most of it, with their device time.
"""

import argparse
import json
import time
from typing import Any

import numpy as np
import torch
from profiling import markdown, summary, sync
from transformers import LlamaConfig, LlamaForCausalLM

from xelm_cli.bundle.seed import NAMED_CONFIGS
from xelm_cli.ensemble.choices import default_choice_batch_tokens, score_choice_sets
from xelm_cli.ensemble.scoring import LoadedModel, pick_device

MODELS = {
    "demo-small": ({**NAMED_CONFIGS["tiny"], "max_position_embeddings": 1024}, 4000),
    "llama-25m": (
        dict(
            hidden_size=512,
            intermediate_size=1376,
            num_hidden_layers=6,
            num_attention_heads=8,
            num_key_value_heads=8,
            max_position_embeddings=1024,
        ),
        8000,
    ),
}
SHAPES = {"zero-shot": 60, "few-shot": 400}  # context tokens, about
CHOICES = 7

Request = tuple[list[int], list[list[int]]]


def build_model(name: str, device: Any) -> LoadedModel:
    config, vocab = MODELS[name]
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **config))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return LoadedModel(model.to(device, dtype).eval(), device, config["max_position_embeddings"])


def sib_like(count: int, context_tokens: int, vocab: int, seed: int) -> list[Request]:
    """``count`` requests: BOS + a context of ``context_tokens`` +- 15%, 7 choices of 1-3."""
    rng = np.random.default_rng(seed)
    requests = []
    for _ in range(count):
        n = int(context_tokens * rng.uniform(0.85, 1.15))
        context = [1, *(int(t) for t in rng.integers(3, vocab, n))]
        choices = [
            [int(t) for t in rng.integers(3, vocab, rng.integers(1, 4))] for _ in range(CHOICES)
        ]
        requests.append((context, choices))
    return requests


def timed(model: LoadedModel, requests: list[Request], batch_tokens: int) -> tuple[float, Any, int]:
    """(seconds, the scores, the number of batches)."""
    batches: list[int] = []
    start = time.perf_counter()
    scored = score_choice_sets(
        [model], [1.0], requests, batch_tokens=batch_tokens, advance=batches.append
    )
    sync(model.device.type)
    return time.perf_counter() - start, scored, len(batches)


def largest_difference(one: Any, other: Any) -> float:
    return max(
        float(np.max(np.abs(a - b), initial=0.0))
        for (context_a, choices_a), (context_b, choices_b) in zip(one, other, strict=True)
        for a, b in [(context_a, context_b), *zip(choices_a, choices_b, strict=True)]
    )


def measure(model: LoadedModel, count: int, budget: int) -> dict[str, dict[str, float]]:
    """Per shape: requests/s one at a time and batched, their ratio, the batches and the
    largest difference between the two paths' log-probabilities."""
    vocab = model.vocab_size()
    score_choice_sets([model], [1.0], sib_like(4, 60, vocab, seed=99))  # warm-up
    rows = {}
    for shape, context_tokens in SHAPES.items():
        requests = sib_like(count, context_tokens, vocab, seed=context_tokens)
        per_request_s, one_by_one, _ = timed(model, requests, batch_tokens=1)
        batched_s, batched, batches = timed(model, requests, batch_tokens=budget)
        rows[shape] = {
            "per_request_per_s": count / per_request_s,
            "batched_per_s": count / batched_s,
            "ratio": per_request_s / batched_s,
            "batches": batches,
            "max_difference": largest_difference(one_by_one, batched),
        }
    return rows


def profiled_run(model: LoadedModel, count: int, budget: int) -> dict[str, Any]:
    """The batched few-shot run again, under torch.profiler (profiling.profiled), with its
    number of batches."""
    requests = sib_like(count, SHAPES["few-shot"], model.vocab_size(), seed=SHAPES["few-shot"])
    batches: list[int] = []
    profile = summary(lambda: batches.append(timed(model, requests, budget)[2]), model.device.type)
    return profile | {"batches": batches[0] if batches else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", choices=sorted(MODELS), default="demo-small")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads; 0: torch's own")
    parser.add_argument("--batch-tokens", type=int, default=0, help="0: the device's default")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--profile", action="store_true", help="profile a batched few-shot run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    model = build_model(args.model, device)
    budget = args.batch_tokens or default_choice_batch_tokens([model])
    rows = measure(model, args.requests, budget)
    profile = profiled_run(model, args.requests, budget) if args.profile else None
    if args.json:
        print(json.dumps({"model": args.model, "requests": args.requests, "budget": budget,
                          "choices": CHOICES, "shapes": rows, "profile": profile}))  # fmt: skip
        return
    print(
        f"model {args.model}, device {device}, {torch.get_num_threads()} threads, "
        f"batch budget {budget} tokens, {args.requests} requests of {CHOICES} choices"
    )
    print(
        f"{'shape':<10} {'per request/s':>14} {'batched/s':>10} {'ratio':>6} "
        f"{'batches':>8} {'max |diff|':>11}"
    )
    for shape, row in rows.items():
        print(
            f"{shape:<10} {row['per_request_per_s']:>14.1f} {row['batched_per_s']:>10.1f} "
            f"{row['ratio']:>6.2f} {row['batches']:>8} {row['max_difference']:>11.2e}"
        )
    if profile is not None:
        print(
            "\n".join(markdown(profile, f"The batched few-shot run ({profile['batches']} batches)"))
        )


if __name__ == "__main__":
    main()
