"""Memory of pass 2's subsampling (``select_documents``): the documents of one language over
its budget are cut to it in a seeded random order. Peak memory traced by ``tracemalloc``
(numpy reports its arrays to it) beside the lengths themselves, per document, against the
running total of every document that it held before (the same documents are picked).

Example: .venv/bin/python benchmarks/select_memory.py --documents 20000000
"""

import argparse
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from xelm_cli.data.budgets import select_documents


def one_running_total(lengths: Any, budget: int, *, seed: int, language: str) -> Any:
    """What select_documents did before: the running total of every document at once."""
    order = np.random.default_rng([seed, *language.encode()]).permutation(len(lengths))
    taken = int(np.searchsorted(np.cumsum(lengths[order]), budget, side="right"))
    return np.sort(order[:taken])


def peak(select: Callable[..., Any], lengths: Any, budget: int) -> tuple[int, Any]:
    tracemalloc.start()
    picked = select(lengths, budget, seed=0, language="en")
    _, top = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return top, picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=20_000_000)
    parser.add_argument("--keep", type=float, default=0.1, help="Share of the tokens kept.")
    args = parser.parse_args()
    lengths = np.random.default_rng(0).integers(1, 2000, size=args.documents, dtype=np.int64)
    budget = int(lengths.sum() * args.keep)
    before, old = peak(one_running_total, lengths, budget)
    now, new = peak(select_documents, lengths, budget)
    assert np.array_equal(old, new), "the chunked running total picked other documents"
    n = args.documents
    print(f"{n:,} documents, {len(new):,} kept ({args.keep:.0%} of the tokens)")
    print(
        f"before: peak {before / 2**20:,.0f} MiB beside the lengths ({before / n:.1f} B a document)"
    )
    print(f"now:    peak {now / 2**20:,.0f} MiB beside the lengths ({now / n:.1f} B a document)")
    print(f"ratio now/before: {now / before:.2f}")


if __name__ == "__main__":
    main()
