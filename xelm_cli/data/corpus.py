"""Reading corpora: documents with a language label, from files or directories.

Formats: JSON lines with ``text`` and ``lang`` (the mC4 record layout; ``language`` is accepted
too), optionally zstd-compressed (``.jsonl.zst``); plain text (``.txt``, ``.txt.zst``), one
document per non-empty line, its language from the file name (``tr.txt``) or ``language=``; a
directory of such files (sorted, recursive). A ``.zst`` file must hold complete zstd frames: a
truncated or corrupt stream is an error, never a silently shorter corpus. Files are read in
blocks of whole lines (``xelm_cli.data.blocks``); a Hugging Face dataset is read by
``xelm_cli.data.hf_datasets``.
"""

import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from xelm_cli.common.errors import UsageError
from xelm_cli.data.blocks import JSONL_SUFFIXES, TEXT_SUFFIXES, read_blocks
from xelm_cli.data.hf_datasets import hf_rows
from xelm_cli.data.labels import language_code
from xelm_cli.lang.codes import wanted_form

HF_DATA_SUFFIXES = (".parquet", ".arrow", ".csv", ".json")
HF_DISK_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name


@dataclass(frozen=True)
class Document:
    """One document; ``language`` is a normalised code (see ``normalize_language``)."""

    text: str
    language: str | None = None


def has_text(text: str) -> bool:
    """Whether ``text`` is a document: blank ones (empty, or only whitespace) are dropped, the
    same way whatever they are read from."""
    return bool(text) and not text.isspace()


def source_kind(source: str | Path) -> str:
    """How a corpus is read: ``files``, ``hf-disk`` (save_to_disk), ``hf-dir`` or ``hf-hub``."""
    path = Path(source)
    if path.is_dir():
        if any((path / marker).is_file() for marker in HF_DISK_MARKERS):
            return "hf-disk"
        if _declares_configs(path / "README.md"):
            return "hf-dir"
        if not _text_corpus_files(path) and any(
            p.name.endswith(HF_DATA_SUFFIXES) for p in path.rglob("*")
        ):
            return "hf-dir"
        return "files"
    # owner/name that is no local path (and whose owner is no local directory) names a Hub dataset
    if not path.exists() and not path.parent.exists() and HUB_ID.match(str(source)):
        return "hf-hub"
    return "files"


def _declares_configs(readme: Path) -> bool:
    """Is ``readme`` a dataset card whose YAML header lists configurations (``configs:``), as
    a Hub dataset repository's does?"""
    try:
        with readme.open(encoding="utf-8", errors="replace") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    if not head.startswith("---"):
        return False
    header = head[3:].split("\n---", 1)[0]
    return any(line.startswith("configs:") for line in header.splitlines())


def _text_corpus_files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and p.name.endswith(JSONL_SUFFIXES + TEXT_SUFFIXES)
    )


def corpus_files(source: Path, *, languages: Sequence[str] | None = None) -> list[Path]:
    """The readable files of a corpus path, in a stable order; with ``languages``, a file named
    for another language (``tr.jsonl.zst`` holds Turkish) is left out unread."""
    if source.is_file():
        if not source.name.endswith(JSONL_SUFFIXES + TEXT_SUFFIXES):
            raise UsageError(
                f"{source}: not a corpus file (*.jsonl[.zst], *.txt[.zst]); "
                "for a dataset file pass its directory"
            )
        return [source]
    if not source.is_dir():
        raise UsageError(f"corpus not found: {source}")
    if source_kind(source) != "files":  # a dataset: every file is part of its content
        return sorted(p for p in source.rglob("*") if p.is_file())
    files = _text_corpus_files(source)
    if not files:
        raise UsageError(f"no corpus files (*.jsonl[.zst], *.txt[.zst]) in {source}")
    if languages is not None:
        wanted = set(languages)
        files = [p for p in files if _wanted_file(_file_language(p, None), wanted)]
    return files


def _wanted_file(language: str | None, wanted: set[str]) -> bool:
    """Whether a file named for ``language`` (None: for none) may hold wanted documents."""
    return language is None or wanted_form(language, wanted) in wanted


def _file_language(path: Path, default: str | None) -> str | None:
    """The language a file name (``tr.jsonl``) gives, else ``default``."""
    try:
        return language_code(path.name.split(".")[0])
    except UsageError:
        return default


def iter_documents(
    source: str | Path,
    *,
    language: str | None = None,
    split: str | None = None,
    require_language: bool = False,
    languages: Sequence[str] | None = None,
    text_column: str | None = None,
) -> Iterator[Document]:
    """Every document of a corpus, in file order; ``language`` labels unlabelled documents.
    With ``languages``, files named for other languages are not read (see ``corpus_files``).
    ``text_column`` is a Hugging Face dataset's column with the text (default ``text``).

    A document's language comes from its record (``lang``/``language``), else the file name
    (``tr.jsonl``), else ``language``. With ``require_language`` a document left without one
    is a one-line ``UsageError`` naming its file or dataset. ``split`` picks the split of a
    Hugging Face dataset (default ``train``, or its only split).
    """
    kind = source_kind(source)
    if kind != "files":
        label = language and language_code(language)
        rows = hf_rows(source, kind, label, split, require_language, text_column or "text")
        yield from itertools.starmap(Document, rows)
        return
    for path, default in labelled_files(source, language=language, languages=languages):
        for block in read_blocks(path, default, require_language=require_language):
            yield from map(Document, block.texts, block.languages)


def _languages_held(source: str | Path, read: Mapping[str, int]) -> list[str]:
    """The languages a corpus holds: its files' (named ``tr.jsonl``), which reading some
    languages did not open, else those read (a dataset, files without a language in the name)."""
    if source_kind(source) == "files":
        named = {lang for _, lang in labelled_files(source) if lang}
        if named:
            return sorted(named)
    return sorted(read)


def labelled_files(
    source: str | Path, *, language: str | None = None, languages: Sequence[str] | None = None
) -> list[tuple[Path, str | None]]:
    """The files of a corpus of files (see ``corpus_files``), each with the language of its
    documents that carry none: the file name's (``tr.jsonl``), else ``language``."""
    default = language_code(language) if language else None
    files = corpus_files(Path(source), languages=languages)
    return [(path, _file_language(path, default)) for path in files]


def require_source(source: str | Path, what: str) -> None:
    """A one-line ``UsageError`` naming ``what`` (``--calibration data``) when ``source`` is a
    path that does not exist (not a Hub id nor a recipe)."""
    if not Path(source).exists() and source_kind(source) == "files":
        raise UsageError(f"{what} not found: {source}")


def read_documents(
    source: str | Path,
    *,
    languages: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[Document]:
    """The non-empty documents of a labelled corpus, optionally only some languages and the
    first ``limit`` of each (reading stops once each of ``languages`` has them); a language
    asked for but absent, or nothing left, is a one-line ``UsageError``."""
    require_source(source, "evaluation data")
    wanted = set(languages) if languages else None
    counts: dict[str, int] = {}
    documents = []
    full: set[str] = set()
    for document in iter_documents(source, require_language=True, languages=languages):
        language = wanted_form(str(document.language), wanted or ())
        if (wanted is not None and language not in wanted) or not has_text(document.text):
            continue
        if limit is not None and counts.get(language, 0) >= limit:
            continue
        counts[language] = counts.get(language, 0) + 1
        documents.append(Document(document.text, language))
        if counts[language] == limit:
            full.add(language)
            if full == wanted:
                break
    if wanted is not None and wanted - set(counts):
        raise UsageError(
            f"{source} has no documents in {', '.join(sorted(wanted - set(counts)))} "
            f"(it has: {', '.join(_languages_held(source, counts)) or 'none'})"
        )
    if not documents:
        raise UsageError(f"no documents to evaluate in {source}")
    return documents
