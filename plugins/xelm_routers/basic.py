"""Routers that ignore the text: ``uniform`` and ``fixed`` weights."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xelm_cli.api import (
    Document,
    ExpertInfo,
    PreRouter,
    Router,
    UsageError,
    Weights,
    build_options,
    declared_options,
    option,
)


def options_of(router: Router, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
    """``router``'s declared ``Options`` from its constructor's arguments (positional ones in
    declaration order, then keywords), converted and checked by the declaration: a bad value is
    a one-line :class:`UsageError` naming the router and the option."""
    names = [spec.name for spec in declared_options(type(router))]
    if len(args) > len(names):
        raise TypeError(f"{type(router).__name__} takes at most {len(names)} positional options")
    twice = [name for name in names[: len(args)] if name in options]
    if twice:
        raise TypeError(f"{type(router).__name__} got option {twice[0]!r} twice")
    values = {**dict(zip(names, args, strict=False)), **options}
    return build_options(type(router), values, label=f"router {router.name!r}", via="--router-arg")


class UniformRouter(PreRouter):
    """Equal weight on every expert: every expert runs on every document."""

    name = "uniform"
    routes_uncovered_languages = True

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        if not experts:
            raise UsageError("the uniform router needs at least one expert")
        return np.full((len(documents), len(experts)), 1.0 / len(experts))


class FixedRouter(PreRouter):
    """The same user-given weights for every document, normalised to sum to 1."""

    name = "fixed"
    routes_uncovered_languages = True

    @dataclass(frozen=True, kw_only=True)
    class Options:
        weights: list[float] = option(
            help="One non-negative weight per expert, in ensemble order (normalised to sum "
            "to 1), e.g. [1,3] or 1,3.",
        )

    def __init__(self, *args: Any, **options: Any) -> None:
        self.options = options_of(self, args, options)
        values = np.asarray(self.options.weights, dtype=np.float64)
        if values.size == 0:
            raise UsageError("fixed router weights must be a non-empty list, one per expert")
        if not np.isfinite(values).all() or (values < 0).any():
            raise UsageError(
                f"fixed router weights must be finite and non-negative, got {values.tolist()}"
            )
        total = values.sum()
        if total <= 0:
            raise UsageError("fixed router weights must not all be zero")
        self.weights: Weights = values / total

    def check_experts(self, experts: Sequence[ExpertInfo]) -> None:
        """Weights of another length than the ensemble's experts, refused when it is built
        (``xelm ensemble create`` would otherwise record a file every eval refuses)."""
        if len(self.weights) != len(experts):
            raise UsageError(
                f"the fixed router has {len(self.weights)} weights but the ensemble "
                f"has {len(experts)} experts: give one weight per expert"
            )

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        self.check_experts(experts)
        return np.tile(self.weights, (len(documents), 1))
