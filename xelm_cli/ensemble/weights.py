"""Routing weights: distributions over experts, along one axis of an array (numpy, no torch).

A pre-router's weights are (documents x experts), each row a distribution; an output router's
are (experts x tokens), each column one. One validator checks both (spec/plugin-api.md 6.1,
6.3); ``softmax``, ``posterior_weights`` and ``keep_top_k`` serve routers that turn scores
into such weights.
"""

from typing import Any

import numpy as np
from numpy.typing import NDArray

from xelm_cli.common.errors import PluginError

Weights = NDArray[np.float64]
"""Routing weights: shape (n_documents, n_experts), rows non-negative and summing to 1."""

WEIGHT_SUM_TOLERANCE = 1e-6


def softmax(scores: NDArray[np.float64], axis: int) -> NDArray[np.float64]:
    """``scores`` turned into distributions along ``axis`` (after subtracting the maximum)."""
    scores = np.asarray(scores, dtype=np.float64)
    shifted = np.exp(scores - scores.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def posterior_weights(
    log_prior: NDArray[np.float64], evidence: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Weights (k, T) proportional to the prior times exp(``evidence``): each column the
    softmax over experts of ``log_prior`` (k,) plus ``evidence`` (k, T), log-likelihoods. Where
    every expert's evidence is -inf (each gave a token it conditions on probability 0) the
    posterior is undefined and the column is the prior alone."""
    log_prior = np.asarray(log_prior, dtype=np.float64).reshape(-1, 1)
    scores = log_prior + np.asarray(evidence, dtype=np.float64)
    undefined = np.isneginf(scores).all(axis=0)
    scores[:, undefined] = log_prior
    return softmax(scores, axis=0)


def keep_top_k(weights: NDArray[np.float64], top_k: int | None, axis: int) -> NDArray[np.float64]:
    """Zero all but the ``top_k`` largest weights of each distribution along ``axis`` (the lower
    index wins a tie) and renormalise; None, or k at least the axis length, keeps them all."""
    if top_k is None or top_k >= weights.shape[axis]:
        return weights
    order = np.argsort(-weights, axis=axis, kind="stable")
    kept_positions = np.take(order, np.arange(top_k), axis=axis)
    mask = np.zeros(weights.shape, dtype=bool)
    np.put_along_axis(mask, kept_positions, True, axis=axis)
    kept = np.where(mask, weights, 0.0)
    return kept / kept.sum(axis=axis, keepdims=True)


def check_distributions(
    weights: Any,
    shape: tuple[int, int],
    *,
    expert_axis: int,
    router: str | None = None,
    allow_abstain: bool = False,
    unit: str | None = None,
    plugin: str | None = None,
) -> NDArray[np.float64]:
    """Validate a router's weights of ``shape`` whose ``expert_axis`` holds the distributions.

    Raises :class:`PluginError` naming the fault: not a numeric array, wrong shape, NaN or
    infinite, negative, or a distribution not summing to 1 within 1e-6, and where: the
    ``unit`` a distribution weighs (default: token, or document for a pre-router's rows).
    With ``allow_abstain`` a distribution that is entirely NaN passes (the router abstains).
    ``plugin``: the third party's plugin that registered the router, named in the message.
    """
    source = f"router {router!r}" if router else "router"
    source += f" (plugin {plugin!r})" if plugin else ""
    per_token = expert_axis == 0
    noun = "token weights" if per_token else "weights"
    unit = unit or ("token" if per_token else "document")
    layout = "experts x tokens" if per_token else "documents x experts"
    try:
        array = np.array(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PluginError(f"{source} returned {noun} that are not a numeric array: {exc}") from None
    if array.shape != shape:
        raise PluginError(
            f"{source} returned {noun} of shape {array.shape}; expected {shape} ({layout})"
        )
    items = array if expert_axis == 1 else array.T  # one distribution per row
    abstained = np.isnan(items).all(axis=1) if allow_abstain else np.zeros(len(items), bool)
    items[abstained] = 1.0 / max(items.shape[1], 1)
    if not np.isfinite(items).all():
        where = int(np.argwhere(~np.isfinite(items))[0][0])
        raise PluginError(f"{source} returned NaN or infinite {noun} ({unit} {where})")
    if (items < 0).any():
        where, expert = (int(i) for i in np.argwhere(items < 0)[0])
        raise PluginError(
            f"{source} returned a negative weight {items[where, expert]:g} "
            f"({unit} {where}, expert {expert})"
        )
    sums = items.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > WEIGHT_SUM_TOLERANCE)
    if bad.size:
        where = int(bad[0])
        each = "column" if per_token else "row"
        raise PluginError(
            f"{source} returned {noun} summing to {sums[where]:.9g} for {unit} {where}; "
            f"each {each} must sum to 1"
        )
    items[abstained] = np.nan
    return array


def check_weights(
    weights: Any,
    n_docs: int,
    n_experts: int,
    *,
    router: str | None = None,
    allow_abstain: bool = False,
    plugin: str | None = None,
) -> Weights:
    """Validate what a pre-router returned, (n_docs, n_experts), and give it back as float64.

    Raises :class:`PluginError` (a XelmError) naming the fault: not a numeric array, wrong
    shape, NaN or infinite, negative, or a row not summing to 1 within 1e-6. With
    ``allow_abstain`` a row that is entirely NaN passes (the router abstains on that document).
    """
    return check_distributions(
        weights,
        (n_docs, n_experts),
        expert_axis=1,
        router=router,
        allow_abstain=allow_abstain,
        plugin=plugin,
    )


def check_token_weights(
    weights: Any, shape: tuple[int, int], router: str, plugin: str | None = None
) -> Weights:
    """Validate an output router's (experts x tokens) weights: each column a distribution."""
    return check_distributions(weights, shape, expert_axis=0, router=router, plugin=plugin)
