"""Routing-weight helpers: softmax and top-k along either axis, and the one validator."""

import numpy as np
import pytest

from xelm_cli.api import (
    PluginError,
    check_token_weights,
    check_weights,
    keep_top_k,
    posterior_weights,
    softmax,
)


def test_softmax_along_each_axis_matches_the_formula() -> None:
    scores = np.array([[0.0, 1.0, 2.0], [3.0, 3.0, -1.0]])
    rows = softmax(scores, axis=1)
    expected = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(rows, expected, rtol=1e-12)
    np.testing.assert_allclose(softmax(scores.T, axis=0), expected.T, rtol=1e-12)
    # large scores do not overflow
    np.testing.assert_allclose(softmax(np.array([[1000.0, 1000.0]]), axis=1), [[0.5, 0.5]])


def test_keep_top_k_keeps_the_largest_and_the_first_on_ties() -> None:
    weights = np.array([[0.2, 0.5, 0.3], [0.4, 0.2, 0.4]])
    np.testing.assert_allclose(keep_top_k(weights, 1, axis=1), [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(
        keep_top_k(weights, 2, axis=1), [[0.0, 0.5 / 0.8, 0.3 / 0.8], [0.5, 0.0, 0.5]]
    )
    np.testing.assert_allclose(keep_top_k(weights.T, 2, axis=0), keep_top_k(weights, 2, axis=1).T)
    assert keep_top_k(weights, None, axis=1) is weights
    assert keep_top_k(weights, 3, axis=1) is weights


def test_posterior_weights_are_bayes_rule_and_the_prior_where_no_expert_has_evidence() -> None:
    prior = np.array([0.25, 0.75])
    with np.errstate(divide="ignore"):  # ln 0 = -inf: no evidence
        evidence = np.log(np.array([[0.5, 0.0, 0.2, 0.0], [0.5, 0.1, 0.6, 0.0]]))
    weights = posterior_weights(np.log(prior), evidence)
    # by hand: c_e p_e / sum_j c_j p_j per column; the last column (both 0) is the prior
    np.testing.assert_allclose(weights[:, 0], prior)
    np.testing.assert_allclose(weights[:, 1], [0.0, 1.0])
    np.testing.assert_allclose(weights[:, 2], [0.05 / 0.5, 0.45 / 0.5])
    np.testing.assert_allclose(weights[:, 3], prior)


def test_one_validator_for_rows_and_columns() -> None:
    with pytest.raises(
        PluginError, match=r"router 'r' returned weights summing to 0\.9 for document 1; each row"
    ):
        check_weights([[1.0], [0.9]], 2, 1, router="r")
    with pytest.raises(
        PluginError,
        match=r"router 'r' returned token weights summing to 1\.5 for token 2; each column",
    ):
        check_token_weights([[1.0, 0.5, 1.0], [0.0, 0.5, 0.5]], (2, 3), "r")
    with pytest.raises(PluginError, match=r"negative weight -0\.5 \(token 0, expert 1\)"):
        check_token_weights([[1.5], [-0.5]], (2, 1), "r")
    original = [[np.nan, np.nan], [0.25, 0.75]]
    checked = check_weights(original, 2, 2, router="r", allow_abstain=True)
    assert np.isnan(checked[0]).all() and checked[1].tolist() == [0.25, 0.75]
    assert np.isnan(original[0][0])  # the router's own array is not touched
