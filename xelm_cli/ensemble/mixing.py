"""Combining experts' per-token log-probabilities (numpy, no torch)."""

import numpy as np
from numpy.typing import NDArray

from xelm_cli.ensemble.weights import posterior_weights


def logsumexp(values: NDArray[np.float64], axis: int = 0) -> NDArray[np.float64]:
    peak = np.max(values, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        total = np.log(np.sum(np.exp(values - peak), axis=axis, keepdims=True))
    return np.squeeze(total + peak, axis=axis)


def mixture(logprobs: NDArray[np.float64], weights: NDArray[np.float64]) -> NDArray[np.float64]:
    """ln sum_e w[e, t] p_e(x_t): ``logprobs`` (k, T), ``weights`` (k, T) or (k,)."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim == 1:
        weights = weights[:, None]
    with np.errstate(divide="ignore"):
        log_weights = np.log(weights)
    return logsumexp(log_weights + logprobs, axis=0)


def product_weights(
    logprobs: NDArray[np.float64], prior: NDArray[np.float64]
) -> NDArray[np.float64]:
    """The product rule's weights (spec/ensemble-v1.md section 3): w[:, 0] = c and, for t >= 1,
    w[e, t] = c_e p_e(x_{t-1}) / sum_j c_j p_j(x_{t-1}), from ``logprobs`` L (k, T) with
    L[e, t] = ln p_e(x_t | x_<t) and the cluster weights ``prior`` c (k,)."""
    with np.errstate(divide="ignore"):
        log_prior = np.log(np.asarray(prior, dtype=np.float64))
    previous = np.zeros_like(logprobs)
    previous[:, 1:] = logprobs[:, :-1]
    # a previous token every expert gave probability 0: the cluster weights alone
    return posterior_weights(log_prior, previous)
