"""``xelm data prepare``: tokenise a corpus once into per-language token shards.

The run has two passes over the output's temporary directory: every document of the wanted
languages is tokenised (in batches, the Rust tokenizer using its own threads) and appended to
its language's shard; then languages over their token budget are cut down to a seeded random
subset of whole documents, kept in corpus order. The result is renamed into place only when
complete. Budgets (see ``xelm_cli.data.budgets``) come from per-language caps and temperature
sampling, weighing languages by their sizes when known before reading (``--sizes``, or a
recipe's ``documents``), else by their tokens. Re-running with the same input, tokenizer and
options does nothing. The first pass's reading is ``xelm_cli.data.prepare_read``; the second
pass is ``xelm_cli.data.prepare_finish``; the refusals of inputs that need no reading are
``xelm_cli.data.prepare_checks``.
"""

import contextlib
import inspect
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from xelm_cli.cluster.allocation import Allocation
from xelm_cli.cluster.assigning import allocation_and_expert, every_expert
from xelm_cli.common.atomic import atomic_directory, output_lock
from xelm_cli.common.digest import sha256_bytes
from xelm_cli.common.errors import UsageError
from xelm_cli.common.jsonio import canonical_json
from xelm_cli.common.outputs import check_replaceable
from xelm_cli.data.budgets import (
    normalise_caps,
    normalise_sizes,
    read_limits,
    total_budget,
)
from xelm_cli.data.prepare_checks import (
    check_caps,
    check_unchanged,
    existing_manifest,
    record_ceiling,
    sizes_used,
    warn_unsized,
)
from xelm_cli.data.prepare_finish import Held, finish, output_budgets, shortfall_under
from xelm_cli.data.prepare_read import Progress, ReadContext, read_sources
from xelm_cli.data.prepare_work import (
    RepeatedByARerun,
    WorkDirectory,
    recorded_source,
    saved_state,
    work_directory,
)
from xelm_cli.data.routing import Routing
from xelm_cli.data.shards import (
    MANIFEST_NAME,
    Shards,
    format_minor,
    token_dtype_name,
    write_manifest,
)
from xelm_cli.data.source_plan import SourceOptions, SourcePlan, plan_sources
from xelm_cli.data.sources import DatasetSource
from xelm_cli.data.tokenizer_loading import TokenizerInfo, load_tokenizer
from xelm_cli.lang.codes import language_codes

DEFAULT_BATCH_SIZE = 1000
MIN_BATCH_SIZE = 1  # none: reading would never advance


@dataclass(frozen=True)
class PrepareResult:
    shards: Shards
    up_to_date: bool

    def __fspath__(self) -> str:
        """The shards' directory: ``train(seed, data=prepare(...))``."""
        return os.fspath(self.shards.path)

    @property
    def shortfall(self) -> int | None:
        """See ``token_shortfall``."""
        return token_shortfall(self.shards.manifest)


def token_shortfall(manifest: dict[str, Any]) -> int | None:
    """How many tokens short of ``options.tokens`` shards are because the corpus, within the
    caps, holds fewer (0: it holds enough; None: no ``tokens`` was given). A streamed language
    read to its limit holds at least that limit; with sizes, one that held less than its share
    is kept whole and the others are read further in its place, so the shards fall short only
    when they too run out or are capped (the few tokens whole documents leave under each limit
    are not counted: reading stops before the first document over it)."""
    languages = manifest["languages"]
    source_tokens = {
        lang: entry.get("source_tokens", entry["tokens"]) for lang, entry in languages.items()
    }
    reached = {lang for lang, entry in languages.items() if entry.get("read_to_limit")}
    made_up = format_minor(manifest) >= 3  # 1.3 on: languages read further in short ones' place
    return shortfall_under(source_tokens, reached, manifest["options"], made_up=made_up)


def _options(
    languages: list[str] | None,
    caps: dict[str, int] | None,
    alpha: float | None,
    tokens: int | None,
    seed: int,
    source: SourceOptions,
) -> dict[str, Any]:
    if alpha is not None and not (math.isfinite(alpha) and alpha >= 0):
        raise UsageError(f"--alpha must be a number >= 0 (0.3 is usual), not {alpha}")
    if seed < 0:  # checked now: the sampling that takes it runs after the whole reading
        raise UsageError(f"--seed must be 0 or more (got {seed})")
    options: dict[str, Any] = {
        "languages": languages,
        "token_caps": caps,
        "alpha": alpha,
        "tokens": tokens,
        "seed": seed,
        "split": source.split,
    }
    return {**options, **source.recorded()}


def _reading_inputs(
    plan: SourcePlan,
    tokenizer: TokenizerInfo,
    dtype_name: str,
    wanted: list[str] | None,
    limits: dict[str, int],
    reading: SourceOptions,
    documents_of: dict[str, Any],
    max_records: int | None,
) -> dict[str, Any]:
    """What the first pass (reading into the work directory) depends on beside the input, so
    that a rerun continues its work: not the options of the second pass (--seed; --cap,
    --tokens, --sizes and --alpha as far as they leave the read limits as they were, and
    always where no source is streamed: corpus files are read whole); ``documents_of``: the
    allocation and expert(s) whose documents are kept (``_documents_of``); ``max_records``."""
    streamed = plan.streams
    inputs: dict[str, Any] = {
        "tokenizer": tokenizer.fingerprint,
        "token type": dtype_name,
        "languages": wanted,
        "read limits (--cap, --tokens, --sizes, --alpha)": limits if streamed else None,
        "reading options": {"split": reading.split, **reading.recorded()},
    }
    if documents_of:  # absent otherwise: the work of earlier versions stays resumable
        inputs["documents of"] = documents_of
    if max_records is not None:  # (likewise)
        inputs["records read per streamed source (--max-records)"] = max_records
    return inputs


def _pinned(plan: SourcePlan, recorded: dict[str, Any] | None) -> SourcePlan:
    """``plan`` with each Hub dataset read at the commit that ``recorded`` (the record of an
    unfinished run's input) says it was read at; ``plan`` itself when none differs."""
    if recorded is None:
        return plan
    recipe = recorded.get("kind") == "recipe"  # a record per language, else one in all
    sources = dict(plan.sources)
    for name, source in plan.sources.items():
        record = recorded.get("languages", {}).get(name) if recipe else recorded
        commit = record.get("resolved_revision") if isinstance(record, dict) else None
        if isinstance(source, DatasetSource) and commit and source.revision != commit:
            sources[name] = replace(source, revision=commit)
    return plan if sources == plan.sources else replace(plan, sources=sources)


def _resumable_work(
    out: Path, plan: SourcePlan, record: dict[str, Any], reading: dict[str, Any], dtype_name: str
) -> tuple[SourcePlan, dict[str, Any], WorkDirectory]:
    """``out``'s work directory, keyed by the input's digest and ``reading`` (see
    ``_reading_inputs``), with the plan to read into it and that plan's record: ``plan`` and
    ``record``, or ``plan`` at the commits the unfinished work there was begun with
    (``_pinned``) when that is the work's key."""

    def keyed(record: dict[str, Any]) -> tuple[dict[str, Any], str]:
        inputs = {"input": record["digest"], **reading}
        return inputs, sha256_bytes(canonical_json(inputs))

    recorded = recorded_source(out)
    pinned = _pinned(plan, recorded)
    if pinned is not plan:  # a Hub dataset moved on since the work was begun: continue it
        pinned_record = pinned.record(previous=recorded)
        if keyed(pinned_record)[1] == (saved_state(work_directory(out)) or {}).get("key"):
            plan, record = pinned, pinned_record
    inputs, key = keyed(record)
    work = WorkDirectory(out, key, dtype_name, fresh=False, inputs=inputs, source=record)
    return plan, record, work


def prepare(
    source: str | Path,
    tokenizer: str | Path,
    out: str | Path,
    *,
    languages: Sequence[str] | str | None = None,
    token_caps: dict[str, int] | int | str | None = None,
    alpha: float | None = None,
    tokens: int | str | None = None,
    sizes: Mapping[str, float | str] | str | None = None,
    seed: int = 0,
    reading: SourceOptions | None = None,
    allocation: Allocation | str | Path | None = None,
    expert: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_records: int | str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> PrepareResult:
    """Tokenise ``source`` with the tokenizer of a bundle or tokenizer directory into ``out``.

    ``source`` is a corpus (files, a directory, a ``save_to_disk`` dataset), a dataset (a Hub
    id or a local directory laid out like one: streamed, never materialised), or a recipe
    (a file or a shipped recipe's name), read as ``reading`` (:class:`SourceOptions`: the
    ``--split``, ``--lang``, ``--config``... of the command) says: ``config="{lang}"`` reads
    one configuration per language of ``languages`` (a list, or text such as ``"en,tr"``),
    ``lang_map`` giving the dataset's code where it differs; ``language`` labels documents
    that carry no language. ``token_caps`` limits tokens per language (an int: every
    language; ``{"*": n}`` too; text as ``--cap`` takes it: ``"en=5M,de=2M"``); ``alpha`` and
    ``tokens`` (an int, or text such as ``"20M"``) set temperature sampling (see
    ``language_budgets``); ``sizes`` (``{"en": 3.07e9, "sw": 1.1e6}``, or text as ``--sizes``
    takes it: ``"en=3.07B,sw=1.1M"``) are the languages' sizes in any one unit (documents,
    bytes, tokens: only their ratios count), one for every language read, default a recipe's
    ``documents`` when it has them for every language. ``seed`` picks the sampled documents.
    A corpus too small for ``tokens`` is no error: the result's ``shortfall`` says by how much
    it fell short.

    ``allocation`` (an :class:`Allocation` or its path) with ``expert`` (an index) keeps only the
    documents that the allocation's clusterer assigns to that expert (TF-IDF: the nearest
    centroid), each as read; ``languages`` defaults to every language of the allocation (an
    expert's own languages are those that send it a good share of their documents; it gets
    some of others' too). The manifest records the expert (``options.allocation``), and
    ``xelm train`` trains only that expert on them. Caps, budgets and read limits count the
    documents kept. ``{expert}`` in ``out``'s last name stands for the index (``shards-{expert}``:
    one name for every expert, as ``prepare_experts`` and ``xelm plan --expert-data`` take it).

    With sizes, languages are weighed by them (``s_l**alpha``), not by their tokens, corpus
    files too. With ``tokens`` too, a streamed language is read only up to its share of it,
    ``min(cap_l, lam * p_l)`` (``read_limits``): one that holds less is kept whole and the
    others are read further, from where they stopped, to their shares of what it could not
    supply (a warning names it); ``shortfall`` counts what none could supply. Without
    ``tokens`` the budgets are ``lam = min u_l / p_l`` of everything read, so each streamed
    language is read up to its cap, else whole. Without sizes, a streamed language is read
    until its cap (else ``tokens``) is reached, and its weight for ``alpha`` is what was read (a
    warning names the languages weighed so before reading starts). A dataset whose rows carry
    their languages, read without ``languages``, is left once every language it gave is at its
    limit and a few batches more bring none new (``NEW_LANGUAGE_BATCHES``). A killed,
    interrupted or failed run continues where it stopped when run again with the same
    arguments (``seed`` may differ, and so may options that leave the read limits as they
    were: ``alpha`` without sizes and ``tokens``), a Hub dataset at the commit it was begun
    with; other read limits start afresh (a row that cannot be read is met again: no work is
    kept for it). Nothing is
    written when ``out`` already holds shards of the same input, tokenizer and options
    (``up_to_date``); other shards there are an error unless ``overwrite``.

    ``max_records`` (an int, or text such as ``"2M"``) bounds the reading of every streamed
    source, whatever it keeps: each is read until it has read that many records, to the end
    of the ``batch_size`` records that reach them (a source per language, as ``config=
    "{lang}"`` and recipes read: that many per language). A language it stops before its
    read limit is kept whole, as one read to its end. With an allocation, an expert that gets
    a small share of a language would otherwise read far into its stream to fill its limit.
    """
    if EXPERT_PLACEHOLDER in str(out):  # shards-{expert}/, as for --expert all and xelm plan
        if expert is None:
            raise UsageError(
                f"-o {out}: {EXPERT_PLACEHOLDER} stands for the index of --expert (with "
                "--allocation); give them, or name the shards without it"
            )
        out = _expert_output(out, str(expert))
    check_shards_outputs([Path(out)], (source, tokenizer, allocation), overwrite=overwrite)
    documents_of = allocation_and_expert(allocation, expert)
    settings = _Settings(
        languages=languages,
        token_caps=token_caps,
        alpha=alpha,
        tokens=tokens,
        sizes=sizes,
        seed=seed,
        reading=reading,
        batch_size=batch_size,
        max_records=max_records,
        workers=workers,
        overwrite=overwrite,
        progress=progress,
    )
    routing = Routing((documents_of,) if documents_of else ())
    (result,) = _prepare(source, tokenizer, {None: Path(out)}, Path(out), routing, settings)
    return result


EXPERT_PLACEHOLDER = "{expert}"
ALL_EXPERTS = "all"


def prepare_experts(
    source: str | Path,
    tokenizer: str | Path,
    out: str | Path,
    *,
    allocation: Allocation | str | Path,
    **options: Any,
) -> list[PrepareResult]:
    """``prepare(..., allocation=allocation, expert=I)`` for every expert I of ``allocation``,
    reading ``source`` once: each document read goes to the expert the allocation's assigner
    sends it to, into the shards at ``out`` with ``{expert}`` replaced by I (``"shards-{expert}"``).
    ``options``: ``prepare``'s keyword arguments but ``expert``. The results, in expert order,
    hold the same shards as the k runs of ``prepare`` would (languages read further in the
    place of short ones, with ``sizes`` and ``tokens``, too: each expert's from where it
    filled). A killed run continues as
    ``prepare``'s does (its work directory is ``out`` with ``{expert}`` as ``all``).

    Example: ``prepare_experts("allenai/c4", "seed/", "shards-{expert}", allocation="alloc/",
    reading=SourceOptions(config="{lang}"), languages="ar,de,hi", tokens="1B", sizes=...)``
    """
    _expert_output(out, ALL_EXPERTS)  # refuses a misplaced {expert} before anything is read
    unknown = sorted(set(options) - set(_SETTINGS_DEFAULTS))
    if unknown:
        raise TypeError(
            f"prepare_experts() got unexpected keyword arguments {', '.join(unknown)}: it takes "
            f"prepare()'s but expert ({', '.join(_SETTINGS_DEFAULTS)})"
        )
    experts = every_expert(allocation)
    outputs: dict[int | None, Path] = {e.index: _expert_output(out, str(e.index)) for e in experts}
    overwrite = bool(options.get("overwrite", False))
    check_shards_outputs(
        list(outputs.values()), (source, tokenizer, allocation), overwrite=overwrite
    )
    settings = _Settings(**{**_SETTINGS_DEFAULTS, **options})
    routing = Routing(experts, split=True)
    work_out = _expert_output(out, ALL_EXPERTS)
    return _prepare(source, tokenizer, outputs, work_out, routing, settings)


def check_shards_outputs(
    outputs: Sequence[Path],
    inputs: Iterable[Allocation | str | Path | None],
    *,
    overwrite: bool,
) -> None:
    """Refuse, before any input is read, shards outputs that would lose data: one inside a
    bundle, one that is, holds or lies inside an input (the source where it is a local path,
    the tokenizer, the allocation), and anything at one but shards or an empty folder (with
    ``overwrite``: replaced; without it, shards are left as they are when up to date)."""
    paths = [item.path if isinstance(item, Allocation) else item for item in inputs]
    for out in outputs:
        check_replaceable(
            out,
            overwrite=overwrite,
            inputs=paths,
            own=lambda path: path.is_dir() and (path / MANIFEST_NAME).is_file(),
            kind="shards",
            update=True,
        )


def _expert_output(template: str | Path, index: str) -> Path:
    """``template`` with ``{expert}`` as ``index``: in its last name, and only there (the
    experts' shards are siblings, and so is the work of ``--expert all``)."""
    path = Path(template)
    if EXPERT_PLACEHOLDER not in path.name or EXPERT_PLACEHOLDER in str(path.parent):
        raise UsageError(
            f"-o needs {EXPERT_PLACEHOLDER} in its last name (only there) for the expert's "
            f"index: one shards directory per expert, side by side (e.g. "
            f"shards-{EXPERT_PLACEHOLDER}/), not {template}"
        )
    return path.with_name(path.name.replace(EXPERT_PLACEHOLDER, index))


@dataclass(frozen=True)
class _Settings:
    """The keyword arguments of ``prepare`` beside the input, the output and the expert."""

    languages: Sequence[str] | str | None
    token_caps: dict[str, int] | int | str | None
    alpha: float | None
    tokens: int | str | None
    sizes: Mapping[str, float | str] | str | None
    seed: int
    reading: SourceOptions | None
    batch_size: int
    max_records: int | str | None
    workers: int | None
    overwrite: bool
    progress: Progress | None


_SETTINGS_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(prepare).parameters.items()
    if parameter.kind is parameter.KEYWORD_ONLY and name not in ("allocation", "expert")
}  # prepare's defaults: declared once, in its signature


def _prepare(
    source: str | Path,
    tokenizer: str | Path,
    outputs: dict[int | None, Path],
    work_out: Path,
    routing: Routing,
    settings: _Settings,
) -> list[PrepareResult]:
    """``prepare`` into ``outputs`` (expert index -> shards; None: a single output), each
    document kept as ``routing`` says, the work in ``work_out``'s hidden sibling; the results
    in the order of ``outputs``. Outputs that already hold these shards are left as they are
    (``up_to_date``)."""
    if settings.batch_size < MIN_BATCH_SIZE:
        raise UsageError(
            f"--batch-size must be at least {MIN_BATCH_SIZE}, not {settings.batch_size}"
        )
    outputs = {index: Path(os.path.abspath(out)) for index, out in outputs.items()}
    work_out = Path(os.path.abspath(work_out))
    chosen = language_codes(settings.languages)
    wanted = sorted(set(chosen)) if chosen else None
    caps = normalise_caps(settings.token_caps)
    tokens = total_budget(settings.tokens)
    given_sizes = normalise_sizes(settings.sizes)
    alpha = settings.alpha
    if routing.assigns and wanted is None:  # every document an expert gets, whatever its
        wanted = sorted(routing.experts[0].allocation.languages)  # language's share of it
    check_caps(wanted, caps)
    reading = settings.reading or SourceOptions()
    options = _options(wanted, caps, alpha, tokens, settings.seed, reading)
    joined = routing.assigns and routing.experts[0].assigner.document_bytes
    plan = plan_sources(source, wanted, reading)
    max_records = record_ceiling(settings.max_records, plan)
    if wanted is None and plan.recipe is not None:
        wanted = sorted(plan.sources)
    weighed = alpha is not None or tokens is not None
    weights = sizes_used(given_sizes, plan, wanted, weighed=weighed)
    own = {  # each output's options, in the order earlier versions wrote them
        index: {
            **options,
            **({"allocation": expert.reference} if expert else {}),
            **({"batch_size": settings.batch_size} if joined else {}),  # records are joined
            **({"sizes": weights} if weights is not None else {}),  # within a batch
            **({"max_records": max_records} if max_records is not None else {}),
        }
        for index, expert in routing.members()
    }
    info = load_tokenizer(tokenizer)
    with contextlib.ExitStack() as locks:
        for path in sorted({*outputs.values(), work_out}):  # the work's too: a plain run's
            locks.enter_context(output_lock(path))  # may share it; in order: no deadlock
        old = {
            i: existing_manifest(out, overwrite=settings.overwrite) for i, out in outputs.items()
        }
        previous = next((m["source"] for m in old.values() if m and "source" in m), None)
        record = plan.record(previous=previous or recorded_source(work_out))
        pending = {}
        for index, out in outputs.items():
            manifest = old[index]
            if manifest is not None and not settings.overwrite:
                check_unchanged(out, manifest, record, info.fingerprint, own[index])
            else:
                pending[index] = out
        if pending:
            dtype_name = token_dtype_name(info.vocab_size)
            limits = read_limits(caps, tokens, sizes=weights, alpha=alpha)
            reading_inputs = _reading_inputs(
                plan,
                info,
                dtype_name,
                wanted,
                limits,
                reading,
                _documents_of(routing, own),
                max_records,
            )
            plan, record, work = _resumable_work(work_out, plan, record, reading_inputs, dtype_name)
            context = ReadContext(
                work,
                info,
                set(wanted) if wanted else None,
                limits,
                settings.batch_size,
                settings.progress,
                routing,
                max_records=max_records,
            )
            header = {"dtype": dtype_name, "tokenizer": info.record(), "source": record}
            any_own = next(iter(own.values()))  # the limits' options are everyone's
            warn_unsized(plan, wanted, limits, any_own)
            with work.kept_on_error():
                offsets = read_sources(context, plan, workers=settings.workers, options=any_own)
                empty = [i for i in pending if not routing.of_expert(list(offsets), i)]
                for index, out in pending.items():
                    if index in empty:
                        continue
                    keys = routing.of_expert(list(offsets), index)
                    who = f"expert {index}: " if index is not None else ""
                    held = replace(Held.of(work, offsets, keys), who=who)
                    budgets, streamed = output_budgets(held, plan, own[index])
                    with atomic_directory(out, overwrite=settings.overwrite) as tmp:
                        entries = finish(
                            work, tmp, held, budgets, seed=settings.seed, streamed=streamed
                        )
                        manifest = {**header, "options": own[index], "languages": entries}
                        write_manifest(tmp, manifest)
                if empty:
                    raise _nothing_for(routing, empty, plan.path, wanted)
    return [
        PrepareResult(Shards.open(out), up_to_date=index not in pending)
        for index, out in outputs.items()
    ]


def _nothing_for(
    routing: Routing, empty: list[int | None], source: str, languages: list[str] | None
) -> RepeatedByARerun:
    """The refusal of experts of ``prepare_experts`` that got no document (the others' shards
    are written by then)."""
    experts = {e.index: e for e in routing.experts}
    fitted = sorted({lang for i in empty if i is not None for lang in experts[i].languages})
    which = ", ".join(str(i) for i in empty)
    name = routing.experts[0].allocation.path.name
    read = f" of {', '.join(languages)}" if languages else ""
    return RepeatedByARerun(
        f"no documents{read} in {source} assigned to expert{'s' if len(empty) > 1 else ''} "
        f"{which} of {name}: the other experts' shards are written, not theirs; read the "
        f"languages they were fitted on too (--langs with {', '.join(fitted)})"
    )


def _documents_of(routing: Routing, own: dict[int | None, dict[str, Any]]) -> dict[str, Any]:
    """What the work's documents are chosen by (none: every document), for its key."""
    if not routing.assigns:
        return {}
    first = own[routing.members()[0][0]]
    chosen: dict[str, Any] = {k: first[k] for k in ("allocation", "batch_size") if k in first}
    if routing.split:
        chosen["allocation"] = {**chosen["allocation"], "expert": ALL_EXPERTS}
    return chosen


__all__ = [
    "ALL_EXPERTS",
    "EXPERT_PLACEHOLDER",
    "MANIFEST_NAME",
    "PrepareResult",
    "prepare",
    "prepare_experts",
    "token_shortfall",
]
