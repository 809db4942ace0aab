"""Time of the MoE's language gate (``xelm moe --gate language``): each expert's mean router
input over held-out text, computed by the same function two ways on the CPU, in the
length-sorted padded batches it uses (``default_batch_tokens``) and one document per batch
(``batch_tokens`` 1), on a seed of the `gpu` demo preset's model (134M parameters with a
32,000-token BPE), with the largest difference between the two means.

Example: .venv/bin/python benchmarks/moe_gate.py --data ../shared/data --documents 50
"""

import argparse
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from gpu import preset_texts

from xelm_cli.bundle import moe
from xelm_cli.bundle.seed import NAMED_CONFIGS, init_from_config
from xelm_cli.bundle.store import Bundle
from xelm_cli.data.corpus import iter_documents
from xelm_cli.data.tokenizer import train_bpe_tokenizer
from xelm_cli.demo.presets import PRESETS


def gpu_preset_seed(data: Path, work: Path, languages: list[str]) -> Bundle:
    preset = PRESETS["gpu"]
    tokenizer = train_bpe_tokenizer(preset_texts(data), work / "tok", vocab_size=preset.vocab_size)
    NAMED_CONFIGS["gpu-preset"] = dict(preset.model)
    return init_from_config("gpu-preset", tokenizer, work / "seed", languages=languages)


def timed_means(seed: Bundle, documents: list[Any], batch_tokens: int | None) -> tuple[float, Any]:
    """Seconds and means of ``_mean_router_inputs``; ``batch_tokens`` replaces the default."""
    default = moe.default_batch_tokens
    if batch_tokens is not None:
        moe.default_batch_tokens = lambda device: batch_tokens  # type: ignore[assignment]
    try:
        layers = seed.load_config().num_hidden_layers
        started = time.perf_counter()
        means = moe._mean_router_inputs(seed, documents, layers, torch.device("cpu"))
        return time.perf_counter() - started, means
    finally:
        moe.default_batch_tokens = default  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--documents", type=int, default=50, help="of each language")
    parser.add_argument("--languages", default="en,de,sw,zh")
    parser.add_argument("--split", default="valid", choices=("valid", "train"), help="of corpus/")
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs of each way")
    args = parser.parse_args()
    languages = args.languages.split(",")
    documents = [
        document
        for language in languages
        for document in islice(
            iter_documents(args.data / "corpus" / args.split, languages=[language]), args.documents
        )
    ]
    with tempfile.TemporaryDirectory() as work:
        seed = gpu_preset_seed(args.data, Path(work), languages)
        parameters = sum(p.numel() for p in seed.load_model(verify=False).parameters())
        text = sum(len(document.text.encode()) for document in documents)
        print(
            f"seed: {parameters / 1e6:.1f}M parameters; {len(documents)} documents, {text:,} bytes"
        )
        print(f"batches of {moe.default_batch_tokens(torch.device('cpu')):,} padded tokens")
        batched, single, difference = [], [], 0.0
        for _ in range(args.repeat):
            seconds, means = timed_means(seed, documents, None)
            batched.append(seconds)
            seconds, alone = timed_means(seed, documents, 1)
            single.append(seconds)
            difference = max(difference, float((means - alone).abs().max()))
    print(f"batched:           {', '.join(f'{s:.1f}' for s in batched)} s")
    print(f"one document each: {', '.join(f'{s:.1f}' for s in single)} s")
    speedup = sorted(single)[len(single) // 2] / sorted(batched)[len(batched) // 2]
    print(f"speed-up (medians): {speedup:.2f}x")
    print(f"largest difference between the means: {difference:.1e}")


if __name__ == "__main__":
    main()
