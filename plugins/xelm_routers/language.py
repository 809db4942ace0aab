"""Routers by language: ``language`` (the paper's top-1 typology routing) and ``oracle``."""

import difflib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xelm_cli.api import (
    Document,
    ExpertInfo,
    PreRouter,
    ScoredDocument,
    UsageError,
    Weights,
    get_registry,
    normalize_language,
    option,
    rank_donors,
    wanted_form,
)

from .basic import options_of

TYPOLOGY = "typology"
NO_FALLBACK = ("", "none", "null")  # what --router-arg fallback= may say for None


def _language_of(document: Document, row: int, router: str) -> str:
    if document.language is None:
        raise UsageError(
            f"the {router} router needs each document's language; document {row} has none"
        )
    return document.language


def _check_fallback_router(fallback: str) -> None:
    """Refuse a ``fallback`` that is neither a keyword nor a router, as the option it is (not
    as an unknown ``--router``), with its values and the nearest; a router the registry cannot
    choose (ambiguous, qualified, left out by XELM_PLUGINS) in the registry's own words."""
    registry = get_registry()
    try:
        registry.get("router", fallback)
    except UsageError as exc:
        routers = sorted({r.name for r in registry.all_of("router")})
        left_out = registry.left_out is not None and registry.left_out.registering(
            "router", fallback
        )
        refused = any((p.kind, p.name) == ("router", fallback) for p in registry.problems)
        if ":" in fallback or fallback in routers or left_out or refused:
            raise UsageError(f"--router-arg fallback: {exc}") from None
        close = difflib.get_close_matches(fallback, [TYPOLOGY, "none", *routers], n=3, cutoff=0.6)
        guess = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise UsageError(
            f"unknown --router-arg fallback {fallback!r} of the language router ({guess}it "
            f"takes none, {TYPOLOGY} or a router's name: {', '.join(routers)})"
        ) from None


def _nearest_covered(language: str, covered: list[str]) -> str:
    """The covered language typologically nearest ``language``; where lang2vec cannot place
    it, refused naming this router's ways out (not the feature-set flag of ``xelm lang``)."""
    try:
        return rank_donors(language, covered)[0][0]
    except UsageError as exc:
        cause = str(exc).partition(": ")[0]  # its way out is xelm lang's, not the ensemble's
        raise UsageError(
            f"the typology fallback cannot place {language!r}: {cause}; weigh it with "
            "--router-arg fallback=posterior (or another fallback router, e.g. uniform), or "
            "leave it out with --langs"
        ) from None


class LanguageRouter(PreRouter):
    """Top-1 by language: each document goes to the first expert covering its language.

    W[d, e] = 1 for the first expert (ensemble order) whose languages include d's language, or
    a broader form of it (``arb`` and ``ar-EG`` go to an ``ar`` expert, ``zh-Hant`` to ``zh``:
    ``wanted_form``).

    ``fallback`` decides for a language no expert covers: None refuses (one line naming the
    covered languages); ``"typology"`` uses the expert of the typologically nearest covered
    language (lang2vec distance, as ``xelm lang nearest``); any other value names a registered
    router (e.g. ``"posterior"``) that weighs those documents instead, and those without a
    language.
    """

    name = "language"

    @dataclass(frozen=True, kw_only=True)
    class Options:
        fallback: str | None = option(
            None,
            help="For a language no expert covers: none refuses; typology takes the expert of "
            "the nearest covered language; a router's name (e.g. posterior) weighs those "
            "documents.",
        )

    def __init__(self, *args: Any, **options: Any) -> None:
        self.options = options_of(self, args, options)
        fallback = self.options.fallback
        if fallback is not None and fallback.strip().lower() in NO_FALLBACK:
            fallback = None
        if fallback not in (None, TYPOLOGY):
            _check_fallback_router(fallback)  # an unknown name: one line, now
        self.fallback = None if fallback in (None, TYPOLOGY) else fallback
        self.typology_fallback = fallback == TYPOLOGY
        self.routes_uncovered_languages = fallback is not None
        self._nearest: dict[str, str] = {}
        self._noted: set[str] = set()

    def _expert_language(self, language: str, covered: list[str]) -> str | None:
        broader = wanted_form(language, covered)  # the language itself, or as experts name it
        if broader in covered:
            return broader
        if self.typology_fallback:
            if language not in self._nearest:
                self._nearest[language] = _nearest_covered(language, covered)
            return self._nearest[language]
        return None

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        expert_of: dict[str, int] = {}
        for index, expert in enumerate(experts):
            for language in expert.languages:  # as normalised as the documents' (ara: ar)
                expert_of.setdefault(normalize_language(language), index)
        covered = list(expert_of)
        weights = np.zeros((len(documents), len(experts)))
        for row, document in enumerate(documents):
            if document.language is None and self.fallback is not None:
                weights[row] = np.nan  # no language to route by: the fallback router's
                continue
            target = self._expert_language(_language_of(document, row, self.name), covered)
            if target is not None:
                weights[row, expert_of[target]] = 1.0
            elif self.fallback is not None:
                weights[row] = np.nan
            else:
                raise UsageError(
                    f"no expert covers language {document.language!r} (covered: "
                    f"{', '.join(covered) or 'none'}): choose a covered language, add an "
                    "expert for it, or use --router-arg fallback=typology or fallback=posterior"
                )
        self._note_shared(weights, documents, experts)
        return weights

    def _note_shared(
        self, weights: Weights, documents: Sequence[Document], experts: Sequence[ExpertInfo]
    ) -> None:
        """Say once per language routed here that a later expert covers it too and gets none
        of it (an expert retrained beside the old one, both listed, silently loses). Experts of
        one clustering that assigns documents (TF-IDF) share languages by design: not noted
        (the ensemble already warns that they are routed by language)."""
        shared = []
        for row, document in enumerate(documents):
            language = document.language
            if language is None or language in self._noted or np.isnan(weights[row]).any():
                continue
            covering = [expert for expert in experts if language in expert.languages]
            if len(covering) > 1 and not _one_clustering(covering):
                self._noted.add(language)
                names = [expert.name for expert in covering]
                shared.append(f"{language} to {names[0]}, not {', '.join(names[1:])}")
        if shared:
            print(
                "xelm: note: the language router sends a language to the first expert that "
                f"covers it: {'; '.join(shared)} (reorder the members, or drop one)",
                file=sys.stderr,
            )


def _one_clustering(experts: Sequence[ExpertInfo]) -> bool:
    """Whether ``experts`` are different experts of one allocation."""
    references = [expert.allocation for expert in experts]
    if not all(references):
        return False
    digests = {reference.get("digest") for reference in references if reference}
    indexes = {reference.get("expert") for reference in references if reference}
    return len(digests) == 1 and None not in digests and len(indexes) == len(experts)


class OracleRouter(PreRouter):
    """Top-1 by language with the expert that is best for the language on a dev set.

    ``table`` maps a language to an expert id; ``xelm ensemble create --router oracle
    --calibration DEV`` fills it: for each language, the expert with the lowest mean token NLL
    on DEV. An analysis tool (an upper bound for top-1 routing), not a deployable router.
    """

    name = "oracle"

    @dataclass(frozen=True, kw_only=True)
    class Options:
        table: dict[str, str] | None = option(
            None,
            help='Language -> expert id, e.g. {"tr": "ID"}; filled by xelm ensemble create '
            "--router oracle --calibration DEV.",
        )

    def __init__(self, *args: Any, **options: Any) -> None:
        self.options = options_of(self, args, options)
        table = self.options.table or {}
        self.table = {normalize_language(k): v for k, v in table.items()}

    def check_experts(self, experts: Sequence[ExpertInfo]) -> None:
        """A table naming an expert that is not in the ensemble, refused when it is built
        (``xelm ensemble create`` would otherwise record a file every eval refuses)."""
        ids = {expert.id for expert in experts}
        for language, expert in self.table.items():
            if expert not in ids:
                raise UsageError(
                    f"the oracle router's expert {expert} for {language!r} is not in the "
                    "ensemble: calibrate it on these experts (xelm ensemble create MEMBERS "
                    "--router oracle --calibration DEV_DATA -o FILE)"
                )

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        if not self.table:
            raise UsageError(
                "the oracle router is not calibrated: create the ensemble with "
                "--router oracle --calibration DEV_DATA"
            )
        self.check_experts(experts)
        index = {expert.id: i for i, expert in enumerate(experts)}
        weights = np.zeros((len(documents), len(experts)))
        for row, document in enumerate(documents):
            language = _language_of(document, row, self.name)
            expert = self.table.get(wanted_form(language, self.table))
            if expert is None:
                calibrated = sorted(self.table)
                raise UsageError(
                    f"the oracle router was calibrated without language {language!r} (has: "
                    f"{', '.join(calibrated)}): keep to those languages or calibrate on data that "
                    "has it (xelm ensemble create --router oracle --calibration DEV_DATA)"
                )
            weights[row, index[expert]] = 1.0
        return weights

    def calibrate(
        self, scored: Sequence[ScoredDocument], experts: Sequence[ExpertInfo]
    ) -> dict[str, Any]:
        totals: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        for row, item in enumerate(scored):
            language = _language_of(item.document, row, self.name)
            totals[language] = totals.get(language, 0) - item.logprobs.sum(axis=1)
            counts[language] = counts.get(language, 0) + item.logprobs.shape[1]
        if not totals:
            raise UsageError("the oracle router needs calibration documents")
        self.table = {
            language: experts[int(np.argmin(total / counts[language]))].id
            for language, total in sorted(totals.items())
        }
        return {"table": self.table}
