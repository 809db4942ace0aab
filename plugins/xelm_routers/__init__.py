"""xelm's built-in routers, registered through the ``xelm`` entry-point group like any plugin's.

All three are pre-routers: they choose experts from the documents alone, before any expert runs.
"""

from collections.abc import Sequence

import numpy as np

from xelm_cli.api import (
    Document,
    ExpertInfo,
    PreRouter,
    Register,
    UsageError,
    Weights,
    hookimpl,
)


class UniformRouter(PreRouter):
    """Equal weight on every expert: every expert runs on every document."""

    name = "uniform"

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        if not experts:
            raise UsageError("the uniform router needs at least one expert")
        return np.full((len(documents), len(experts)), 1.0 / len(experts))


class FixedRouter(PreRouter):
    """The same user-given weights for every document, normalised to sum to 1."""

    name = "fixed"

    def __init__(self, weights: Sequence[float]) -> None:
        try:
            values = np.asarray(weights, dtype=np.float64)
        except (TypeError, ValueError):
            raise UsageError(f"fixed router weights must be numbers, got {weights!r}") from None
        if values.ndim != 1 or values.size == 0:
            raise UsageError("fixed router weights must be a non-empty list, one per expert")
        if not np.isfinite(values).all() or (values < 0).any():
            raise UsageError(
                f"fixed router weights must be finite and non-negative, got {values.tolist()}"
            )
        total = values.sum()
        if total <= 0:
            raise UsageError("fixed router weights must not all be zero")
        self.weights: Weights = values / total

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        if len(self.weights) != len(experts):
            raise UsageError(
                f"the fixed router has {len(self.weights)} weights but the ensemble "
                f"has {len(experts)} experts: give one weight per expert"
            )
        return np.tile(self.weights, (len(documents), 1))


class LanguageRouter(PreRouter):
    """Top-1 by language: each document goes to the expert that covers its language.

    When several experts cover a language, the first one (in ensemble order) gets it.
    """

    name = "language"

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        expert_of: dict[str, int] = {}
        for index, expert in enumerate(experts):
            for language in expert.languages:
                expert_of.setdefault(language, index)
        weights = np.zeros((len(documents), len(experts)))
        for row, document in enumerate(documents):
            if document.language is None:
                raise UsageError(
                    f"the language router needs each document's language; document {row} has none"
                )
            if document.language not in expert_of:
                covered = ", ".join(expert_of) or "none"
                raise UsageError(
                    f"no expert covers language {document.language!r} (covered: "
                    f"{covered}): add an expert for it or choose another router"
                )
            weights[row, expert_of[document.language]] = 1.0
        return weights


@hookimpl
def register_routers(register: Register) -> None:
    register("uniform", UniformRouter)
    register("fixed", FixedRouter)
    register("language", LanguageRouter)
