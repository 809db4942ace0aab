"""A sample of each language's documents, for fitting a clusterer on a corpus of any size.

Corpus files are sampled uniformly: every document is read, and a seeded reservoir keeps at
most N of each language. Datasets and recipes (mC4 has billions of documents) are streamed
instead, as ``xelm data prepare`` reads them: each language's first N documents, its stream
read only until it has them.
"""

import itertools
import random
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path

from xelm_cli.common.errors import UsageError
from xelm_cli.data.corpus import Document, iter_documents, languages_held
from xelm_cli.data.documents import group_documents
from xelm_cli.data.source_plan import SourceOptions, SourcePlan, plan_sources
from xelm_cli.data.sources import DEFAULT_BATCH, LanguagesMet
from xelm_cli.lang.codes import language_codes, wanted_form

UNLABELLED = "und"  # the language code of undetermined language
UNLABELLED_NAME = "unlabelled"  # documents without a language, as a refusal names them
Progress = Callable[[int], object]  # told how many records were read since it was last told


def sample_per_language(
    documents: Iterable[Document], per_language: int | None, seed: int
) -> list[Document]:
    """At most ``per_language`` documents of each language (None: all), a uniform sample chosen
    by reservoir sampling (deterministic for a seed), in first-seen language order; blank
    documents are dropped, and documents without a language are sampled as one more language,
    ``und``'s."""
    rng = random.Random(seed)
    reservoirs: dict[str, list[Document]] = {}
    seen: Counter[str] = Counter()
    for document in documents:
        if not document.text.strip():
            continue
        language = document.language or UNLABELLED
        reservoir = reservoirs.setdefault(language, [])
        seen[language] += 1
        if per_language is None or len(reservoir) < per_language:
            reservoir.append(document)
        elif (slot := rng.randrange(seen[language])) < per_language:
            reservoir[slot] = document
    return [document for reservoir in reservoirs.values() for document in reservoir]


UNIFORM, FIRST = "uniform", "first"  # how sample_documents samples: see sample_kind


def sample_kind(
    data: str | Path,
    *,
    languages: Sequence[str] | str | None = None,
    reading: SourceOptions | None = None,
) -> str:
    """How ``sample_documents`` samples ``data`` read with ``reading``: ``"uniform"`` over every
    document of corpus files (the seed matters), or each language's ``"first"`` documents of a
    streamed dataset or recipe."""
    return _kind(_plan(data, languages, reading))


def _plan(
    data: str | Path, languages: Sequence[str] | str | None, reading: SourceOptions | None
) -> SourcePlan:
    wanted = language_codes(languages)
    return plan_sources(data, list(wanted) if wanted else None, reading or SourceOptions())


def _kind(plan: SourcePlan) -> str:
    return UNIFORM if plan.kind == "files" else FIRST


def sample_documents(
    data: str | Path,
    *,
    languages: Sequence[str] | str | None = None,
    per_language: int | None,
    document_bytes: int = 0,
    seed: int = 0,
    reading: SourceOptions | None = None,
    progress: Progress | None = None,
) -> list[Document]:
    """At most ``per_language`` documents of each of ``languages`` (None or empty: every
    language in ``data``), for a clusterer to fit on.

    ``data`` is what ``xelm data prepare`` reads, and ``reading`` how (its ``--split``,
    ``--lang``, ``--config``, ...; None: the defaults): corpus files, a dataset (a Hub id or a
    local copy laid out like one) or a recipe. With ``document_bytes`` > 0, consecutive records
    of one language are joined into documents of about that many bytes first
    (``group_documents``), and ``per_language`` counts the joined documents.

    - Corpus files: a uniform sample over all of them (``sample_per_language`` with ``seed``),
      so every file is read to its end.
    - A dataset or recipe, streamed: each language's first documents, in stream order. A
      language's stream is read only until the language has ``per_language`` documents (to
      within one batch of rows), then left; a recipe's (or a ``{lang}`` configuration's)
      languages are read one after another. A dataset whose rows carry their languages is
      read until every language of ``languages`` has enough; without ``languages``, until
      every language it gave has enough and a few batches more bring none new.
      ``per_language=None`` reads every stream to its end: all of mC4.

    Documents are labelled as ``languages`` names their language, as prepare reads them
    (``arb`` is ``ar`` when ar is asked for). A language of ``languages`` without documents is
    a one-line ``UsageError``. ``progress``, when given, is called with the number of records
    read as reading goes on.
    """
    if per_language is not None and per_language < 1:
        raise UsageError(f"per_language must be at least 1 (None: all), not {per_language}")
    wanted = language_codes(languages)
    plan = _plan(data, wanted, reading)
    seen: set[str] = set()  # the languages read, wanted or not
    if _kind(plan) == UNIFORM:
        sample = _corpus_sample(
            plan.path, wanted, per_language, document_bytes, seed, reading, progress, seen
        )
    else:
        sample = _streamed_sample(plan, wanted, per_language, document_bytes, progress, seen)
    missing = [lang for lang in wanted or () if lang not in {d.language for d in sample}]
    if missing:
        found = seen | {d.language or UNLABELLED_NAME for d in sample}
        if plan.kind == "files":  # corpus files: also those of languages not opened
            found = set(languages_held(plan.path, dict.fromkeys(found, 1)))
        raise UsageError(
            f"no documents in {', '.join(missing)} in {data} (it has: "
            f"{', '.join(sorted(found)) or 'none'}); drop them from --langs"
        )
    return sample


def _corpus_sample(
    path: str,
    wanted: tuple[str, ...] | None,
    per_language: int | None,
    document_bytes: int,
    seed: int,
    reading: SourceOptions | None,
    progress: Progress | None,
    seen: set[str],
) -> list[Document]:
    """A uniform sample of corpus files (or a save_to_disk dataset); ``seen`` is given the
    languages read, wanted or not."""
    reading = reading or SourceOptions()
    documents = _seen(
        iter_documents(
            path,
            text_column_flag="--text-column",
            language=reading.language,
            split=reading.split,
            languages=wanted,
            text_column=reading.text_column,
        ),
        seen,
    )
    if wanted:
        documents = _as_wanted(documents, wanted)
    if document_bytes > 0:
        documents = group_documents(documents, document_bytes)
    return sample_per_language(_counted(documents, progress), per_language, seed)


def _seen(documents: Iterable[Document], seen: set[str]) -> Iterator[Document]:
    """``documents``, their languages added to ``seen`` as they are read."""
    for document in documents:
        seen.add(document.language or UNLABELLED_NAME)
        yield document


def _as_wanted(documents: Iterable[Document], wanted: Collection[str]) -> Iterator[Document]:
    """The documents of the ``wanted`` languages, each labelled as ``wanted`` names its
    language (``wanted_form``: ``arb`` is ``ar`` when ar is wanted), as prepare reads them."""
    for document in documents:
        language = document.language and wanted_form(document.language, wanted)
        if language in wanted:
            yield Document(document.text, language)


def _counted(documents: Iterable[Document], progress: Progress | None) -> Iterator[Document]:
    for document in documents:
        if progress is not None:
            progress(1)
        yield document


def _streamed_sample(
    plan: SourcePlan,
    wanted: tuple[str, ...] | None,
    per_language: int | None,
    document_bytes: int,
    progress: Progress | None,
    seen: set[str],
) -> list[Document]:
    """The first ``per_language`` documents of each language of ``plan``'s sources, one
    source after another (``first_records``); a source whose languages all have enough is not
    opened. ``seen`` is given the languages read, wanted or not."""
    kept: dict[str, list[Document]] = {}

    def enough(language: str) -> bool:
        return per_language is not None and len(kept.get(language, ())) >= per_language

    rows = min(DEFAULT_BATCH, per_language or DEFAULT_BATCH)  # read little past a small sample
    records = first_records(plan, wanted, enough, batch_size=rows, progress=progress, seen=seen)
    documents: Iterable[Document] = itertools.starmap(Document, records)
    if document_bytes > 0:  # a joined document comes with the record that completes it
        documents = group_documents(documents, document_bytes)
    for document in documents:
        kept.setdefault(str(document.language), []).append(document)
    return [document for documents in kept.values() for document in documents]


def first_records(
    plan: SourcePlan,
    wanted: Collection[str] | None,
    enough: Callable[[str], bool],
    *,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
    seen: set[str] | None = None,
) -> Iterator[tuple[str, str]]:
    """The text and language of each record of ``plan``'s sources, in stream order, of the
    languages of ``wanted`` (None: every language) that do not have ``enough`` yet, one source
    after another. ``enough(language)`` is asked before each record, so the caller counts what
    it takes as it goes; a source is left after the batch (``batch_size`` records) in which all
    its languages (its one language, or ``wanted``, or of a recipe every language) have enough,
    and not opened when they already do. A dataset whose rows carry their languages, read
    with ``wanted`` None (its languages are not known before), is left once every language it
    gave has enough and a few batches more bring none new (``LanguagesMet``). ``progress`` is
    told the records of each batch read; ``seen``, when given, the languages of every record
    read, wanted or not."""
    languages = set(wanted) if wanted else (set(plan.sources) if plan.recipe else None)
    for name, source in plan.sources.items():
        only = plan.only_language(name)
        own = {only} if only else languages
        met = LanguagesMet()  # the languages of a source of unknown ones

        def all_enough(own: set[str] | None = own) -> bool:
            return bool(own) and all(map(enough, own or ()))

        if all_enough():
            continue
        for batch in source.open(batch_size=max(batch_size, 1)):
            if seen is not None:
                seen.update(batch.languages)
            for language, text in zip(batch.languages, batch.texts, strict=True):
                if (own is None or language in own) and not enough(language):
                    yield text, language
            if progress is not None:
                progress(len(batch.texts))
            if all_enough() or (own is None and met.after(batch.languages, enough)):
                break
