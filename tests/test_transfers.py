"""The transfers solver of balanced assignment (plugins/xelm_tfidf/transfers.py): exact from
any feasible start, against scipy's linear_sum_assignment and an enumeration."""

import itertools

import numpy as np
import pytest
from xelm_tfidf.embedder import normalize_rows
from xelm_tfidf.kmeans import (
    KMeansSettings,
    assign_lsa,
    equal_capacities,
    fit_balanced_kmeans,
    squared_distances,
)
from xelm_tfidf.transfers import assign_transfers, greedy_start


def _total(cost, labels) -> float:
    return float(cost[np.arange(cost.shape[0]), labels].sum())


def _costs(kind: str, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "uniform":
        return rng.random((n, k))
    if kind == "ties":  # few distinct values: many optimal assignments
        return rng.integers(0, 3, size=(n, k)).astype(np.float64)
    points = np.repeat(normalize_rows(rng.normal(size=(n // 3 + 1, 6))), 3, axis=0)[:n]
    return squared_distances(points, normalize_rows(rng.normal(size=(k, 6))))  # each point 3x


@pytest.mark.parametrize("kind", ["uniform", "ties", "duplicates"])
def test_exact_from_the_greedy_start_and_from_any_feasible_start(kind):
    rng = np.random.default_rng(["uniform", "ties", "duplicates"].index(kind))
    for _ in range(60):
        n, k = int(rng.integers(1, 90)), int(rng.integers(1, 9))
        cost = _costs(kind, n, k, rng)
        capacities = equal_capacities(n, k)
        minimum = _total(cost, assign_lsa(cost, capacities))
        shuffled = rng.permutation(np.repeat(np.arange(k), capacities))
        for start in (None, shuffled):
            labels = assign_transfers(cost, capacities, start)
            np.testing.assert_array_equal(np.bincount(labels, minlength=k), capacities)
            assert _total(cost, labels) == pytest.approx(minimum, rel=1e-12, abs=1e-12)


def test_optimal_on_a_case_small_enough_to_enumerate():
    """Needs a cycle of three clusters, not only swaps: from this start no pair of documents
    gains by swapping, yet moving 0 -> 1, 1 -> 2, 2 -> 0 does."""
    cost = np.array([[1.0, 0.0, 5.0], [5.0, 1.0, 0.0], [0.0, 5.0, 1.0]])
    capacities = equal_capacities(3, 3)
    labels = assign_transfers(cost, capacities, np.array([0, 1, 2]))
    best = min(_total(cost, np.array(p)) for p in itertools.permutations(range(3)))
    assert _total(cost, labels) == best == 0.0
    np.testing.assert_array_equal(labels, [1, 2, 0])


def test_the_start_is_not_changed_and_an_optimal_one_is_kept():
    rng = np.random.default_rng(7)
    cost = rng.random((40, 4))
    capacities = equal_capacities(40, 4)
    start = rng.permutation(np.repeat(np.arange(4), capacities))
    before = start.copy()
    optimal = assign_transfers(cost, capacities, start)
    np.testing.assert_array_equal(start, before)
    np.testing.assert_array_equal(assign_transfers(cost, capacities, optimal), optimal)


def test_clusters_without_capacity_get_nothing():
    """Fewer documents than clusters (a last batch smaller than k)."""
    rng = np.random.default_rng(5)
    cost = rng.random((2, 4))
    capacities = equal_capacities(2, 4)
    labels = assign_transfers(cost, capacities)
    np.testing.assert_array_equal(labels, assign_lsa(cost, capacities))
    assert set(labels.tolist()) <= {0, 1}


def test_an_infeasible_start_is_refused():
    cost = np.zeros((4, 2))
    with pytest.raises(ValueError, match="capacity"):
        assign_transfers(cost, equal_capacities(4, 2), np.array([0, 0, 0, 1]))
    with pytest.raises(ValueError, match="sum to 3"):
        assign_transfers(cost, np.array([2, 1]))


def test_greedy_start_fills_every_cluster_and_gives_free_choices_their_best():
    rng = np.random.default_rng(9)
    cost = rng.random((103, 5))
    capacities = equal_capacities(103, 5)
    labels = greedy_start(cost, capacities)
    np.testing.assert_array_equal(np.bincount(labels, minlength=5), capacities)
    apart = 1.0 - np.eye(5) + rng.random((5, 5)) * 0.1  # document i's best is cluster i
    np.testing.assert_array_equal(greedy_start(apart, np.ones(5, dtype=np.int64)), np.arange(5))


def test_kmeans_with_transfers_fits_the_centroids_lsa_fits():
    """Same exact minimum each iteration, so the same centroids (the points are in general
    position: no ties)."""
    rng = np.random.default_rng(3)
    points = normalize_rows(rng.normal(size=(300, 5)) + np.array([1.5, 0, 0, 0, 0]))
    transfers = fit_balanced_kmeans(points, KMeansSettings(k=4, batch_size=128, solver="transfers"))
    exact = fit_balanced_kmeans(points, KMeansSettings(k=4, batch_size=128, solver="lsa"))
    np.testing.assert_allclose(transfers, exact, atol=1e-12)
