"""Branch-Train-Merge posterior routers (xelm-method.md section 6)."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from xelm_cli.api import (
    ExpertInfo,
    OutputRouter,
    ScoredDocument,
    UsageError,
    keep_top_k,
    option,
    posterior_weights,
    softmax,
)

from .basic import options_of

PRIOR_ITERATIONS = 200
PRIOR_TOLERANCE = 1e-10


class PosteriorRouter(OutputRouter):
    """w_{e,t} = P(e | x_<t), proportional to P(e) * prod_{i<t} p_e(x_i | x_<i).

    ``prior``: None (uniform) or one non-negative number per expert (normalised);
    ``xelm ensemble create --router posterior --calibration DATA`` estimates it on held-out
    documents as the maximum-likelihood mixture weights (EM: P(e) <- mean over documents of
    P(e | document)). ``top_k`` keeps the k largest weights per token and renormalises.
    """

    name = "posterior"
    routes_uncovered_languages = True

    @dataclass(frozen=True, kw_only=True)
    class Options:
        prior: list[float] | None = option(
            None,
            help="P(e), one non-negative number per expert (normalised); none is uniform; "
            "xelm ensemble create --calibration DATA estimates it.",
        )
        top_k: int | None = option(
            None, help="Keep the K largest weights of each token and renormalise.", minimum=1
        )

    def __init__(self, *args: Any, **options: Any) -> None:
        self.options = options_of(self, args, options)
        self.top_k = self.options.top_k
        self.prior: NDArray[np.float64] | None = None
        if self.options.prior is not None:
            values = np.asarray(self.options.prior, dtype=np.float64)
            if values.size == 0 or not np.isfinite(values).all() or (values < 0).any():
                raise UsageError("posterior prior must be a list of non-negative numbers")
            if values.sum() <= 0:
                raise UsageError("posterior prior must not be all zero")
            self.prior = values / values.sum()

    def check_experts(self, experts: Sequence[ExpertInfo]) -> None:
        """A prior of another length than the ensemble's experts, refused before they run."""
        self._check_prior(len(experts))

    def _check_prior(self, k: int) -> None:
        if self.prior is not None and len(self.prior) != k:
            raise UsageError(
                f"the posterior prior has {len(self.prior)} values but the ensemble has {k} "
                "experts: give one per expert, in ensemble order (or estimate it: xelm ensemble "
                "create MEMBERS --router posterior --calibration DATA -o ens.json)"
            )

    def _log_prior(self, k: int) -> NDArray[np.float64]:
        if self.prior is None:
            return np.full(k, -np.log(k))
        self._check_prior(k)
        with np.errstate(divide="ignore"):
            return np.log(self.prior)

    def route_tokens(
        self, scored: ScoredDocument, experts: Sequence[ExpertInfo]
    ) -> NDArray[np.float64]:
        logprobs = scored.logprobs
        evidence = np.zeros_like(logprobs)  # sum over i < t (an expert's -inf stays -inf)
        evidence[:, 1:] = np.cumsum(logprobs[:, :-1], axis=1)
        return self._weighed(evidence)

    def _weighed(self, evidence: NDArray[np.float64]) -> NDArray[np.float64]:
        """Weights (k, T) proportional to the prior times exp(``evidence``) (k, T), the top k
        kept; the prior alone where every expert's evidence is -inf (it gave a token it
        conditions on probability 0), there the posterior is undefined."""
        weights = posterior_weights(self._log_prior(evidence.shape[0]), evidence)
        kept = keep_top_k(weights, self.top_k, axis=0)
        # a token every expert weighs alike (a uniform prior, no evidence yet) has no top k:
        # kept whole, not handed to the first experts by their order
        even = np.all(weights == weights[:1], axis=0)
        kept[:, even] = weights[:, even]
        return kept

    def calibrate(
        self, scored: Sequence[ScoredDocument], experts: Sequence[ExpertInfo]
    ) -> dict[str, Any]:
        if not scored:
            raise UsageError("the posterior prior needs calibration documents")
        totals = np.stack([item.logprobs.sum(axis=1) for item in scored])  # (n, k)
        prior = np.full(len(experts), 1.0 / len(experts))
        for _ in range(PRIOR_ITERATIONS):
            responsibilities = softmax(np.log(prior)[None, :] + totals, axis=1)
            updated = responsibilities.mean(axis=0)
            updated = np.maximum(updated, 1e-12)
            updated /= updated.sum()
            done = np.abs(updated - prior).max() < PRIOR_TOLERANCE
            prior = updated
            if done:
                break
        self.prior = prior
        return {"prior": [float(p) for p in prior]}


class LastTokenPosteriorRouter(PosteriorRouter):
    """The authors' script: the posterior from the previous token's likelihood only.

    w_{e,t} proportional to P(e) * p_e(x_{t-1} | x_<t-1) (the prior alone for the first token).
    """

    name = "posterior-last-token"

    def route_tokens(
        self, scored: ScoredDocument, experts: Sequence[ExpertInfo]
    ) -> NDArray[np.float64]:
        logprobs = scored.logprobs
        previous = np.zeros_like(logprobs)
        previous[:, 1:] = logprobs[:, :-1]
        return self._weighed(previous)
