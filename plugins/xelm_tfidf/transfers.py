"""Exact balanced assignment by transfers between clusters (negative-cycle cancelling).

When every cluster holds exactly its capacity, an assignment can only change by moving
documents around cycles of clusters (a -> b -> ... -> a, one document along each edge). Moving
document i from cluster a to b changes the total cost by cost[i, b] - cost[i, a]; the cheapest
such move is the edge a -> b of a k-node graph, and the assignment is optimal exactly when that
graph has no negative cycle (the optimality condition of the transportation problem). So from
any feasible start, applying negative cycles until there are none reaches the exact minimum,
and it ends, since every application lowers the total cost. Swaps (cycles of two clusters) are
applied in bulk: the j-th cheapest move a -> b with the j-th cheapest b -> a, while the pair
lowers the cost.

A round is a few passes over the (n, k) costs plus a k-node Bellman-Ford, and the rounds grow
with the moves needed: from the previous k-means iteration's assignment a handful, from the
greedy start of a batch's first iteration tens (benchmarks/tfidf_solver.md).
"""

import numpy as np
from numpy.typing import NDArray

Matrix = NDArray[np.float64]
Labels = NDArray[np.int64]
TOLERANCE = 1e-12  # of the cost range: a move must lower the total cost by more to count


def assign_transfers(
    cost: Matrix, capacities: NDArray[np.int64], start: Labels | None = None
) -> Labels:
    """Minimum-cost labels with ``capacities[j]`` documents in cluster j (summing to n),
    improved from ``start`` (a feasible assignment, such as the previous k-means iteration's;
    not changed) or from ``greedy_start``. A cluster of capacity 0 gets none."""
    n, k = cost.shape
    if int(capacities.sum()) != n:
        raise ValueError(f"capacities sum to {int(capacities.sum())}, not the {n} documents")
    open_clusters = np.flatnonzero(capacities > 0)
    if open_clusters.size < k:
        index = np.full(k, -1, dtype=np.int64)
        index[open_clusters] = np.arange(open_clusters.size)
        inner = assign_transfers(
            cost[:, open_clusters],
            capacities[open_clusters],
            None if start is None else index[start],
        )
        return open_clusters[inner]
    if start is None:
        labels = greedy_start(cost, capacities)
    else:
        labels = np.array(start, dtype=np.int64)
        if labels.shape != (n,) or not np.array_equal(np.bincount(labels, minlength=k), capacities):
            raise ValueError("the start does not fill every cluster to its capacity")
    tolerance = TOLERANCE * max(float(np.ptp(cost)), 1.0)
    rows = np.arange(n)
    while True:
        gain = cost - cost[rows, labels][:, None]  # of moving each document to each cluster
        members = [np.flatnonzero(labels == cluster) for cluster in range(k)]
        cheapest, movers = _cheapest_moves(gain, members)
        if _swap_pairs(gain, labels, members, cheapest, tolerance):
            continue
        cycle = _negative_cycle(cheapest, tolerance)
        if cycle is None:
            return labels
        following = np.roll(cycle, -1)
        labels[movers[cycle, following]] = following


def greedy_start(cost: Matrix, capacities: NDArray[np.int64]) -> Labels:
    """A feasible assignment near the optimum: each round, every waiting document asks for its
    cheapest cluster with room, and a cluster asked by more than it has room for takes those
    that would lose most by going to their second choice."""
    n = cost.shape[0]
    labels = np.full(n, -1, dtype=np.int64)
    room = capacities.astype(np.int64).copy()
    waiting = np.arange(n)
    while waiting.size:
        costs = np.where(room > 0, cost[waiting], np.inf)
        best = costs.argmin(axis=1)
        regret = np.zeros(waiting.size)
        if np.count_nonzero(room) > 1:
            regret = np.partition(costs, 1, axis=1)[:, 1] - costs[np.arange(waiting.size), best]
        for cluster in np.unique(best):
            asking = np.flatnonzero(best == cluster)
            taken = asking[np.argsort(-regret[asking], kind="stable")[: room[cluster]]]
            labels[waiting[taken]] = cluster
            room[cluster] -= taken.size
        waiting = waiting[labels[waiting] < 0]
    return labels


def _cheapest_moves(
    gain: Matrix, members: list[NDArray[np.int64]]
) -> tuple[Matrix, NDArray[np.int64]]:
    """(k, k) cost of the cheapest move from cluster a to b and the document that makes it
    (the diagonal: +inf); ``members[a]``: cluster a's documents."""
    k = len(members)
    cheapest = np.empty((k, k))
    movers = np.empty((k, k), dtype=np.int64)
    columns = np.arange(k)
    for cluster, documents in enumerate(members):
        best = gain[documents].argmin(axis=0)
        cheapest[cluster] = gain[documents[best], columns]
        movers[cluster] = documents[best]
    np.fill_diagonal(cheapest, np.inf)
    return cheapest, movers


def _swap_pairs(
    gain: Matrix,
    labels: Labels,
    members: list[NDArray[np.int64]],
    cheapest: Matrix,
    tolerance: float,
) -> bool:
    """Swap documents between every pair of clusters whose cheapest swap lowers the cost, most
    negative pairs first, each cluster in one pair a round (so its ``members`` and their gains
    are still those of the round's start); whether any moved."""
    pair_costs = cheapest + cheapest.T
    first, second = np.nonzero(np.triu(pair_costs < -tolerance, 1))
    used: set[int] = set()
    for index in np.argsort(pair_costs[first, second], kind="stable"):
        a, b = int(first[index]), int(second[index])
        if a in used or b in used:
            continue
        used.update((a, b))
        in_a, in_b = members[a], members[b]
        to_b = in_a[np.argsort(gain[in_a, b], kind="stable")]
        to_a = in_b[np.argsort(gain[in_b, a], kind="stable")]
        pairs = min(to_b.size, to_a.size)
        # both ascending, so the sums are too: the pairs that lower the cost come first
        lowers = gain[to_b[:pairs], b] + gain[to_a[:pairs], a] < -tolerance
        swapped = int(np.count_nonzero(lowers))
        labels[to_b[:swapped]] = b
        labels[to_a[:swapped]] = a
    return bool(used)


def _negative_cycle(weights: Matrix, tolerance: float) -> NDArray[np.int64] | None:
    """The clusters of a negative cycle of the complete graph ``weights`` (edge a -> b), in
    order, or None when it has none (Bellman-Ford from a source joined to every node)."""
    k = weights.shape[0]
    distance = np.zeros(k)
    parent = np.full(k, -1, dtype=np.int64)
    columns = np.arange(k)
    for _ in range(k):
        through = distance[:, None] + weights
        via = through.argmin(axis=0)
        shortest = through[via, columns]
        lowered = shortest < distance - tolerance
        if not lowered.any():
            return None
        distance = np.where(lowered, shortest, distance)
        parent = np.where(lowered, via, parent)
    node = int(np.flatnonzero(lowered)[0])
    for _ in range(k):  # k steps back from a node lowered in round k: on the cycle
        node = int(parent[node])
        if node < 0:  # not in exact arithmetic; a tolerance-sized cycle at most
            return None
    cycle = [node]
    while (previous := int(parent[cycle[-1]])) != node:
        cycle.append(previous)
    ordered = np.asarray(cycle[::-1], dtype=np.int64)
    total = float(weights[ordered, np.roll(ordered, -1)].sum())
    return ordered if total < -tolerance else None
