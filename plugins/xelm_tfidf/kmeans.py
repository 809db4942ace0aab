"""Balanced k-means (c-BTM style): every fitting batch is split into equal-size clusters.

Fitting walks over shuffled mini-batches. Each batch is assigned to the centroids under an
equal-size constraint (every cluster gets floor(n/k) or ceil(n/k) of the batch's documents),
the centroids become running means of everything assigned so far, and this repeats up to
``max_iter`` times per batch until no centroid moves more than ``tol``. Each iteration after a
batch's first starts from the one before's assignment, which the transfers solver improves.

After fitting, one balanced assignment of all training documents (the auction) gives a price
per centroid; documents then go to argmin_i (squared distance_i + offset_i) with these prices
as offsets ("balanced", spec/allocation-tfidf.md section 3). This reproduces the equal-size
assignment on the training documents and extends it to any new text. The reference rule,
plain nearest centroid, is the all-zero offsets ("nearest").
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .transfers import assign_transfers

Matrix = NDArray[np.float64]
Labels = NDArray[np.int64]
SOLVERS = ("auto", "transfers", "auction", "lsa")
ASSIGNMENTS = ("balanced", "nearest")
COLD_START_DIVISOR = 4.0  # the first epsilon from zero prices: a quarter of the cost range
EPSILON_REDUCTION = 8.0  # each epsilon phase is this many times finer than the one before
# "auto": transfers up to this many clusters, the most measured (benchmarks/tfidf_solver.md,
# sample corpus, batches of 1,000 and 4,096: 12-156x faster than the auction, exact, and at
# 1,000 documents faster than lsa); beyond, lsa up to LSA_MAX_DOCUMENTS documents a batch and
# the auction above: lsa is 5-50x faster than the auction up to 500 documents and even at 1000
# on records, 4x slower at 2000 and 17-20x at 4000 (its time grows about as n^3).
TRANSFERS_MAX_K = 64
LSA_MAX_DOCUMENTS = 1000


@dataclass(frozen=True)
class KMeansSettings:
    k: int
    batch_size: int = 4096
    max_iter: int = 20
    tol: float = 1e-3
    seed: int = 0
    solver: str = "auto"


def squared_distances(points: Matrix, centroids: Matrix) -> Matrix:
    """(n, k) squared Euclidean distances, clipped at 0 against rounding."""
    d = (
        np.einsum("ij,ij->i", points, points)[:, None]
        - 2.0 * points @ centroids.T
        + np.einsum("ij,ij->i", centroids, centroids)[None, :]
    )
    return np.maximum(d, 0.0)


def nearest_centroid(points: Matrix, centroids: Matrix) -> Labels:
    return squared_distances(points, centroids).argmin(axis=1).astype(np.int64)


def offset_assignment(distances: Matrix, offsets: Matrix) -> Labels:
    """argmin_i (distances_i + offsets_i) per row, the lowest i on ties."""
    return (distances + offsets[None, :]).argmin(axis=1).astype(np.int64)


def assignment_offsets(points: Matrix, centroids: Matrix, assignment: str) -> Matrix:
    """Per-centroid offsets of an assignment rule (ASSIGNMENTS), shifted so the lowest is 0.

    "balanced": the auction's prices for an equal-size assignment of ``points``, so that
    ``offset_assignment`` sends every point where the auction did (up to eps-ties); "nearest":
    zeros, i.e. plain nearest centroid.
    """
    k = centroids.shape[0]
    if assignment == "nearest":
        return np.zeros(k)
    if assignment != "balanced":
        raise ValueError(f"unknown assignment {assignment!r} (known: {', '.join(ASSIGNMENTS)})")
    cost = squared_distances(points, centroids)
    _, prices = assign_auction(cost, equal_capacities(points.shape[0], k))
    return prices - prices.min()


def equal_capacities(n: int, k: int) -> NDArray[np.int64]:
    """floor(n/k) per cluster, one more for the first n mod k clusters."""
    capacities = np.full(k, n // k, dtype=np.int64)
    capacities[: n % k] += 1
    return capacities


def assign_lsa(cost: Matrix, capacities: NDArray[np.int64]) -> Labels:
    """Exact minimum-cost assignment: each cluster's column repeated to its capacity.

    Memory and time grow as n^2 and about n^3: fine up to a few thousand documents.
    """
    slots = np.repeat(np.arange(cost.shape[1]), capacities)
    from scipy.optimize import linear_sum_assignment  # slow to import: only when fitting

    rows, columns = linear_sum_assignment(cost[:, slots])
    labels = np.empty(cost.shape[0], dtype=np.int64)
    labels[rows] = slots[columns]
    return labels


def assign_auction(
    cost: Matrix,
    capacities: NDArray[np.int64],
    eps: float = 1e-4,
    prices: Matrix | None = None,
) -> tuple[Labels, Matrix]:
    """Minimum-cost assignment under capacities by a forward auction with epsilon scaling.

    Documents bid for clusters; a cluster keeps its ``capacity`` highest bids and its price is
    the lowest bid it keeps. Bids are placed by all unassigned documents at once (Jacobi), so
    the result is optimal within about n * eps in the worst case and usually exact. Returns the
    labels and the final prices; passing the prices of a similar earlier problem (the previous
    k-means iteration) as ``prices`` starts from them and skips the coarse phases finer than
    their error (``_warm_start_step``), all of them when they already clear. A cluster of
    capacity 0 (fewer documents than clusters) gets none, at price +inf.
    """
    open_clusters = np.flatnonzero(capacities > 0)
    if open_clusters.size < capacities.size:
        labels, open_prices = assign_auction(
            cost[:, open_clusters],
            capacities[open_clusters],
            eps,
            None if prices is None else prices[open_clusters],
        )
        all_prices = np.full(capacities.size, np.inf)
        all_prices[open_clusters] = open_prices
        return open_clusters[labels], all_prices
    value = -cost
    scale = max(float(np.ptp(value)), eps)
    step = scale / COLD_START_DIVISOR
    if prices is None:
        prices = np.zeros(cost.shape[1])  # the price of each cluster's cheapest slot
    else:
        prices = prices.copy()
        step = _warm_start_step(step, _price_error(value, capacities, prices), eps)
    while True:
        labels = _auction_phase(value, capacities, prices, step)
        if step <= eps:
            return labels, prices
        step = max(step / EPSILON_REDUCTION, eps)


def _price_error(value: Matrix, capacities: NDArray[np.int64], prices: Matrix) -> float:
    """How far ``prices`` are from clearing: the largest rise one cluster's price needs, the
    others fixed, before no more documents prefer it than it holds (0 when none is
    over-demanded, i.e. everyone already gets a best cluster)."""
    n, k = value.shape
    if k < 2:
        return 0.0
    net = value - prices
    top_two = np.argpartition(net, k - 2, axis=1)[:, -2:]
    rows = np.arange(n)
    first, second = net[rows, top_two[:, 0]], net[rows, top_two[:, 1]]
    best = np.where(first > second, top_two[:, 0], top_two[:, 1])
    margin = np.abs(first - second)  # how much more each document values its best cluster
    error = 0.0
    for cluster in range(k):
        margins = margin[best == cluster]
        excess = margins.size - int(capacities[cluster])
        if excess > 0:
            # The price must pass the margin of the excess-th least attached document.
            error = max(error, float(np.partition(margins, excess - 1)[excess - 1]))
    return error


def _warm_start_step(cold_step: float, price_error: float, eps: float) -> float:
    """The first epsilon from earlier prices: the finest step of the cold schedule that is
    still at least their error. A step much finer than the error makes the first phase raise
    prices by many tiny bids (thousands of rounds: benchmarks/tfidf_solver.md); one on the
    cold schedule but below its coarse start keeps the earlier prices' head start."""
    step = cold_step
    while step / EPSILON_REDUCTION >= max(price_error, eps):
        step /= EPSILON_REDUCTION
    return step


def _auction_phase(
    value: Matrix, capacities: NDArray[np.int64], prices: Matrix, eps: float
) -> Labels:
    """One epsilon phase. Each cluster keeps its holders sorted by bid (lowest first), so a
    round with few bidders costs a merge, not a sort of the whole cluster."""
    n, k = value.shape
    labels = np.full(n, -1, dtype=np.int64)
    holders = [np.empty(0, dtype=np.int64) for _ in range(k)]
    held_bids = [np.empty(0) for _ in range(k)]
    second_prices = prices.copy()
    unassigned = np.arange(n)
    while unassigned.size:
        net = value[unassigned] - prices
        best = net.argmax(axis=1)
        rows = np.arange(unassigned.size)
        best_net = net[rows, best]
        net[rows, best] = value[unassigned, best] - second_prices[best]
        runner_up = net.max(axis=1) if k > 1 else best_net - eps
        offers = prices[best] + (best_net - runner_up) + eps
        evicted: list[NDArray[np.int64]] = []
        for cluster in np.unique(best):
            chosen = best == cluster
            bidders, bids = unassigned[chosen], offers[chosen]
            # Ascending by bid; among equal bids the earlier bidder ends higher (is kept).
            order = np.argsort(-bids, kind="stable")[::-1]
            at = np.searchsorted(held_bids[cluster], bids[order], side="left")
            merged = np.insert(holders[cluster], at, bidders[order])
            merged_bids = np.insert(held_bids[cluster], at, bids[order])
            labels[bidders] = cluster
            drop = max(merged.size - int(capacities[cluster]), 0)
            if drop:
                labels[merged[:drop]] = -1
                evicted.append(merged[:drop])
            holders[cluster], held_bids[cluster] = merged[drop:], merged_bids[drop:]
            if drop or merged.size == capacities[cluster]:
                prices[cluster] = held_bids[cluster][0]
                second_prices[cluster] = (
                    held_bids[cluster][1] if held_bids[cluster].size > 1 else prices[cluster]
                )
        unassigned = np.concatenate(evicted) if evicted else np.empty(0, dtype=np.int64)
    return labels


def assign_balanced(
    cost: Matrix,
    solver: str = "auto",
    prices: Matrix | None = None,
    start: Labels | None = None,
) -> tuple[Labels, Matrix | None]:
    """Labels minimising total cost with equal cluster sizes (within 1), and the auction's
    prices (None from the exact solvers) to warm-start the next, similar call; the transfers
    solver starts from ``start`` instead (the previous call's labels) when given."""
    n, k = cost.shape
    capacities = equal_capacities(n, k)
    if solver == "auto":
        if k <= TRANSFERS_MAX_K:
            solver = "transfers"
        else:
            solver = "lsa" if n <= LSA_MAX_DOCUMENTS else "auction"
    if solver == "transfers":
        return assign_transfers(cost, capacities, start), None
    if solver == "lsa":
        return assign_lsa(cost, capacities), None
    if solver == "auction":
        return assign_auction(cost, capacities, prices=prices)
    raise ValueError(f"unknown solver {solver!r} (known: {', '.join(SOLVERS)})")


def _batches(n: int, size: int, rng: np.random.Generator) -> Iterator[NDArray[np.int64]]:
    order = rng.permutation(n)
    for start in range(0, n, size):
        yield order[start : start + size]


def fit_balanced_kmeans(
    points: Matrix,
    settings: KMeansSettings,
    on_batch: Callable[[int], None] | None = None,
) -> Matrix:
    """Centroids (k, d) of balanced mini-batch k-means; deterministic for a seed."""
    n, k = points.shape[0], settings.k
    if not 1 <= k <= n:
        raise ValueError(f"k={k} needs 1 <= k <= {n} (the number of documents)")
    rng = np.random.default_rng(settings.seed)
    batches = list(_batches(n, max(settings.batch_size, k), rng))
    first = points[batches[0]]
    from sklearn.cluster import kmeans_plusplus  # ~1 s to import: only when fitting

    centroids, _ = kmeans_plusplus(first, k, random_state=settings.seed)
    centroids = np.asarray(centroids, dtype=np.float64)
    counts = np.zeros(k)
    for batch in batches:
        centroids, counts = _fit_batch(points[batch], centroids, counts, settings)
        if on_batch is not None:
            on_batch(batch.size)
    return centroids


def _fit_batch(
    batch: Matrix, centroids: Matrix, counts: Matrix, settings: KMeansSettings
) -> tuple[Matrix, Matrix]:
    """Refine the assignment of one batch; centroids become running means including it."""
    k = centroids.shape[0]
    sums_before = centroids * counts[:, None]
    current, prices, labels = centroids, None, None
    for _ in range(settings.max_iter):
        cost = squared_distances(batch, current)
        labels, prices = assign_balanced(cost, settings.solver, prices, labels)
        sizes = np.bincount(labels, minlength=k).astype(np.float64)
        sums = sums_before.copy()
        np.add.at(sums, labels, batch)
        totals = counts + sizes
        updated = np.where(totals[:, None] > 0, sums / np.maximum(totals, 1)[:, None], current)
        shift = float(np.linalg.norm(updated - current, axis=1).max())
        current = updated
        if shift <= settings.tol:
            break
    return current, counts + sizes
