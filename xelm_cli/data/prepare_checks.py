"""The refusals of ``xelm data prepare`` that need no further reading: options that contradict
each other or the input, languages asked for with no documents, and an output holding shards
made differently."""

import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

from xelm_cli.cluster.assigning import ExpertDocuments
from xelm_cli.common.errors import UsageError, XelmError
from xelm_cli.common.units import token_count
from xelm_cli.data.budgets import ALL_LANGUAGES, read_limit
from xelm_cli.data.corpus import labelled_files, source_kind
from xelm_cli.data.prepare_work import RepeatedByARerun
from xelm_cli.data.shards import Shards
from xelm_cli.data.source_plan import SourcePlan
from xelm_cli.data.sources import DatasetSource


def check_caps(langs: list[str] | None, caps: dict[str, int] | None) -> None:
    """A cap for a language outside ``langs`` is a mistake (it would never apply)."""
    outside = [lang for lang in caps or {} if lang != ALL_LANGUAGES and langs and lang not in langs]
    if outside:
        raise UsageError(
            f"--cap {', '.join(outside)}: not in --langs {','.join(langs or [])}; "
            "add it to --langs or drop its cap"
        )


def record_ceiling(max_records: int | str | None, plan: SourcePlan) -> int | None:
    """``prepare``'s ``max_records`` as a number, refused for a source with nothing streamed:
    corpus files are read whole (their budgets apply by sampling)."""
    if max_records is None:
        return None
    ceiling = token_count(max_records, "--max-records", "a record count")
    if not plan.streams:
        raise UsageError(
            f"--max-records bounds the reading of streamed datasets; {plan.path} is read "
            "whole (corpus files): bound it with --cap or --tokens instead"
        )
    return ceiling


def sizes_used(
    sizes: dict[str, float] | None,
    plan: SourcePlan,
    languages: list[str] | None,
    *,
    weighed: bool,
) -> dict[str, float] | None:
    """The sizes that weigh ``languages`` when ``weighed`` (--alpha or --tokens is given):
    ``sizes`` as given, else the recipe's ``documents`` when it has them for every language;
    None: the languages are weighed by the tokens read."""
    if sizes is not None:
        _check_sizes(sizes, languages, weighed=weighed)
        return sizes
    if not weighed or plan.recipe is None or not languages:
        return None
    return plan.recipe.sizes(languages)


def warn_unsized(
    plan: SourcePlan,
    languages: list[str] | None,
    limits: dict[str, int],
    options: dict[str, Any],
) -> None:
    """Before reading: a warning naming the streamed languages that ``--alpha``/``--tokens``
    (``options``, a manifest's) will weigh by the tokens read up to their read limit, for want
    of sizes (a language read whole is weighed by all of it: its size), and the ``--sizes`` that
    would weigh them by their size and read only their share. Without ``languages`` (a dataset
    read without --langs) its languages are not known yet: the warning says so."""
    alpha, tokens = options.get("alpha"), options.get("tokens")
    if options.get("sizes") is not None or (alpha is None and tokens is None) or not limits:
        return
    option = "--alpha" if alpha is not None else "--tokens"
    how = "(en=3.07B,de=397M: documents, bytes or tokens) to weigh each language by its size"
    if languages is None:
        if plan.streams:
            sys.stderr.write(
                f"xelm: warning: {option} weighs the languages of {plan.path} by the tokens read "
                "up to the read limit (--cap, else --tokens), not by size; give --langs and "
                f"--sizes {how} and read only its share\n"
            )
        return
    streamed = [
        lang
        for lang in languages
        if read_limit(limits, lang) is not None
        and any(
            isinstance(source, DatasetSource) and plan.only_language(name) in (None, lang)
            for name, source in plan.sources.items()
        )
    ]
    if len(languages) > 1 and streamed:
        sys.stderr.write(
            f"xelm: warning: {option} weighs {', '.join(sorted(streamed))} by the tokens read up "
            f"to the read limit (--cap, else --tokens), not by size; give --sizes {how} and "
            "read only its share\n"
        )


def _check_sizes(sizes: dict[str, float], languages: list[str] | None, *, weighed: bool) -> None:
    """``--sizes`` weighs exactly the languages read, for --alpha or --tokens."""
    if not weighed:
        raise UsageError(
            "--sizes weighs the languages for --tokens and --alpha: give either, or drop --sizes"
        )
    if not languages:
        raise UsageError("--sizes needs --langs: the languages whose sizes it gives")
    outside = [lang for lang in sizes if lang not in languages]
    if outside:
        raise UsageError(
            f"--sizes {', '.join(outside)}: not in --langs {','.join(languages)}; "
            "add it to --langs or drop its size"
        )
    missing = [lang for lang in languages if lang not in sizes]
    if missing:
        raise UsageError(
            f"--sizes has no size for {', '.join(missing)}: give one for every language read "
            "(--langs, else the recipe's), in one unit (documents, bytes or tokens)"
        )


def _corpus_languages(plan: SourcePlan, seen: set[str]) -> list[str]:
    """The languages ``plan``'s input has, as far as known without reading more: those read
    (``seen``: rows of them with text) and those corpus files are named for (left unread when
    not wanted); not a recipe's (or ``--config '{lang}'``'s) own list, which names a language
    whose source turned out empty too."""
    languages = set(seen)
    if plan.kind == "files" and source_kind(plan.path) == "files":
        languages |= {lang for _, lang in labelled_files(plan.path) if lang}
    return sorted(languages)


def check_languages(
    plan: SourcePlan,
    found: set[str],
    seen: set[str],
    langs: Collection[str] | None,
    caps: dict[str, int] | None,
    expert: ExpertDocuments | None = None,
) -> None:
    """Languages asked for (``langs``, ``caps``) with no documents ``found`` are an error; with
    ``expert``, one read (``seen``) whose documents all went to other experts is not, and is
    named when it is one of the expert's own languages."""
    mine = f" assigned to {_expert_name(expert)}" if expert else ""
    named = [*(langs or []), *(k for k in (caps or {}) if k != ALL_LANGUAGES)]
    if not found:
        if named and not expert:
            raise no_documents_in(plan, sorted(set(named)), seen, none_found=True)
        raise RepeatedByARerun(
            f"no documents in {plan.path}{mine}" + (" for --langs" if langs else "")
        )
    missing = sorted({lang for lang in named if lang not in found})
    if expert is not None:
        own = [lang for lang in missing if lang in seen and lang in expert.languages]
        if own:
            sys.stderr.write(
                f"xelm: warning: {_expert_name(expert)} got no documents of {', '.join(own)}: "
                f"the shards hold {', '.join(sorted(found))}\n"
            )
        missing = [lang for lang in missing if lang not in seen]
    if missing:
        raise no_documents_in(plan, missing, seen)


def _expert_name(expert: ExpertDocuments) -> str:
    return f"expert {expert.index} of {expert.allocation.path.name}"


def no_documents_in(
    plan: SourcePlan, missing: list[str], seen: set[str], *, none_found: bool = False
) -> RepeatedByARerun:
    """The refusal of languages asked for that ``plan``'s input has no documents of
    (``none_found``: nor of any other asked for). The same command meets it again, and
    dropping them changes the work's key: no work is kept for it."""
    has = _corpus_languages(plan, seen)
    if plan.recipe is not None:  # a source per language: what the others gave so far
        what = f"documents read in {', '.join(has)}" if has else "none read in any language"
    else:
        what = f"it has {len(has)} language{'s' if len(has) != 1 else ''}: {', '.join(has)}"
    way_out = (
        "name languages it has in --langs / --cap"
        if none_found and has
        else "drop them from --langs / --cap"
    )
    return RepeatedByARerun(
        f"no documents in {', '.join(missing)} in {plan.path} ({what}); {way_out}"
    )


def existing_manifest(out: Path, *, overwrite: bool) -> dict[str, Any] | None:
    """The manifest of shards already at ``out``; anything else there is refused."""
    if not out.exists():
        return None
    try:
        return Shards.open(out).manifest
    except XelmError as exc:
        if overwrite:
            return None
        raise UsageError(
            f"output {out} exists and is not usable shards ({exc}); pass --force"
        ) from None


def check_unchanged(
    out: Path,
    old: dict[str, Any],
    source: dict[str, Any],
    fingerprint: str,
    options: dict[str, Any],
) -> None:
    """Shards at ``out`` (``old``: their manifest) made of another input, with another
    tokenizer or other options are refused."""
    changed = []
    if old.get("source", {}).get("digest") != source["digest"]:
        changed.append("the input changed")
    if old.get("tokenizer", {}).get("fingerprint") != fingerprint:
        changed.append("another tokenizer")
    if old.get("options") != options:
        keys = {*options, *old.get("options", {})}
        differing = sorted(k for k in keys if old.get("options", {}).get(k) != options.get(k))
        changed.append("other options (" + ", ".join(differing) + ")")
    if changed:
        raise UsageError(
            f"{out} holds shards made differently ({'; '.join(changed)}); "
            "pass --force to rebuild, or choose another -o"
        )


__all__ = [
    "check_caps",
    "check_languages",
    "check_unchanged",
    "existing_manifest",
    "no_documents_in",
    "record_ceiling",
    "sizes_used",
    "warn_unsized",
]
