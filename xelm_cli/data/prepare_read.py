"""Pass 1 of ``xelm data prepare``: every source read, tokenised and appended under its
language (or language and expert) to the work directory, from where an earlier run stopped, up
to the read limits."""

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from xelm_cli.common.errors import XelmError
from xelm_cli.data.budgets import read_limit, read_limits
from xelm_cli.data.prepare_checks import check_languages, no_documents_in
from xelm_cli.data.prepare_work import LanguageCount, RepeatedByARerun, WorkDirectory
from xelm_cli.data.routing import Routing
from xelm_cli.data.source_plan import SourcePlan
from xelm_cli.data.sources import (
    Batch,
    DatasetSource,
    LanguagesMet,
    Source,
    prefetched,
    read_ahead,
)
from xelm_cli.data.tokenizer_loading import TokenizerInfo, tokenizer_threads

# (language, its counts so far, its read limit or None): called after each batch
Progress = Callable[[str, LanguageCount, int | None], None]


@dataclass
class _Encoded:
    """A batch, the encodings of its documents ``kept`` (the others were not wanted) with the
    key each goes under (``Routing``: its language, or language and expert), and its source
    position after it."""

    batch: Batch
    position: Any
    kept: Sequence[int]
    keys: Sequence[str]
    encodings: list[Any]  # tokenizers.Encoding, one per kept document


@dataclass(frozen=True)
class ReadContext:
    """What pass 1 reads every source with, into ``work``."""

    work: WorkDirectory
    tokenizer: TokenizerInfo
    wanted: set[str] | None  # None: every language
    limits: dict[str, int]  # the read limits of streamed sources
    batch_size: int
    progress: Progress | None
    routing: Routing = field(default_factory=Routing)  # the experts kept, under which keys
    seen: set[str] = field(default_factory=set)  # the languages read, wanted or not
    max_records: int | None = None  # records a streamed source is read for, at most about
    warned_blank: set[str] = field(default_factory=set)  # languages _warn_blank named

    def full(self, language: str) -> bool:
        """Whether every key of ``language`` reached its read limit."""
        counts = self.work.counts
        return all(key in counts and counts[key].full for key in self.routing.keys(language))


def _key_limit(limits: dict[str, int], key: str, routing: Routing) -> int | None:
    """The read limit of ``key``: its own (an expert's language read further, ``_made_up``),
    else its language's (``read_limit``)."""
    return limits[key] if key in limits else read_limit(limits, routing.language(key))


def _encode(items: Iterable[tuple[Batch, Any]], context: ReadContext) -> Iterator[_Encoded]:
    """Tokenise each batch's documents of wanted languages that are not full yet. Runs ahead
    of the writer (``_add_batch``): a key that fills meanwhile only costs the encoding of
    documents the writer then drops (``full`` only ever turns on). Token ids are taken out
    of the encodings by the writer, leaving this thread to the tokenizer. With experts
    (``context.routing``), only the documents the allocation assigns to them are kept, each
    under its key. Every language read, wanted or not, is added to ``context.seen``."""
    wanted, counts, routing = context.wanted, context.work.counts, context.routing
    for batch, position in items:
        languages = batch.languages
        context.seen.update(languages)
        full = {key for key, c in list(counts.items()) if c.full}  # list(): one atomic copy
        if wanted is None and not full and not routing.assigns:
            keep: Sequence[int] = range(len(languages))  # no test per document
            keys: Sequence[str] = languages
        else:
            allowed = {lang for lang in set(languages) if not full.issuperset(routing.keys(lang))}
            if wanted is not None:
                allowed &= wanted
            keep = [i for i, lang in enumerate(languages) if lang in allowed]
            keys = [languages[i] for i in keep]
            if routing.assigns:
                labels = routing.labels([batch.texts[i] for i in keep], keys)
                kept = [(i, k) for i, k in zip(keep, labels, strict=True) if k and k not in full]
                keep, keys = [i for i, _ in kept], [k for _, k in kept]
        texts = batch.texts if len(keep) == len(languages) else [batch.texts[i] for i in keep]
        encodings = context.tokenizer.backend.encode_batch_fast(texts, add_special_tokens=False)
        yield _Encoded(batch, position, keep, keys, encodings)


def _add_batch(
    context: ReadContext,
    encoded: _Encoded,
    limits: dict[str, int],
    take: dict[str, int] | None = None,
) -> dict[str, int]:
    """Append each wanted document of a tokenised batch under its key, stopping a key at the
    first document that would take it over its read limit (its language's). ``take`` (a batch
    read again for keys read further, ``_replaying``): only its keys, each past its first
    ``take[key]`` documents (those it holds already). Returns each key that filled in this
    batch with how many of its documents in the batch come before the cut (kept, or held
    before): where reading that key further resumes in this batch (``_made_up``)."""
    work, routing = context.work, context.routing
    batch = encoded.batch
    grouped: dict[str, tuple[list[list[int]], int]] = {}
    met: dict[str, int] = {}  # each key's documents of the batch so far
    for i, key, encoding in zip(encoded.kept, encoded.keys, encoded.encodings, strict=True):
        count = work.counts.get(key)
        if (count is not None and count.full) or not (ids := encoding.ids):
            continue
        ordinal = met[key] = met.get(key, 0) + 1
        if take is not None and (key not in take or ordinal <= take[key]):
            continue
        documents, nbytes = grouped.get(key, ([], 0))
        documents.append(ids)
        grouped[key] = (documents, nbytes + len(batch.texts[i].encode()))
    filled: dict[str, int] = {}
    for key, (documents, nbytes) in grouped.items():
        appender = work.appender(key)
        limit = _key_limit(limits, key, routing)
        if limit is not None:
            room = limit - appender.count.tokens
            lengths = np.cumsum([len(d) for d in documents])
            fits = int(np.searchsorted(lengths, room, side="right"))
            if fits < len(documents):
                if fits == 0 and appender.count.documents == 0:
                    raise _FirstDocumentOverLimit(routing.language(key), limit, len(documents[0]))
                appender.count.full = True
                filled[key] = met[key] - len(documents) + fits
                nbytes = round(nbytes * fits / len(documents))  # for progress only
                documents = documents[:fits]
        if documents:
            appender.add(documents, nbytes)
    if context.progress:
        for language in sorted({routing.language(key) for key in grouped}):
            _report(context, language, limits)
    return filled


def _report(context: ReadContext, language: str, limits: dict[str, int]) -> None:
    """Tell ``context.progress`` what ``language`` holds, over all its keys."""
    assert context.progress is not None
    keys = context.routing.keys(language)
    counts = [context.work.counts[key] for key in keys if key in context.work.counts]
    total = LanguageCount(
        documents=sum(c.documents for c in counts),
        tokens=sum(c.tokens for c in counts),
        bytes=sum(c.bytes for c in counts),
        full=context.full(language),
    )
    each = [_key_limit(limits, key, context.routing) for key in keys]
    limit = sum(n for n in each if n is not None) if None not in each else None
    context.progress(language, total, limit)


class _FirstDocumentOverLimit(Exception):
    """A language's read limit is below its first document: it would get no documents."""

    def __init__(self, language: str, limit: int, length: int) -> None:
        super().__init__(language, limit, length)
        self.language, self.limit, self.length = language, limit, length


@contextlib.contextmanager
def _limits_named(caps: dict[str, int] | None, sized: bool) -> Iterator[None]:
    """``_FirstDocumentOverLimit`` as one line naming the option that set the limit (``sized``:
    ``--tokens`` is shared out by sizes)."""
    try:
        yield
    except _FirstDocumentOverLimit as exc:
        lang = exc.language
        cap = read_limit(caps or {}, lang)
        budget = "a budget (--tokens shared by --sizes)" if sized else "a budget (--tokens)"
        what, way_out = (
            ("a cap", f"--cap {lang}=...")
            if cap is not None and cap <= exc.limit
            else (budget, "--tokens")
        )
        raise RepeatedByARerun(
            f"{what} of {exc.limit:,} tokens is below the first document of {lang} "
            f"({exc.length:,} tokens): raise {way_out} or drop {lang} from --langs"
        ) from None


def read_sources(
    context: ReadContext,
    plan: SourcePlan,
    *,
    workers: int | None,
    options: dict[str, Any],
) -> dict[str, NDArray[np.uint64]]:
    """Pass 1: every source, from where an earlier run stopped, into the work directory; each
    language's document offsets (read-only maps of the work's offsets files). Streamed
    (dataset) sources stop at their languages' read limits (``context.limits``: see
    ``read_limits``; with sizes and ``--tokens``, shares of ``--tokens``, read further, round
    after round, while some language held less than its share and others can take its place:
    ``_made_up``); corpus files are read whole, their budgets applied by sampling afterwards.
    Three stages overlap: reading (a thread), tokenising (``workers`` threads; the Rust
    tokenizer releases the GIL) and writing here. A language asked for (--langs, --cap) that
    has no documents is an error."""
    caps = options.get("token_caps")
    sized = options.get("sizes") is not None and options.get("tokens") is not None
    made_up = context.work.notes.get(MADE_UP_LIMITS)
    if made_up is not None:  # a rerun continues the reading further
        context = replace(context, limits=made_up)
    with tokenizer_threads(workers), _limits_named(caps, sized):
        _read_unfinished(context, plan)
        while sized and (further := _made_up(context, plan, options)) is not None:
            context = further
            _read_unfinished(context, plan)
    offsets = context.work.close()
    _warn_blank(context, plan.path)
    for index, expert in context.routing.members():
        found = set(context.routing.of_expert(list(offsets), index))
        if found or not context.routing.split:  # an expert of none: after the others' shards
            check_languages(plan, found, context.seen, context.wanted, caps, expert)
    return offsets


MADE_UP_LIMITS = "read limits made up for languages short of their shares"


def _made_up(context: ReadContext, plan: SourcePlan, options: dict[str, Any]) -> ReadContext | None:
    """With sizes and ``--tokens``: when languages held less than their shares (read to their
    end: not ``full``; a language of the sizes with no document holds 0), the context that
    reads the others further, to their shares of what those could not supply (``read_limits``
    with ``held``), their sources reopened where they stopped; None when none did or no other
    can take more (caps). Each source is read again from where its keys read further filled
    (``_read_again``): the result is the documents a run to the new limits reads. The new
    limits, the reopened sources and the counts are saved at once, the limits in the work's
    notes, for a rerun to continue with. A language that runs
    out in turn is made up for in the next round, so the rounds end with every language read
    to the limits that what the others held gives (what ``token_shortfall`` assumes)."""
    work, routing = context.work, context.routing
    limits: dict[str, int] = {}
    more: set[str] = set()  # keys
    for index in routing.indexes:  # each expert's languages are made up for among themselves
        mine = routing.of_expert(list(work.counts), index)
        counts = {lang: work.counts[key] for lang, key in mine.items()}
        held = {lang: count.tokens for lang, count in counts.items() if not count.full}
        held.update({lang: 0 for lang in options["sizes"] if lang not in mine})
        own = read_limits(
            options.get("token_caps"),
            options["tokens"],
            sizes=options["sizes"],
            alpha=options.get("alpha"),
            held=held,
        )
        limits.update({routing.key(lang, index): limit for lang, limit in own.items()})
        more |= {
            key
            for lang, key in mine.items()
            if work.counts[key].full
            and own.get(lang, 0) > (_key_limit(context.limits, key, routing) or 0)
        }
    if not more:
        return None
    work.notes[MADE_UP_LIMITS] = limits
    for key in more:
        work.counts[key].full = False
    languages = {routing.language(key) for key in more}
    reopened = [
        name
        for name, source in plan.sources.items()
        if isinstance(source, DatasetSource) and plan.only_language(name) in (None, *languages)
    ]
    for name in reopened:
        _read_again(work, name, more)
    work.reopen(reopened)
    return replace(context, limits=limits)


def _read_unfinished(context: ReadContext, plan: SourcePlan) -> None:
    """Every source not read to its end or its languages' read limits yet, in turn."""
    counts = context.work.counts
    for name, source in plan.sources.items():
        only = plan.only_language(name)
        if not context.work.finished(name):
            _read_source(context, name, source, yields={only} if only else context.wanted)
        empty = only and not any(
            key in counts and counts[key].documents for key in context.routing.keys(only)
        )
        assigned_elsewhere = context.routing.assigns and only in context.seen  # named at the end
        if only and empty and not assigned_elsewhere:
            _warn_blank(context, plan.path)
            raise no_documents_in(plan, [only], context.seen)  # at once, not at the end


def _read_source(
    context: ReadContext, name: str, source: Source, *, yields: set[str] | None
) -> None:
    """One source of ``read_sources`` (``yields``: the languages it has, None: not known),
    from its recorded position, up to its read limits: a source of known languages until
    they are all full, one of unknown languages until those it has given are and a few
    batches more bring none new (``LanguagesMet``). When reading fails (not writing: a
    batch half written would be read again) the position after the last batch written is
    recorded first, for a rerun to continue from."""
    work = context.work
    streamed = isinstance(source, DatasetSource)
    limits = context.limits if streamed else {}
    ceiling = context.max_records if streamed else None
    met = LanguagesMet()  # of a stream of unknown languages

    def exhausted(batch: Batch | None = None) -> bool:
        if ceiling is not None and records_read(written) >= ceiling:
            return True
        if not limits:
            return False
        if yields is None:
            return batch is not None and met.after(batch.languages, context.full)
        return bool(yields) and all(context.full(lang) for lang in yields)

    written = work.position(name)
    if exhausted():
        work.checkpoint(name, written, done=True)
        return
    replay = work.sources.get(name, {}).get(REPLAY) if streamed else None
    stream = source.open(written, batch_size=context.batch_size)
    batches = read_ahead(_encode(prefetched(stream), context))
    writing = False
    try:
        for encoded in batches:
            writing = True
            take = _replaying(replay, records_read(written))
            filled = _add_batch(context, encoded, limits, take)
            if take is None:  # (a batch read again was counted the first time)
                _add_blank_counts(context, encoded.batch)
            if streamed:
                for key, before in filled.items():
                    work.sources.setdefault(name, {}).setdefault(FILLS, {})[key] = {
                        "position": written,
                        "kept": before,
                    }
            writing = False
            written = encoded.position
            if exhausted(encoded.batch):
                break
            work.checkpoint(name, written)
    except (XelmError, OSError):
        if not writing:
            with contextlib.suppress(OSError):  # a full disk: the last checkpoint stands
                work.checkpoint(name, written, now=True)
        raise
    finally:
        batches.close()
    work.checkpoint(name, written, done=True)


FILLS = "fills"  # a source's keys that filled partway, each where: see _add_batch
REPLAY = "replay"  # a source read again for keys read further: see _made_up


def _replaying(replay: dict[str, Any] | None, start: int) -> dict[str, int] | None:
    """What ``_add_batch`` takes of a batch that starts after ``start`` records of a source
    read again from where keys read further filled (``replay``, ``_made_up``): before the
    records the source had read then (``until``), only those keys' documents, each key's past
    where it filled; None (everything) from there on."""
    if not replay or start >= replay["until"]:
        return None
    return {
        key: at["kept"] if at["rows"] == start else 0
        for key, at in replay["keys"].items()
        if at["rows"] <= start
    }


def _read_again(work: WorkDirectory, name: str, keys: set[str]) -> None:
    """Source ``name`` set back to read ``keys`` further from where each filled (the batch
    that filled it, past the documents it kept: ``FILLS``), not from where the source
    stopped: the documents after the cut of that batch, and in a source of several keys
    those read while the others filled, come next, as in a run to the new limits. Until the
    source is back where it stopped, it gives only those keys (``_replaying``)."""
    entry = work.sources.get(name)
    fills = (entry or {}).get(FILLS, {})
    again = {key: fills[key] for key in sorted(keys) if key in fills}
    if entry is None or not again:  # (work of an earlier version: on from where it stopped)
        return
    earlier = entry.get(REPLAY) or {}
    until = max(records_read(entry.get("position")), earlier.get("until", 0))
    first = min(again.values(), key=lambda at: records_read(at["position"]))
    work.sources[name] = {
        **entry,
        "position": first["position"],
        FILLS: {key: at for key, at in fills.items() if key not in again},
        REPLAY: {
            "until": until,
            "keys": {
                key: {"rows": records_read(at["position"]), "kept": at["kept"]}
                for key, at in again.items()
            },
        },
    }


BLANK_ROWS = "rows skipped as blank, per language"  # in the work's notes


def _add_blank_counts(context: ReadContext, batch: Batch) -> None:
    """Add the rows of wanted languages that ``batch`` skipped as blank to the work's notes."""
    if batch.blank:
        counts = context.work.notes.setdefault(BLANK_ROWS, {})
        for lang, n in batch.blank.items():
            if context.wanted is None or lang in context.wanted:
                counts[lang] = counts.get(lang, 0) + n


def _warn_blank(context: ReadContext, where: str) -> None:
    """Name, once a language, the rows of it skipped so far as blank (empty, whitespace only or
    null text): a configuration of mostly empty rows, or the wrong --text-column, would
    otherwise show only as tokens missing."""
    counts = context.work.notes.get(BLANK_ROWS, {})
    for lang, n in sorted(counts.items()):
        if n and lang not in context.warned_blank:
            context.warned_blank.add(lang)
            sys.stderr.write(
                f"xelm: warning: {where}: {n:,} row{'s' if n != 1 else ''} of {lang} skipped as "
                "blank (empty, whitespace only or null text; is --text-column right?)\n"
            )


def records_read(position: Any) -> int:
    """The records a dataset source's stream read before ``position`` (0 at its start)."""
    return int(position.get("rows", 0)) if isinstance(position, dict) else 0
