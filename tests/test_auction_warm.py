"""The auction's warm start (plugins/xelm_tfidf/kmeans.py): where its first epsilon phase
begins, and that it stays exact (benchmarks/tfidf_solver.md, the warm-start bullet)."""

import numpy as np
import pytest
from xelm_tfidf import kmeans
from xelm_tfidf.embedder import normalize_rows
from xelm_tfidf.kmeans import (
    COLD_START_DIVISOR,
    assign_auction,
    assign_lsa,
    equal_capacities,
    squared_distances,
)


def _separated_costs(n: int = 400, k: int = 4, seed: int = 5):
    """Costs of unit vectors drawn around k well-separated directions, to k centroids: the
    centroids of one k-means iteration and of the next, moved towards the true clusters (the
    ~1500-byte documents' case, where the prices change a lot between iterations)."""
    rng = np.random.default_rng(seed)
    directions = normalize_rows(rng.normal(size=(k, 12)))
    labels = rng.integers(0, k, size=n)
    points = normalize_rows(directions[labels] * 3.0 + rng.normal(size=(n, 12)))
    first = points[rng.choice(n, size=k, replace=False)]
    second = normalize_rows(first + directions)
    return squared_distances(points, first), squared_distances(points, second)


def _phase_epsilons(monkeypatch) -> list[float]:
    """Records the epsilon of every phase the auction runs (the phases themselves run)."""
    seen: list[float] = []
    phase = kmeans._auction_phase

    def recording(value, capacities, prices, eps):
        seen.append(eps)
        return phase(value, capacities, prices, eps)

    monkeypatch.setattr(kmeans, "_auction_phase", recording)
    return seen


def _total(cost, labels) -> float:
    return float(cost[np.arange(cost.shape[0]), labels].sum())


def test_prices_far_off_start_at_the_cold_step(monkeypatch):
    """Prices off by much more than a fine epsilon begin at the coarse step: a fine first
    phase would raise them by thousands of tiny bids (slower than a cold start)."""
    before, after = _separated_costs()
    capacities = equal_capacities(*after.shape)
    _, old_prices = assign_auction(before, capacities)
    far_off = old_prices + np.array([0.0, 0.5, 0.0, 0.0]) * np.ptp(after)
    epsilons = _phase_epsilons(monkeypatch)
    labels, _ = assign_auction(after, capacities, prices=far_off)
    assert epsilons[0] == pytest.approx(np.ptp(after) / COLD_START_DIVISOR)
    assert _total(after, labels) == pytest.approx(
        _total(after, assign_lsa(after, capacities)), rel=1e-6
    )


def test_prices_that_already_clear_skip_the_coarse_phases(monkeypatch):
    """The final prices of the same problem clear it: the warm start goes straight to the
    finest steps and returns the same assignment."""
    _, cost = _separated_costs()
    capacities = equal_capacities(*cost.shape)
    labels, prices = assign_auction(cost, capacities)
    epsilons = _phase_epsilons(monkeypatch)
    again, _ = assign_auction(cost, capacities, prices=prices)
    assert epsilons[0] <= 1e-4 * kmeans.EPSILON_REDUCTION
    assert _total(cost, again) == pytest.approx(_total(cost, labels), rel=1e-9)


def test_warm_start_from_the_previous_iteration_is_exact(monkeypatch):
    """Between two k-means iterations the warm start begins on the cold schedule, below its
    coarse start only as far as the old prices' error allows, and finds the exact optimum."""
    before, after = _separated_costs(seed=11)
    capacities = equal_capacities(*after.shape)
    _, old_prices = assign_auction(before, capacities)
    error = kmeans._price_error(-after, capacities, old_prices)
    epsilons = _phase_epsilons(monkeypatch)
    labels, _ = assign_auction(after, capacities, prices=old_prices)
    cold_step = np.ptp(after) / COLD_START_DIVISOR
    assert epsilons[0] >= error
    steps_skipped = np.log(cold_step / epsilons[0]) / np.log(kmeans.EPSILON_REDUCTION)
    assert steps_skipped == pytest.approx(round(steps_skipped))
    assert _total(after, labels) == pytest.approx(
        _total(after, assign_lsa(after, capacities)), rel=1e-6
    )


def test_price_error_is_the_rise_that_sheds_the_excess():
    """Three documents all prefer cluster 0 (capacity 1 each): its price must pass the
    second-largest margin (0.3) before only one of them still prefers it."""
    value = -np.array([[0.0, 0.5, 0.9], [0.0, 0.3, 0.9], [0.0, 0.1, 0.9]])
    capacities = equal_capacities(3, 3)
    assert kmeans._price_error(value, capacities, np.zeros(3)) == pytest.approx(0.3)
    assert kmeans._price_error(value[:, :1], np.array([3]), np.zeros(1)) == 0.0
