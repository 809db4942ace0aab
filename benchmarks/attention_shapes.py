"""Scoring's attention backend: xelm's (every backend but cuDNN's) against PyTorch's own order.

    python benchmarks/attention_shapes.py [--device cpu|cuda] [--hidden 1024] [--layers 8]
                                          [--vocab 4000] [--tokens 1000000] [--decode 200]
                                          [--json]

Scoring batches documents by length, so nearly every batch has a shape of its own, and a
generated token makes the key-value cache one position longer. On Hopper and Blackwell GPUs,
with a bundled cuDNN of 9.15.1 or newer (PyTorch 2.11's CUDA 13 wheels), PyTorch tries cuDNN's
attention first, and cuDNN builds an execution plan for each shape it has not seen yet.
`xelm_cli.ensemble.scoring.without_cudnn_attention` keeps scoring's forwards off it.

Each arm runs in a fresh process (a plan, once built, stays cached in its process) on the
same random-weight Llama (bf16 on a GPU) and the same random documents of 20-120 tokens:
`score_sequences` over them twice (the first pass meets every batch shape for the first time,
the second again), then `--decode` single-token forwards after a 16-token prompt, each one
position longer (generation's shape). It prints each arm's seconds, milliseconds a batch and a
decoded token, and the ratios of PyTorch's order to xelm's. On a CPU both arms run the same
kernels (cuDNN is a GPU library): a check of the script.
"""

import argparse
import contextlib
import json
import sys
import time
from typing import Any

import numpy as np
import torch
from profiling import sync
from transformers import LlamaConfig, LlamaForCausalLM
from workers import printed_json

from xelm_cli.ensemble import scoring
from xelm_cli.ensemble.scoring import LoadedModel, new_cache, pick_device, score_sequences

ARMS = {"xelm": "xelm: every backend but cuDNN", "default": "PyTorch's order"}
MAX_LENGTH = 512


def attention_setup(device: Any) -> dict[str, Any]:
    """The versions and order that decide the backend; an attention call first, since PyTorch
    settles its default order at the first."""
    if device.type != "cuda":
        return {}
    q = torch.zeros(1, 1, 8, 64, device=device, dtype=torch.bfloat16)
    torch.nn.functional.scaled_dot_product_attention(q, q, q)
    names = {int(b): b.name for b in torch.nn.attention.SDPBackend}  # type: ignore[attr-defined]
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "sdpa_order": [names.get(b, str(b)) for b in torch._C._get_sdp_priority_order()],
    }


def worker(arm: str, args: argparse.Namespace) -> dict[str, Any]:
    if arm == "default":  # the forwards under PyTorch's own backend order
        scoring.without_cudnn_attention = contextlib.nullcontext  # type: ignore[assignment]
    device = pick_device(args.device)
    setup = attention_setup(device)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
        intermediate_size=args.hidden * 11 // 4, num_attention_heads=max(1, args.hidden // 64),
        num_key_value_heads=max(1, args.hidden // 64), max_position_embeddings=MAX_LENGTH,
    )  # fmt: skip
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = LlamaForCausalLM(config).to(device, dtype).eval()
    loaded = LoadedModel(model, device, MAX_LENGTH)
    rng = np.random.default_rng(0)
    documents: list[list[int]] = []
    while sum(map(len, documents)) < args.tokens:
        documents.append([1, *rng.integers(2, args.vocab, size=int(rng.integers(20, 121)))])
    batches: list[int] = []
    passes = []
    for _ in range(2):
        batches.clear()
        sync(device.type)
        start = time.perf_counter()
        score_sequences([loaded], [1.0], documents, batch_tokens=args.batch_tokens,
                        advance=batches.append)  # fmt: skip
        sync(device.type)
        passes.append(time.perf_counter() - start)
    prompt = torch.tensor([documents[0][:16]], device=device)
    with torch.inference_mode():
        _, cache = loaded.states(prompt, None, new_cache(model.model))
        token = prompt[:, -1:]
        sync(device.type)
        start = time.perf_counter()
        for _ in range(args.decode):
            _, cache = loaded.states(token, None, cache)
        sync(device.type)
    decode = time.perf_counter() - start
    return {"first_pass_s": passes[0], "second_pass_s": passes[1], "batches": len(batches),
            "tokens": sum(map(len, documents)), "decode_s": decode, **setup}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=4000)
    parser.add_argument("--tokens", type=int, default=1_000_000, help="of the documents")
    parser.add_argument("--decode", type=int, default=200, help="single-token forwards")
    parser.add_argument("--batch-tokens", type=int, help="default: the device's budget")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", choices=list(ARMS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch_tokens is None:
        args.batch_tokens = scoring.default_batch_tokens(pick_device(args.device))
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    arms = {}
    for arm in ARMS:
        argv = [sys.executable, __file__, *sys.argv[1:], "--worker", arm]
        arms[arm] = printed_json(argv)
    xelm, default = arms["xelm"], arms["default"]
    result = {
        "device": args.device, "hidden": args.hidden, "layers": args.layers,
        "vocab": args.vocab, "batch_tokens": args.batch_tokens, "decode_steps": args.decode,
        "arms": arms,
        "default_vs_xelm": {key: default[key] / xelm[key]
                            for key in ("first_pass_s", "second_pass_s", "decode_s")},
    }  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.device}: Llama hidden {args.hidden} x {args.layers} layers, {xelm['tokens']:,} "
          f"tokens in {xelm['batches']} batches of {args.batch_tokens:,}; "
          f"{args.decode} decode steps")  # fmt: skip
    print(f"{'arm':<34}{'1st pass s':>11}{'ms/batch':>10}{'2nd pass s':>11}{'ms/token':>10}")
    for arm, r in arms.items():
        print(f"{ARMS[arm]:<34}{r['first_pass_s']:>11.3f}"
              f"{1000 * r['first_pass_s'] / r['batches']:>10.1f}{r['second_pass_s']:>11.3f}"
              f"{1000 * r['decode_s'] / args.decode:>10.2f}")  # fmt: skip
    print("PyTorch's order / xelm's: " + ", ".join(
        f"{key} {ratio:.2f}" for key, ratio in result["default_vs_xelm"].items()))  # fmt: skip


if __name__ == "__main__":
    main()
