"""Bundle I/O: branch vs full copy, pack/unpack and verify throughput, on a >= 500 MB bundle,
and a verified open (hashing every file) vs an open whose verification is remembered.

    python benchmarks/bundle_io.py [--size-mb 520] [--workdir /tmp] [--repeat 3]

Prints measured numbers only. Files are read from the page cache after the first pass (the
bundle was just written), so throughputs are CPU-bound (sha256, zstd), not disk-bound.
"""

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from xelm_cli.bundle.archive import pack_bundle, unpack_bundle
from xelm_cli.bundle.branching import branch
from xelm_cli.bundle.store import Bundle, verify_bundle, write_bundle
from xelm_cli.data.tokenizer import train_bpe_tokenizer

SAMPLE_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval" / "udhr" / "en.txt"


def make_bundle(workdir: Path, size_mb: int) -> Bundle:
    lines = SAMPLE_TEXT.read_text().splitlines() if SAMPLE_TEXT.exists() else ["xelm bundles"]
    tokenizer_dir = train_bpe_tokenizer(lines, workdir / "tok", vocab_size=2000)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    hidden, inter = 768, 2048
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    embeddings = 2 * len(tokenizer) * hidden
    layers = max(1, -(-(size_mb * 1_000_000 // 4 - embeddings) // per_layer))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=12,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    step = {"relation": "init", "parents": [], "source": {"kind": "config", "name": "benchmark"}}
    with write_bundle(workdir / "seed", role="seed", languages=["en"], step=step) as writer:
        writer.save_model(model)
        writer.save_tokenizer(tokenizer)
    assert writer.result is not None
    return writer.result


def timed(action: Callable[[int], object], repeat: int, cleanup: Callable[[int], None]) -> float:
    """Median wall time of ``action(i)`` over ``repeat`` runs."""
    times = []
    for i in range(repeat):
        start = time.perf_counter()
        action(i)
        times.append(time.perf_counter() - start)
        cleanup(i)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=520)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="xelm-bench-", dir=args.workdir))
    try:
        os.environ["XELM_CACHE_DIR"] = str(work / "cache")  # remembered verifications: ours only
        seed = make_bundle(work, args.size_mb)
        mb = seed.size / 1e6
        time.sleep(1.1)  # files written within a second of their hashing are not remembered
        os.environ["XELM_VERIFY_CACHE"] = "0"
        t_hashed = timed(lambda i: Bundle.open(seed.path), args.repeat, lambda i: None)
        del os.environ["XELM_VERIFY_CACHE"]
        Bundle.open(seed.path)
        t_remembered = timed(lambda i: Bundle.open(seed.path), args.repeat, lambda i: None)
        rm = lambda p: shutil.rmtree(p, ignore_errors=True)  # noqa: E731
        # Branches stay until all are timed: unlinking one changes the parent's change times,
        # so the next branch would hash the parent again (a remembered verification is dropped).
        t_branch = timed(lambda i: branch(seed.path, work / f"b{i}"), args.repeat, lambda i: None)
        t_copy = timed(
            lambda i: shutil.copytree(seed.path, work / f"c{i}"),
            args.repeat,
            lambda i: rm(work / f"c{i}"),
        )
        t_verify = timed(lambda i: verify_bundle(seed.path), args.repeat, lambda i: None)
        archive = work / "seed.xelm.tar.zst"
        t_pack = timed(
            lambda i: pack_bundle(seed.path, archive, overwrite=True), args.repeat, lambda i: None
        )
        t_unpack = timed(
            lambda i: unpack_bundle(archive, work / f"u{i}"),
            args.repeat,
            lambda i: rm(work / f"u{i}"),
        )
        result = {
            "bundle_mb": round(mb, 1),
            "branch_s": round(t_branch, 4),
            "copy_s": round(t_copy, 4),
            "copy_over_branch": round(t_copy / t_branch, 1),
            "pack_mb_per_s": round(mb / t_pack, 1),
            "archive_mb": round(archive.stat().st_size / 1e6, 1),
            "unpack_mb_per_s": round(mb / t_unpack, 1),
            "verify_mb_per_s": round(mb / t_verify, 1),
            "open_hashed_s": round(t_hashed, 4),
            "open_remembered_s": round(t_remembered, 5),
            "hashed_over_remembered": round(t_hashed / t_remembered),
            "repeat": args.repeat,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"bundle: {result['bundle_mb']} MB (median of {args.repeat} runs each)")
    print(
        f"branch: {result['branch_s']:.4f} s   full copy: {result['copy_s']:.3f} s   "
        f"copy/branch = {result['copy_over_branch']}x"
    )
    print(f"pack:   {result['pack_mb_per_s']} MB/s (archive {result['archive_mb']} MB)")
    print(f"unpack: {result['unpack_mb_per_s']} MB/s (verified while extracting)")
    print(f"verify: {result['verify_mb_per_s']} MB/s")
    print(
        f"open:   {result['open_hashed_s']:.3f} s hashing every file, "
        f"{result['open_remembered_s']:.5f} s remembered "
        f"({result['hashed_over_remembered']}x faster)"
    )


if __name__ == "__main__":
    main()
