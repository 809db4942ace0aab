"""The contracts between xelm and its plugins: base classes, requests and result types.

Normative text: spec/plugin-api.md. This module imports no other part of xelm that could import
it back; the public façade :mod:`xelm_cli.api` re-exports it. Internal modules import from here.
"""

import json
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pluggy
from numpy.typing import NDArray

from xelm_cli.bundle.store import Bundle
from xelm_cli.cluster.allocation import Allocation
from xelm_cli.common.errors import PluginError, UsageError
from xelm_cli.data.corpus import Document
from xelm_cli.data.source_plan import SourceOptions
from xelm_cli.ensemble.weights import Weights
from xelm_cli.plugin.options import NoOptions

CHECKPOINT_SUFFIX = ".ckpt"

hookimpl = pluggy.HookimplMarker("xelm")
"""Marks a plugin's hook implementations: ``@hookimpl def register_routers(register): ...``."""


@dataclass(frozen=True)
class ExpertInfo:
    """What a router may know about an expert: its id, a readable name, its languages, and
    which expert of a clustering it is (the manifest's allocation reference, spec/bundle-v1.md
    3.1: ``{"clusterer", "expert", "digest", ...}``; None for a bundle outside one)."""

    id: str
    name: str
    languages: tuple[str, ...]
    allocation: dict[str, Any] | None = None


class Router(ABC):
    """Base of every router; a class registered through ``register_routers``.

    A router is built from keyword options (``--router-arg KEY=VALUE`` on the command line, the
    ``options`` of an ensemble file): ``RouterClass(**options)``. ``needs_expert_outputs`` tells
    the runner how to execute the ensemble: False (a :class:`PreRouter`) chooses experts before
    running them, so only experts with non-zero weight run; True (an :class:`OutputRouter`)
    needs the experts' per-token log-probabilities (e.g. the posterior).
    ``routes_uncovered_languages`` (a class or instance attribute) tells ``xelm ensemble eval``
    without ``--langs`` whether to keep the data's languages that no expert covers: False (the
    default, as the ``language`` router without a fallback) leaves them out with a note.
    """

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions  # the declared options (xelm_cli.plugin.options)
    needs_expert_outputs: ClassVar[bool]
    routes_uncovered_languages: bool = False

    def calibrate(
        self, scored: Sequence["ScoredDocument"], experts: Sequence[ExpertInfo]
    ) -> dict[str, Any]:
        """Fit the router on held-out documents scored by every expert.

        Returns the options to add to the router's own so that ``RouterClass(**options)``
        rebuilds the calibrated router (``xelm ensemble create --calibration DATA`` records them).
        Routers that take no calibration data keep this default, which refuses.
        """
        raise UsageError(
            f"router {self.name!r} takes no calibration data; drop --calibration, or use a router "
            f"that calibrates: {', '.join(calibrating_routers()) or 'none is installed'}"
        )

    def check_experts(self, experts: Sequence[ExpertInfo]) -> None:  # noqa: B027 (optional)
        """Refuse in one line (:class:`UsageError`) an ensemble of ``experts`` (in ensemble
        order) that this router, as built, cannot weigh: an option sized by their number k,
        such as the ``posterior`` router's prior, of another length. Called when an ensemble is
        built with the router, before any expert runs: an output router otherwise meets the
        experts only once every one of them has scored everything. By default no check
        (a pre-router's ``route`` refuses before the experts run anyway)."""


def _no_routers() -> Iterable[Any]:
    return ()


# The installed routers' registrations. The plugin host, which imports this module (never the
# other way round), sets it when it is imported.
installed_routers: Callable[[], Iterable[Any]] = _no_routers


def calibrating_routers() -> list[str]:
    """The names of the installed routers that take calibration data, sorted."""
    return sorted(r.name for r in installed_routers() if calibrates(r.obj))


def calibrates(router: "Router | type[Router]") -> bool:
    """Whether a router (or its class) takes calibration data: it overrides ``calibrate``."""
    cls = router if isinstance(router, type) else type(router)
    return cls.calibrate is not Router.calibrate


class PreRouter(Router):
    """A router that chooses experts before running them (by language, fixed weights, ...).

    ``stride``: None routes each document once, on its whole text; an integer n routes the
    text *before* target tokens 0, n, 2n, ... (prefix routing: the weights of token t come from
    the text preceding the most recent routed position), so perplexity never sees the text it
    scores. ``fallback`` names a registered router for the documents this router abstains on
    (rows of NaN); a router without one must not abstain.
    """

    needs_expert_outputs: ClassVar[bool] = False
    stride: int | None = None
    fallback: str | None = None

    @abstractmethod
    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        """Weights of shape (len(documents), len(experts)); each row >= 0 and summing to 1.

        A zero weight means that expert need not run for that document. A row of NaN abstains
        (only when ``fallback`` is set).
        """


@dataclass(frozen=True)
class ScoredDocument:
    """A document scored by experts: ``logprobs[e, t]`` is ln p_e(x_t | x_<t) for target
    token t (the first target follows the BOS token) under expert e, in ensemble order."""

    document: Document
    logprobs: NDArray[np.float64]


class OutputRouter(Router):
    """A router whose weights depend on the experts' outputs (posterior, ...): every expert
    runs on every document, then ``route_tokens`` weighs them token by token."""

    needs_expert_outputs: ClassVar[bool] = True

    @abstractmethod
    def route_tokens(
        self, scored: ScoredDocument, experts: Sequence[ExpertInfo]
    ) -> NDArray[np.float64]:
        """Weights of shape (k, T) like ``scored.logprobs``; column t >= 0, sums to 1 and may
        depend only on ``logprobs[:, :t]`` (the prefix), never on token t itself or later."""


class Assigner(ABC):
    """A fitted allocation that sends documents to experts. ``document_bytes`` > 0: it was
    fitted on consecutive records of one language joined into documents of about that many
    bytes (``group_documents``), so records are best assigned so joined (``xelm data prepare
    --allocation`` does)."""

    document_bytes: int = 0

    @abstractmethod
    def assign(self, documents: Sequence[Document]) -> NDArray[np.int64]:
        """The expert index of each document, shape (len(documents),)."""


@dataclass(frozen=True)
class ClusterRequest:
    """Everything a clusterer needs to write one allocation (see ``Clusterer.fit``).

    ``languages``: the languages to allocate, normalised codes (empty: every language in
    ``data``); ``data``: a corpus (files or a directory, spec/corpus) or a Hugging Face dataset
    id, None for clusterers that need no text (typology); ``options``: an instance of the
    clusterer's declared ``Options`` with its defaults filled in (None reads as the defaults,
    see ``Clusterer.options_of``), built by xelm from ``--cluster-arg KEY=VALUE``, the derived
    flags or a Python call's keyword arguments, already checked against the declaration;
    ``reading``: how to read ``data`` when the user said (``--split``, ``--lang``,
    ``--config``, ``--lang-map``, ``--text-column``, ``--revision``, ``--data-dir``, as
    ``xelm data prepare`` takes them), None for the defaults; xelm gives it only to a clusterer
    that ``reads_data``. ``data`` may then also be a recipe or a dataset with one configuration
    per language; :func:`sample_documents` reads any of them with ``reading``.
    """

    output: Path
    k: int
    languages: tuple[str, ...] = ()
    data: str | None = None
    seed: int = 0
    overwrite: bool = False
    options: Any = None
    reading: SourceOptions | None = None

    def __post_init__(self) -> None:
        if self.seed < 0:  # numpy's generators refuse it, after the data is read
            raise UsageError(f"--seed must be 0 or more (got {self.seed})")

    @property
    def force(self) -> bool:
        """``overwrite`` by its earlier name, so that plugins that read ``request.force`` work."""
        return self.overwrite


class Clusterer(ABC):
    """A way to allocate languages or documents to experts (registered by ``register_clusterers``).

    ``fit(request)`` fits the clusterer and writes the allocation atomically at
    ``request.output`` (with :func:`write_allocation`); ``assigner(allocation)`` rebuilds an
    :class:`Assigner` from an allocation it wrote, so trainers and routers can send any
    document to its expert. ``xelm cluster NAME`` is built from the request's flags and the
    declared ``Options``; the class docstring is its help (include an ``Example:`` line).
    ``default_k`` is the ``-k`` of the command when the user gives none (None: ``-k`` required).
    ``assigns_documents`` is True for a clusterer that sends each document to an expert by its
    text (TF-IDF), so that the experts' languages overlap and each expert trains on its own
    documents only (``xelm data prepare --allocation A --expert I``); False (the default):
    an expert trains on every document of its languages.
    ``reads_data`` is True for a clusterer that reads DATA with ``request.reading`` (through
    :func:`sample_documents`, as TF-IDF does); False (the default): xelm refuses the reading
    flags (``--config``, ``--split``, ...) for it rather than let them be ignored.
    No declared option may be named like a reading flag or ``cluster()``'s keyword for them
    (``reading``, ``split``, ``lang``, ``config``, ``data_dir``, ``lang_map``, ``text_column``,
    ``revision``).
    A clusterer written against plugin API 1.0 may still provide ``command()`` instead.
    """

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions  # the declared options (xelm_cli.plugin.options)
    default_k: ClassVar[int | None] = None
    assigns_documents: ClassVar[bool] = False
    reads_data: ClassVar[bool] = False

    def fit(self, request: ClusterRequest) -> Allocation:
        """Fit on ``request`` and write the allocation at ``request.output`` (atomically,
        replacing an existing one only with ``request.overwrite``); return it as read back.
        Bad input raises a one-line :class:`UsageError` before anything is written."""
        raise PluginError(
            f"clusterer {self.name!r} has no fit(); it can only run as `xelm cluster {self.name}`"
        )

    def options_of(self, request: ClusterRequest) -> Any:
        """``request.options``, or the declared defaults when it is None."""
        return self.Options() if request.options is None else request.options

    @classmethod
    def command(cls) -> Callable[..., None] | None:
        """Optional (plugin API 1.0): a Typer function that replaces the generic
        ``xelm cluster NAME``; None (the default) builds that command from ``fit``."""
        return None

    @classmethod
    def summary(cls, allocation: Allocation) -> dict[str, Any]:
        """Extra members of the JSON summary ``xelm cluster NAME --json`` prints after a fit
        (e.g. documents per expert); none by default."""
        return {}

    @classmethod
    @abstractmethod
    def assigner(cls, allocation: Allocation) -> Assigner:
        """Rebuild the fitted allocation; refuses (UsageError) one written by another clusterer."""


@dataclass(frozen=True)
class TrainRequest:
    """Everything a trainer needs to make one trained bundle (see ``Trainer.train``).

    ``languages`` is empty for "the bundle's languages"; ``options`` holds the trainer's own
    settings (learning rate, block size, ...) that were given, already converted (``{}``: none):
    ``build_options(type(trainer), request.options, ...)`` fills in the defaults; ``command`` is
    the exact command line, recorded in the training record; ``provenance`` is the trainer's own
    registration (``{name, plugin, distribution, version}``, filled by xelm), recorded in the
    training record as ``trainer`` (spec/bundle-v1.md section 3.3).
    """

    bundle: Path
    data: Path
    output: Path
    tokens: int
    languages: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    valid: Path | None = None
    resume: bool = False
    overwrite: bool = False
    command: str = ""
    provenance: dict[str, Any] | None = None

    @property
    def force(self) -> bool:
        """``overwrite`` by its earlier name, so that plugins that read ``request.force`` work."""
        return self.overwrite

    @property
    def checkpoint_dir(self) -> Path:
        return checkpoint_dir(self.output)


def checkpoint_dir(output: Path) -> Path:
    """Checkpoints (and metrics) of the run that writes ``output`` live in a hidden sibling,
    ``PARENT/.NAME.ckpt/``: a shell glob such as ``experts/*`` skips dot-files, so it finds only
    the bundles of a directory of trained experts."""
    output = Path(os.path.abspath(output))
    return output.with_name(f".{output.name}{CHECKPOINT_SUFFIX}")


class Trainer(ABC):
    """A way to train a bundle on token shards (registered by ``register_trainers``).

    ``xelm train --trainer NAME`` builds a :class:`TrainRequest` and calls ``train``, which
    refuses bad input (one-line :class:`UsageError`) before any heavy work, writes checkpoints
    to ``request.checkpoint_dir``, continues from the newest one when ``request.resume``, and
    writes the trained model as a new bundle at ``request.output`` (lineage relation ``train``,
    training record as in spec/bundle-v1.md section 3.3 and spec/training.md).
    """

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions  # the declared options (xelm_cli.plugin.options)

    @abstractmethod
    def train(self, request: TrainRequest) -> Bundle:
        """Train and return the new bundle (already written, atomically: ``writer.result`` of
        ``with write_bundle(request.output, ...) as writer``); anything else is refused."""

    @classmethod  # noqa: B027 (an optional hook: no check by default)
    def check_options(cls, options: dict[str, Any], *, world_size: int = 1) -> None:
        """Refuse in one line (:class:`UsageError`) ``options`` (converted, every declared
        one present, its default where not given: unlike ``TrainRequest.options``, which holds
        only those given) that ``train`` would refuse on ``world_size`` ranks, such as values that
        contradict each other: ``xelm plan`` asks before planning runs that would fail when
        they start. By default the declaration's own checks are all there are."""


@dataclass(frozen=True)
class ChoiceRequest:
    """A multiple-choice item: a context and the candidate continuations (each scored as
    ln p(choice | BOS, context)); ``language`` is what a language router sees."""

    context: str
    choices: tuple[str, ...]
    language: str | None = None


class LanguageModel(ABC):
    """What an evaluator scores with: an ensemble or a single bundle (``name`` says which)."""

    name: str

    @abstractmethod
    def score_documents(self, documents: Sequence[Document]) -> list[NDArray[np.float64]]:
        """Per document, ln p(x_t | x_<t) of each of its tokens after BOS (no EOS), one
        document per sequence; documents longer than the model's context in windows."""

    @abstractmethod
    def score_choices(self, requests: Sequence[ChoiceRequest]) -> list[list[NDArray[np.float64]]]:
        """Per request and choice, ln p of each token of the choice given BOS + context."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens the model's tokenizer makes of ``text`` (no special tokens)."""


@dataclass(frozen=True)
class EvalRequest:
    """What ``xelm ensemble eval`` asks an evaluator: the data, the languages (None: every
    language in the data), a per-language document/example limit, and, for in-context tasks,
    the task, shots (None: the evaluator's default), runs, seed and protocol. ``options``
    holds ``--eval-arg KEY=VALUE``.
    ``model_languages``: the languages the evaluated ensemble covers (its experts', in ensemble
    order; None when unknown), a default where the data has far more (a Hub dataset)."""

    data: str | None = None
    languages: tuple[str, ...] | None = None
    limit: int | None = None
    task: str | None = None
    shots: int | None = None  # None: the evaluator's default (icl: 0; lm-eval: each task's)
    runs: int = 1
    seed: int = 0
    protocol: str = "paper"
    options: dict[str, Any] = field(default_factory=dict)
    model_languages: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        """Values no evaluator can use are refused in one line, named by their flags."""
        for flag, value, least in (
            ("--limit", self.limit, 1), ("--shots", self.shots, 0),
            ("--runs", self.runs, 1), ("--seed", self.seed, 0),
        ):  # fmt: skip
            if value is not None and value < least:
                bound = "at least 1" if least else "0 or more"
                raise UsageError(f"{flag} must be {bound} (got {value})")


class Evaluator(ABC):
    """A way to evaluate language models (registered by ``register_evaluators``).

    ``Evaluator(request)`` loads and checks its data (one-line :class:`UsageError` for bad
    input, before any model runs); ``languages`` lists the languages it will present;
    ``evaluate(model)`` returns ``{"overall": {metric: value}, "languages": {code: {...}}}``
    plus anything else JSON-serialisable. ``on_languages(languages)``: the same evaluation
    restricted to some of its languages. ``primary`` names the headline metric and
    ``higher_is_better`` its direction (for deltas against a baseline): class attributes, which
    an evaluator whose headline depends on its request (lm-eval's tasks) sets again on the
    instance in its constructor; xelm reads the instance's. ``tasks``: the task
    names ``--task`` may give it, where it has a fixed set (a data folder named for one of them
    without ``--task`` is refused naming it). ``uses_protocol``: whether it scores choices by
    ``request.protocol`` (``--protocol``), which results then record (else null);
    ``uses_shots``, ``uses_runs``, ``uses_seed``: whether it reads ``request.shots``, ``runs``
    and ``seed``. A field declared False and given a value other than its default
    (``--shots`` at all, ``--runs`` other than 1, ``--seed`` other than 0, ``--protocol`` other
    than paper) is refused in one line before the evaluator is built; None (the default, an
    evaluator that does not say) accepts it.
    """

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions  # the declared options (xelm_cli.plugin.options)
    primary: str  # on the class (checked at registration); an instance may set its own
    higher_is_better: bool
    tasks: ClassVar[tuple[str, ...]] = ()
    # the request fields it reads: True, False (given, refused), None (not said: accepted)
    uses_protocol: ClassVar[bool | None] = None
    uses_shots: ClassVar[bool | None] = None
    uses_runs: ClassVar[bool | None] = None
    uses_seed: ClassVar[bool | None] = None

    def __init__(self, request: EvalRequest) -> None:
        self.request = request

    @property
    @abstractmethod
    def languages(self) -> list[str]:
        """Languages of the documents or examples this evaluator will score: a read-only
        property (``@property``); an attribute set in ``__init__`` does not implement it."""

    @abstractmethod
    def evaluate(self, model: LanguageModel) -> dict[str, Any]:
        """Score ``model`` and return the metrics (see the class docstring)."""

    def on_languages(self, languages: Sequence[str]) -> "Evaluator":
        """The same evaluation restricted to ``languages`` (some of ``self.languages``, in the
        order to present them): what building it with ``request.languages`` set to them would
        give. By default it is built again from ``self.request`` so (reading its data again);
        an evaluator holding its data per language overrides this to keep what it read."""
        request = replace(self.request, languages=tuple(languages))
        evaluator = type(self)(request)
        if not hasattr(evaluator, "request"):  # a constructor that did not call ours
            evaluator.request = request
        return evaluator


def result_problem(result: Any, primary: str) -> str | None:
    """Why ``result``, returned by an evaluator's ``evaluate()``, breaks the contract (the
    ``Evaluator`` docstring; spec/plugin-api.md 7.3), or None when it keeps it."""
    if not isinstance(result, dict):
        return f"returned {type(result).__name__}, not a dict"
    overall, languages = result.get("overall"), result.get("languages")
    if not isinstance(overall, dict) or not isinstance(languages, dict):
        return "the result needs 'overall' and 'languages' dicts"
    try:
        json.dumps(result, allow_nan=False)
    except ValueError as exc:  # a NaN or infinity: JSON has no such number (results files are JSON)
        return f"the result holds a NaN or infinity, which JSON cannot hold (use None): {exc}"
    except TypeError as exc:
        return f"the result is not JSON-serialisable: {exc}"
    if primary not in overall:
        return f"overall has no {primary!r}, the evaluator's primary metric"
    value = overall[primary]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return f"overall[{primary!r}] is {value!r}, not a number"
    return None
