"""Balanced k-means (c-BTM style): every fitting batch is split into equal-size clusters.

Fitting walks over shuffled mini-batches. Each batch is assigned to the centroids under an
equal-size constraint (every cluster gets floor(n/k) or ceil(n/k) of the batch's documents),
the centroids become running means of everything assigned so far, and this repeats up to
``max_iter`` times per batch until no centroid moves more than ``tol``. After fitting, documents
go to their nearest centroid with no size constraint.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Matrix = NDArray[np.float64]
Labels = NDArray[np.int64]
SOLVERS = ("auto", "auction", "lsa")
WARM_START_DIVISOR = 512.0
LSA_MAX_DOCUMENTS = 2000  # "auto": measured faster than the auction up to about this size


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
    k-means iteration) as ``prices`` starts near the answer and skips the coarse phases.
    """
    value = -cost
    scale = max(float(np.ptp(value)), eps)
    if prices is None:
        prices = np.zeros(cost.shape[1])  # the price of each cluster's cheapest slot
        step = scale / 4.0
    else:
        prices = prices.copy()
        step = max(scale / WARM_START_DIVISOR, eps)
    while True:
        labels = _auction_phase(value, capacities, prices, step)
        if step <= eps:
            return labels, prices
        step = max(step / 8.0, eps)


def _auction_phase(
    value: Matrix, capacities: NDArray[np.int64], prices: Matrix, eps: float
) -> Labels:
    n, k = value.shape
    labels = np.full(n, -1, dtype=np.int64)
    bids = np.zeros(n)
    second_prices = prices.copy()
    while (unassigned := np.flatnonzero(labels < 0)).size:
        net = value[unassigned] - prices
        best = net.argmax(axis=1)
        rows = np.arange(unassigned.size)
        best_net = net[rows, best]
        net[rows, best] = value[unassigned, best] - second_prices[best]
        runner_up = net.max(axis=1) if k > 1 else best_net - eps
        offers = prices[best] + (best_net - runner_up) + eps
        for cluster in np.unique(best):
            bidders = unassigned[best == cluster]
            holders = np.flatnonzero(labels == cluster)
            everyone = np.concatenate([holders, bidders])
            offered = np.concatenate([bids[holders], offers[best == cluster]])
            keep = capacities[cluster]
            order = np.argsort(-offered, kind="stable")
            labels[everyone[order[keep:]]] = -1
            winners = order[:keep]
            labels[everyone[winners]] = cluster
            bids[everyone[winners]] = offered[winners]
            kept = np.sort(offered[winners])
            full = kept.size == keep
            prices[cluster] = kept[0] if full else prices[cluster]
            second_prices[cluster] = kept[1] if full and keep > 1 else prices[cluster]
    return labels


def assign_balanced(
    cost: Matrix, solver: str = "auto", prices: Matrix | None = None
) -> tuple[Labels, Matrix | None]:
    """Labels minimising total cost with equal cluster sizes (within 1), and the auction's
    prices (None from the exact solver) to warm-start the next, similar call."""
    capacities = equal_capacities(cost.shape[0], cost.shape[1])
    if solver == "auto":
        solver = "lsa" if cost.shape[0] <= LSA_MAX_DOCUMENTS else "auction"
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
    current, prices = centroids, None
    for _ in range(settings.max_iter):
        cost = squared_distances(batch, current)
        labels, prices = assign_balanced(cost, settings.solver, prices)
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
