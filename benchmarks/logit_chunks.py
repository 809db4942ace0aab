"""Scoring's logit chunk: `score_sequences` with chunks of several sizes, side by side.

    python benchmarks/logit_chunks.py [--device cpu|cuda] [--vocab 256008] [--hidden 1024]
                                      [--tokens 65536] [--rows 16,128,1024] [--repeat 3] [--json]

Log-probabilities are computed from a batch's final hidden states chunk by chunk of positions
(``xelm_cli.ensemble.scoring.chunk_rows``: 2^22 logits a chunk on a CPU, 2^26 on a GPU, never
fewer than 128 positions). A chunk runs about ten operators whatever its size; at XGLM's
vocabulary of 256,008 tokens 2^22 logits are 16 positions, 1,024 chunks in a GPU batch of
16,384 tokens. This times one model (a 2-layer Llama of ``--hidden``, random weights, bf16 on
a GPU) scoring ``--tokens`` random tokens in sequences of 512 at the device's batch budget,
with chunks of each ``--rows`` positions and of the device's own, alternating ``--repeat``
times after an untimed warm-up of each, and prints the medians, each one's ratio to the
device's chunk and the largest difference between the log-probabilities of any two (the chunk
changes no number beyond the rounding of a sum's order).
"""

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from xelm_cli.ensemble import scoring
from xelm_cli.ensemble.scoring import (
    LoadedModel,
    chunk_rows,
    default_batch_tokens,
    pick_device,
    score_sequences,
)

SEQUENCE = 512


def build_model(vocab: int, hidden: int, device: Any) -> LoadedModel:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
        num_hidden_layers=2, num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64), max_position_embeddings=SEQUENCE)  # fmt: skip
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = LlamaForCausalLM(config).to(device, dtype).eval()
    return LoadedModel(model, device, SEQUENCE)


def timed(model: LoadedModel, sequences: list[list[int]], rows: int) -> tuple[float, Any]:
    """Seconds of ``score_sequences`` with chunks of ``rows`` positions, and its scores."""
    saved = scoring.CHUNK_ELEMENTS, scoring.CUDA_CHUNK_ELEMENTS, scoring.MIN_CHUNK_ROWS
    scoring.CHUNK_ELEMENTS = scoring.CUDA_CHUNK_ELEMENTS = 0
    scoring.MIN_CHUNK_ROWS = rows  # chunk_rows gives exactly ``rows``
    try:
        budget = default_batch_tokens(model.device)
        start = time.perf_counter()
        scores = score_sequences([model], [1.0], sequences, batch_tokens=budget)
        return time.perf_counter() - start, scores
    finally:
        scoring.CHUNK_ELEMENTS, scoring.CUDA_CHUNK_ELEMENTS, scoring.MIN_CHUNK_ROWS = saved


def measure(model: LoadedModel, tokens: int, rows: list[int], repeat: int) -> dict[str, Any]:
    vocab = model.vocab_size()
    own = chunk_rows(vocab, model.device)
    sizes = sorted({*rows, own})
    rng = np.random.default_rng(0)
    sequences = [[1, *map(int, rng.integers(3, vocab, SEQUENCE - 1))]
                 for _ in range(max(1, tokens // SEQUENCE))]  # fmt: skip
    scores = {size: timed(model, sequences, size)[1] for size in sizes}  # also the warm-up
    seconds: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(repeat):
        for size in sizes:
            seconds[size].append(timed(model, sequences, size)[0])
    medians = {size: statistics.median(values) for size, values in seconds.items()}
    difference = max(
        float(np.max(np.abs(a - b)))
        for size in sizes
        for a, b in zip(scores[size], scores[own], strict=True)
    )
    return {
        "vocab": vocab,
        "tokens": len(sequences) * (SEQUENCE - 1),
        "batch_tokens": default_batch_tokens(model.device),
        "device_rows": own,
        "seconds": {str(size): values for size, values in seconds.items()},
        "median_seconds": {str(size): medians[size] for size in sizes},
        "vs_device_rows": {str(size): medians[size] / medians[own] for size in sizes},
        "max_difference": difference,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vocab", type=int, default=256_008)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=65_536)
    parser.add_argument("--rows", default="16,128,1024", help="positions a chunk, compared")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    device = pick_device(args.device)
    rows = [int(size) for size in args.rows.split(",")]
    result = measure(build_model(args.vocab, args.hidden, device), args.tokens, rows, args.repeat)
    if args.json:
        print(json.dumps(result))
        return
    print(f"device {device}, vocabulary {result['vocab']:,}, {result['tokens']:,} tokens, "
          f"batches of {result['batch_tokens']:,} tokens; the device's chunk "
          f"{result['device_rows']} positions")  # fmt: skip
    for size, values in result["seconds"].items():
        runs = ", ".join(f"{s:.3f}" for s in values)
        print(f"{size:>6} positions a chunk: {runs} s, median {result['median_seconds'][size]:.3f}"
              f", {result['vs_device_rows'][size]:.3f}x the device's chunk")  # fmt: skip
    print(f"largest difference from the device's chunk: {result['max_difference']:.1e}")


if __name__ == "__main__":
    main()
