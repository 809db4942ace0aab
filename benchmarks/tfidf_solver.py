"""TF-IDF balanced k-means: the exact solvers (lsa, transfers) against the auction on the same
cost matrices.

    python benchmarks/tfidf_solver.py [--sizes 250,500,1000,2000,4000] [-k 4,8]
        [--document-bytes 0,1500] [--lsa-max 4000] [--data ../shared/data] [--json FILE]

Every k-means batch of `xelm cluster tfidf` is split into equal-size clusters by a balanced
assignment, up to 20 times per batch, and ``--solver auto`` chooses between scipy's exact
``linear_sum_assignment`` ("lsa") and the epsilon-scaled auction by the batch's size
(``kmeans.LSA_MAX_DOCUMENTS``). This measures both on the matrices a fit meets:

- Documents: a uniform sample of the sample corpus's training files (``sample_documents``, seed
  0), the same number per language, as records (``--document-bytes 0``, the CLI's default) and
  as ~1500-byte documents; embedded as the clusterer embeds them (TF-IDF, 100 SVD dimensions).
- For each size n (a batch of n documents; the CLI's batches hold up to 4096) and k: the cost
  matrices (squared distances to the centroids) of fitting one batch as ``kmeans._fit_batch``
  fits the first one: k-means++ start, then up to 20 iterations until no centroid moves more
  than 1e-3, the cold auction's labels moving the centroids (the same matrices whatever the
  warm start does).
- On each of these matrices: lsa (batches up to --lsa-max documents: its time grows as n^3);
  the auction from zero prices ("cold"); the auction started from the previous iteration's
  prices ("warm"); transfers (negative-cycle cancelling) from its greedy start ("cold") and from
  the previous iteration's transfers labels ("warm": what the fit does from the second
  iteration). Seconds are summed over the batch's iterations. Cost gaps: the warm auction's and
  the warm transfers' total squared distance over the exact minimum (lsa's, or the cold
  transfers' where lsa is not run), minus one, largest over the iterations.

Prints measured numbers only; ``--json FILE`` also writes them.
"""

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from xelm_cli.api import sample_documents

LANGUAGES = ("en", "ru", "de", "fr", "es", "ja", "zh", "tr")
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
Result = TypeVar("Result")
Matrix = NDArray[np.float64]


def timed(call: Callable[..., Result], *args: Any, **kwargs: Any) -> tuple[float, Result]:
    started = time.perf_counter()
    result = call(*args, **kwargs)
    return time.perf_counter() - started, result


def embedded_pool(corpus: Path, count: int, document_bytes: int) -> Matrix:
    """SVD vectors of ``count`` sampled documents, equal numbers per language, shuffled."""
    from xelm_tfidf.analyzer import AnalyzerSettings
    from xelm_tfidf.embedder import TfidfSettings, fit_embedder
    from xelm_tfidf.fitting import stop_words_for

    per_language = -(-count // len(LANGUAGES))
    documents = sample_documents(
        corpus, languages=LANGUAGES, per_language=per_language, document_bytes=document_bytes
    )
    texts = [d.text for d in documents]
    analyzer = AnalyzerSettings(stop_words=stop_words_for(LANGUAGES))
    _, points = fit_embedder(texts, analyzer, TfidfSettings())
    return points[np.random.default_rng(0).permutation(len(points))]


def batch_costs(points: Matrix, k: int, max_iter: int = 20, tol: float = 1e-3) -> list[Matrix]:
    """The cost matrices of fitting ``points`` as one (first) k-means batch. The centroids move
    by the cold auction's labels, so that the matrices do not depend on the warm start being
    measured (its labels may differ where costs tie, and so the later iterations)."""
    from sklearn.cluster import kmeans_plusplus
    from xelm_tfidf.kmeans import assign_auction, equal_capacities, squared_distances

    centroids, _ = kmeans_plusplus(points, k, random_state=0)
    costs = []
    capacities = equal_capacities(points.shape[0], k)
    for _ in range(max_iter):
        cost = squared_distances(points, centroids)
        costs.append(cost)
        labels, _ = assign_auction(cost, capacities)
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, points)
        updated = sums / np.bincount(labels, minlength=k)[:, None]
        shift = float(np.linalg.norm(updated - centroids, axis=1).max())
        centroids = updated
        if shift <= tol:
            break
    return costs


def total_cost(cost: Matrix, labels: NDArray[np.int64]) -> float:
    return float(cost[np.arange(cost.shape[0]), labels].sum())


def compare_solvers(costs: list[Matrix], lsa: bool) -> dict[str, Any]:
    """Seconds of each solver summed over the matrices, and the warm solvers' largest cost
    gaps."""
    from xelm_tfidf.kmeans import assign_auction, assign_lsa, equal_capacities
    from xelm_tfidf.transfers import assign_transfers

    n, k = costs[0].shape
    capacities = equal_capacities(n, k)
    seconds = dict.fromkeys(("lsa", "auction_cold", "auction_warm", "transfers_cold",
                             "transfers_warm"), 0.0)  # fmt: skip
    auction_gaps, transfer_gaps = [], []
    prices, labels = None, None
    for cost in costs:
        cold_s, _ = timed(assign_auction, cost, capacities)
        warm_s, (auctioned, prices) = timed(assign_auction, cost, capacities, prices=prices)
        transfers_cold_s, exact = timed(assign_transfers, cost, capacities)
        transfers_warm_s, labels = timed(assign_transfers, cost, capacities, labels)
        if lsa:
            lsa_s, exact = timed(assign_lsa, cost, capacities)
            seconds["lsa"] += lsa_s
        seconds["auction_cold"] += cold_s
        seconds["auction_warm"] += warm_s
        seconds["transfers_cold"] += transfers_cold_s
        seconds["transfers_warm"] += transfers_warm_s
        minimum = total_cost(cost, exact)
        auction_gaps.append(total_cost(cost, auctioned) / minimum - 1.0)
        transfer_gaps.append(total_cost(cost, labels) / minimum - 1.0)
    return {
        "iterations": len(costs),
        **{
            f"{name}_s": round(value, 3) if lsa or name != "lsa" else None
            for name, value in seconds.items()
        },
        "auction_warm_over_transfers_warm": round(
            seconds["auction_warm"] / seconds["transfers_warm"], 1
        ),
        "auction_cost_gap": float(f"{max(auction_gaps):.2g}"),
        "transfers_cost_gap": float(f"{max(transfer_gaps):.2g}"),
    }


def machine() -> str:
    """The CPU's model name (Linux) or architecture, and the cores this process may use."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    model = names[0] if names else platform.machine()
    return f"{model}, {len(os.sched_getaffinity(0))} cores, {platform.system()}"


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import scipy

    rows = []
    corpus = args.data / "corpus" / "train"
    for document_bytes in args.document_bytes:
        pool = embedded_pool(corpus, max(args.sizes), document_bytes)
        for n in args.sizes:
            for k in args.k:
                costs = batch_costs(pool[:n], k)
                rows.append({"document_bytes": document_bytes, "n": n, "k": k})
                rows[-1].update(compare_solvers(costs, lsa=n <= args.lsa_max))
                print_row(rows[-1])
    return {
        "machine": machine(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "languages": list(LANGUAGES),
        "rows": rows,
    }


def print_row(row: dict[str, Any]) -> None:
    text = "records" if row["document_bytes"] == 0 else f"~{row['document_bytes']} B"
    lsa = "-" if row["lsa_s"] is None else f"{row['lsa_s']:.3f} s"
    print(
        f"{text:>8} n={row['n']:<5} k={row['k']:<2} iterations {row['iterations']:>2}: "
        f"lsa {lsa}, auction cold {row['auction_cold_s']:.3f} s, "
        f"warm {row['auction_warm_s']:.3f} s, transfers cold {row['transfers_cold_s']:.3f} s, "
        f"warm {row['transfers_warm_s']:.3f} s (auction/transfers warm "
        f"{row['auction_warm_over_transfers_warm']}); cost gaps: auction "
        f"{row['auction_cost_gap']:.1e}, transfers {row['transfers_cost_gap']:.1e}",
        flush=True,
    )


def integers(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=integers, default=[250, 500, 1000, 2000, 4000])
    parser.add_argument("-k", type=integers, default=[4, 8])
    parser.add_argument("--document-bytes", type=integers, default=[0, 1500])
    parser.add_argument(
        "--lsa-max", type=int, default=4000, help="Largest batch lsa is run on (minutes at 4000)."
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared/data folder.")
    parser.add_argument("--json", type=Path, help="Also write the numbers to this file.")
    args = parser.parse_args()
    report = measure(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
