"""Combining experts' per-token log-probabilities (numpy, no torch)."""

import numpy as np
from numpy.typing import NDArray

from xelm_cli.common.errors import PluginError

COLUMN_SUM_TOLERANCE = 1e-6


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


def check_token_weights(
    weights: object, shape: tuple[int, int], router: str
) -> NDArray[np.float64]:
    """Validate an output-dependent router's (k, T) weights: finite, >= 0, columns sum to 1."""
    try:
        array = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PluginError(
            f"router {router!r} returned weights that are not numbers: {exc}"
        ) from None
    if array.shape != shape:
        raise PluginError(
            f"router {router!r} returned token weights of shape {array.shape}; expected "
            f"{shape} (experts x tokens)"
        )
    if not np.isfinite(array).all() or (array < 0).any():
        raise PluginError(f"router {router!r} returned negative, NaN or infinite token weights")
    sums = array.sum(axis=0)
    bad = np.flatnonzero(np.abs(sums - 1.0) > COLUMN_SUM_TOLERANCE)
    if bad.size:
        raise PluginError(
            f"router {router!r} returned token weights summing to {sums[bad[0]]:.9g} at "
            f"token {int(bad[0])}; each column must sum to 1"
        )
    return array


def softmax_columns(scores: NDArray[np.float64]) -> NDArray[np.float64]:
    """Each column of ``scores`` (k, T) turned into a distribution over the k rows."""
    return np.exp(scores - logsumexp(scores, axis=0)[None, :])


def product_weights(
    logprobs: NDArray[np.float64], prior: NDArray[np.float64]
) -> NDArray[np.float64]:
    """The product rule's weights (spec/ensemble-v1.md section 3): w[:, 0] = c and, for t >= 1,
    w[e, t] = c_e p_e(x_{t-1}) / sum_j c_j p_j(x_{t-1}), from ``logprobs`` L (k, T) with
    L[e, t] = ln p_e(x_t | x_<t) and the cluster weights ``prior`` c (k,)."""
    prior = np.asarray(prior, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log_prior = np.log(prior)[:, None]
    previous = np.zeros_like(logprobs)
    previous[:, 1:] = logprobs[:, :-1]
    return softmax_columns(log_prior + previous)
