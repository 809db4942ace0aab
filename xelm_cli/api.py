"""The public API: everything a plugin (or a script) may import from xelm.

Plugins import this module and nothing else from xelm; if a plugin needs something that is not
here, the API is missing a piece. The contracts are specified in spec/plugin-api.md.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import pluggy
from numpy.typing import NDArray

from .allocation import Allocation, read_allocation, write_allocation
from .bundle import Bundle, verify_bundle, write_bundle
from .corpus import Document, iter_documents
from .errors import (
    ArchiveError,
    FormatError,
    IntegrityError,
    PluginError,
    UsageError,
    XelmError,
)
from .languages import normalize_language, parse_language_list
from .plugins import Register, Registration, Registry, get_registry
from .shards import Shards
from .training import (
    BlockStream,
    TrainRequest,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from .typology import (
    distance_matrix,
    feature_set_name,
    feature_vectors,
    rank_donors,
    uriel_code,
)

__all__ = [
    "Allocation",
    "ArchiveError",
    "Assigner",
    "BlockStream",
    "Bundle",
    "Clusterer",
    "Document",
    "Evaluator",
    "ExpertInfo",
    "FormatError",
    "IntegrityError",
    "PluginError",
    "PreRouter",
    "Register",
    "Registration",
    "Registry",
    "Router",
    "Shards",
    "TrainRequest",
    "Trainer",
    "UsageError",
    "Weights",
    "XelmError",
    "check_weights",
    "distance_matrix",
    "feature_set_name",
    "feature_vectors",
    "get_registry",
    "hookimpl",
    "iter_documents",
    "list_checkpoints",
    "load_checkpoint",
    "normalize_language",
    "parse_language_list",
    "rank_donors",
    "read_allocation",
    "save_checkpoint",
    "uriel_code",
    "verify_bundle",
    "write_allocation",
    "write_bundle",
]

hookimpl = pluggy.HookimplMarker("xelm")
"""Marks a plugin's hook implementations: ``@hookimpl def register_routers(register): ...``."""

Weights = NDArray[np.float64]
"""Routing weights: shape (n_documents, n_experts), rows non-negative and summing to 1."""

WEIGHT_SUM_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ExpertInfo:
    """What a router may know about an expert: its id, a readable name, its languages."""

    id: str
    name: str
    languages: tuple[str, ...]


class Router(ABC):
    """Base of every router; a class registered through ``register_routers``.

    ``needs_expert_outputs`` tells the runner how to execute the ensemble: False (a pre-router,
    see :class:`PreRouter`) chooses experts before running them, so only experts with non-zero
    weight run; True means the weights depend on the experts' outputs (e.g. the posterior), so
    every expert runs. The method contract of output-dependent routers comes with the ensemble
    runner; until then only pre-routers can be executed.
    """

    name: ClassVar[str]
    needs_expert_outputs: ClassVar[bool]


class PreRouter(Router):
    """A router that chooses experts before running them (by language, fixed weights, ...)."""

    needs_expert_outputs: ClassVar[bool] = False

    @abstractmethod
    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        """Weights of shape (len(documents), len(experts)); each row >= 0 and summing to 1.

        A zero weight means that expert need not run for that document.
        """


def check_weights(
    weights: Any, n_docs: int, n_experts: int, *, router: str | None = None
) -> Weights:
    """Validate what a router returned and give it back as a float64 array.

    Raises :class:`PluginError` (a :class:`XelmError`) naming the fault: not a numeric array,
    wrong shape, NaN or infinite, negative, or a row not summing to 1 within 1e-6.
    """
    source = f"router {router!r}" if router else "router"
    try:
        array = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PluginError(
            f"{source} returned weights that are not a numeric array: {exc}"
        ) from None
    if array.shape != (n_docs, n_experts):
        raise PluginError(
            f"{source} returned weights of shape {array.shape}; expected "
            f"({n_docs}, {n_experts}) (documents x experts)"
        )
    if not np.isfinite(array).all():
        row = int(np.argwhere(~np.isfinite(array))[0][0])
        raise PluginError(f"{source} returned NaN or infinite weights (document {row})")
    if (array < 0).any():
        row, col = (int(i) for i in np.argwhere(array < 0)[0])
        raise PluginError(
            f"{source} returned a negative weight {array[row, col]:g} "
            f"(document {row}, expert {col})"
        )
    sums = array.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > WEIGHT_SUM_TOLERANCE)
    if bad.size:
        row = int(bad[0])
        raise PluginError(
            f"{source} returned weights summing to {sums[row]:.9g} for document "
            f"{row}; each row must sum to 1"
        )
    return array


class Assigner(ABC):
    """A fitted allocation that sends documents to experts."""

    @abstractmethod
    def assign(self, documents: Sequence[Document]) -> NDArray[np.int64]:
        """The expert index of each document, shape (len(documents),)."""


class Clusterer(ABC):
    """A way to allocate languages or documents to experts (registered by ``register_clusterers``).

    A clusterer contributes the command ``xelm cluster NAME`` (which fits it and writes an
    allocation with :func:`write_allocation`) and rebuilds an :class:`Assigner` from an
    allocation it wrote, so trainers and routers can send any document to its expert.
    """

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def command(cls) -> Callable[..., None]:
        """The function behind ``xelm cluster NAME``: Typer-annotated parameters and a
        docstring whose text includes an ``Example:`` line."""

    @classmethod
    @abstractmethod
    def assigner(cls, allocation: Allocation) -> Assigner:
        """Rebuild the fitted allocation; refuses (UsageError) one written by another clusterer."""


class Trainer(ABC):
    """A way to train a bundle on token shards (registered by ``register_trainers``).

    ``xelm train --trainer NAME`` builds a :class:`TrainRequest` and calls ``train``, which
    refuses bad input (one-line :class:`UsageError`) before any heavy work, writes checkpoints
    to ``request.checkpoint_dir``, continues from the newest one when ``request.resume``, and
    writes the trained model as a new bundle at ``request.output`` (lineage relation ``train``,
    training record as in spec/bundle-v1.md section 3.3 and spec/training.md).
    """

    name: ClassVar[str]

    @abstractmethod
    def train(self, request: TrainRequest) -> Bundle:
        """Train and return the new bundle (already written, atomically)."""


class Evaluator(Protocol):
    """A way to evaluate an ensemble (registered by ``register_evaluators``).

    Only ``name`` is fixed so far; the methods are specified in spec/plugin-api.md and refined by
    the evaluation issue.
    """

    name: str
