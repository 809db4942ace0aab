"""Reading corpora: documents with a language label, from files or directories.

Formats: JSON lines with ``text`` and ``lang`` (the mC4 record layout; ``language`` is accepted
too) named ``.jsonl``, ``.json`` or ``.ndjson``; plain text (``.txt``), one document per
non-empty line, its language from the file name (``tr.txt``) or ``language=``; each optionally
zstd- or gzip-compressed (``.jsonl.zst``, ``.json.gz``); a directory of such files (sorted,
recursive), where a plain ``.json`` file is read only when it holds JSON lines (not one JSON
document: statistics, a configuration) and files of other types are named in a warning. A
compressed file must hold complete frames (members): a truncated or corrupt stream is an error,
never a silently shorter corpus. Files are read in blocks of whole lines
(``xelm_cli.data.blocks``); a Hugging Face dataset is read by ``xelm_cli.data.hf_datasets``.
"""

import functools
import itertools
import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from xelm_cli.common.errors import UsageError
from xelm_cli.common.recognise import ARCHIVE, SHARDS, made_by_xelm
from xelm_cli.data.blocks import (
    CORPUS_FILE_TYPES,
    JSONL_SUFFIXES,
    TEXT_SUFFIXES,
    first_label,
    read_blocks,
)
from xelm_cli.data.hf_datasets import hf_rows
from xelm_cli.data.labels import language_code
from xelm_cli.lang.codes import wanted_form

HF_DATA_SUFFIXES = (".parquet", ".arrow", ".csv", ".json")
HF_DISK_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name
JSON_PEEK = 1 << 20  # bytes of a .json file's first line read to tell JSON lines from JSON
UNREAD_SHOWN = 5  # unread files a warning names
# the Hub ids of the evaluation sets the perplexity evaluator knows (xelm_cli.data.evalsets
# EVAL_SETS, which imports this module: a test keeps the two the same)
EVALUATION_SETS = ("openlanguagedata/flores_plus", "Davlan/sib200")
_warned: set[str] = set()  # warnings given in this process (corpus files are listed often)


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
    """How a corpus is read: ``files``, ``hf-disk`` (save_to_disk), ``hf-dir`` or ``hf-hub``.
    What xelm made (a bundle, shards, an allocation: ``refuse_made_by_xelm``) is refused."""
    path = Path(source)
    refuse_made_by_xelm(path)
    if path.is_dir():
        if any((path / marker).is_file() for marker in HF_DISK_MARKERS):
            return "hf-disk"
        if _declares_configs(path / "README.md"):
            return "hf-dir"
        # a .json file may be a dataset's: a directory of them alone stays a dataset
        names = [p.name for p in path.rglob("*")]
        if not any(_corpus_name(n) and not n.endswith(".json") for n in names) and any(
            n.endswith(HF_DATA_SUFFIXES) for n in names
        ):
            return "hf-dir"
        return "files"
    # owner/name that is no local path (and whose owner is no local directory) names a Hub dataset
    if not path.exists() and not path.parent.exists() and HUB_ID.match(str(source)):
        return "hf-hub"
    return "files"


def refuse_made_by_xelm(path: Path) -> None:
    """A one-line ``UsageError`` when ``path`` is something xelm made, not a corpus: a bundle,
    shards (their ``.json`` manifest would pass for a dataset's), an allocation, an archive."""
    what = made_by_xelm(path)
    if what is None:
        return
    if what == SHARDS:
        way = "pass the corpus they came from"
    elif SHARDS in what:  # their manifest
        way = "pass the corpus the shards came from"
    elif what == ARCHIVE:
        way = f"unpack it with `xelm bundle unpack {path} -o DIR`; a corpus is JSON-lines or text"
    else:
        way = "pass a corpus (JSON-lines or text files, or a folder of them)"
    raise UsageError(f"{path} is {what}, not a corpus: {way}")


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


def _corpus_name(name: str) -> bool:
    return name.endswith(JSONL_SUFFIXES + TEXT_SUFFIXES)


# files a corpus folder may hold beside its corpus without a word: its licence and notes
DOCUMENTATION = re.compile(r"^(licen[cs]e|copying|notice|readme|citation)([-_.].*)?$", re.I)


def _directory_files(directory: Path) -> tuple[list[Path], list[Path]]:
    """The corpus files of a directory, sorted, and its other files but hidden ones and its
    documentation (``LICENSE-CC-BY-SA``, ``README.md``): a plain ``.json`` file is a corpus
    file only when it holds JSON lines."""
    files, others = [], []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        if _corpus_name(path.name) and (path.suffix != ".json" or _holds_json_lines(path)):
            files.append(path)
        elif not (
            any(part.startswith(".") for part in path.relative_to(directory).parts)
            or DOCUMENTATION.match(path.name)
        ):
            others.append(path)
    return files, others


def _holds_json_lines(path: Path) -> bool:
    """Whether a ``.json`` file is JSON lines (its first line a record with a string ``text``,
    or nothing but blank lines), not one JSON document."""
    try:
        with path.open("rb") as f:
            line = b""
            while not line.strip() and (line := f.readline(JSON_PEEK)):
                pass
    except OSError:
        return False
    if not line.strip():
        return True
    try:
        record = json.loads(line)
    except ValueError:  # a first line longer than was read may still be a record
        return len(line) == JSON_PEEK and line.lstrip().startswith(b'{"')
    return isinstance(record, dict) and isinstance(record.get("text"), str)


def corpus_files(source: Path, *, languages: Sequence[str] | None = None) -> list[Path]:
    """The readable files of a corpus path, in a stable order; with ``languages``, a file named
    for another language (``tr.jsonl.zst`` holds Turkish) is left out unread, unless its first
    record is labelled otherwise (see ``_wanted_file``). A directory's files of other types are
    named in a warning on stderr, once."""
    if source.is_file():
        if not _corpus_name(source.name):
            raise UsageError(f"{source}: not a corpus file ({CORPUS_FILE_TYPES}); {_way(source)}")
        return [source]
    if not source.is_dir():
        raise UsageError(f"corpus not found: {source}")
    if source_kind(source) != "files":  # a dataset: every file is part of its content
        return sorted(p for p in source.rglob("*") if p.is_file())
    files, others = _directory_files(source)
    shown = _names(source, others)
    if not files:
        held = f" (it has {shown}): convert them" if others else ""
        raise UsageError(f"no corpus files ({CORPUS_FILE_TYPES}) in {source}{held}")
    if others:
        _warn_once(
            f"xelm: warning: {source}: not reading {shown} (corpus files are "
            f"{CORPUS_FILE_TYPES}; a .json file of JSON lines)\n"
        )
    if languages is not None:
        wanted = set(languages)
        files = [p for p in files if _wanted_file(p, wanted)]
    return files


def _way(path: Path) -> str:
    """The way out for a file that is no corpus file."""
    if not path.name.endswith(HF_DATA_SUFFIXES):
        return "convert it to one of these"
    if source_kind(path.parent) != "files":
        return f"pass its directory {path.parent} to read it as a dataset"
    return "move it to a directory of its own and pass that to read it as a dataset"


def _names(directory: Path, paths: Sequence[Path]) -> str:
    names = [
        p.relative_to(directory).as_posix() + (" (not JSON lines)" if p.suffix == ".json" else "")
        for p in paths[:UNREAD_SHOWN]
    ]
    more = f" and {len(paths) - UNREAD_SHOWN} more" if len(paths) > UNREAD_SHOWN else ""
    return ", ".join(names) + more


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        sys.stderr.write(message)


def _wanted_file(path: Path, wanted: set[str]) -> bool:
    """Whether a corpus file may hold documents of a ``wanted`` language. One named for another
    language (``tr.jsonl``) holds that language's documents, unless its first record's label is
    a wanted language or one the name is not (``raw.jsonl`` of English records: ``raw``, like
    ``dev`` or ``mix``, is also an ISO 639-3 code); such a file is read, its documents sorted by
    their labels as any file's are."""
    named = _file_language(path, None)
    if named is None or wanted_form(named, wanted) in wanted:
        return True
    label = _first_label(path)
    if label is None:  # unlabelled documents are of the language the name gives
        return False
    return wanted_form(label, wanted) in wanted or not _one_language(label, named)


def _one_language(a: str, b: str) -> bool:
    """Whether tags ``a`` and ``b`` name one language, one perhaps more narrowly (sw, swh)."""
    return a == b or wanted_form(a, {b}) == b or wanted_form(b, {a}) == a


def _first_label(path: Path) -> str | None:
    info = path.stat()
    return _cached_first_label(path, info.st_size, info.st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _cached_first_label(path: Path, size: int, mtime_ns: int) -> str | None:
    """``first_label`` of a file as it is at ``size`` and ``mtime_ns`` (files are listed often)."""
    return first_label(path)


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
    text_column_flag: str | None = None,
) -> Iterator[Document]:
    """Every document of a corpus, in file order; ``language`` labels unlabelled documents.
    With ``languages``, files named for other languages are not read (see ``corpus_files``).
    ``text_column`` is a Hugging Face dataset's column with the text (default ``text``);
    ``text_column_flag``, the flag that chooses it where the caller has one
    (``--text-column``), is named in the error of a dataset without that column (None: the
    error says to rename the column).

    A document's language comes from its record (``lang``/``language``), else the file name
    (``tr.jsonl``), else ``language``. With ``require_language`` a document left without one
    is a one-line ``UsageError`` naming its file or dataset. ``split`` picks the split of a
    Hugging Face dataset (default ``train``, or its only split).
    """
    kind = source_kind(source)
    if kind != "files":
        label = language and language_code(language)
        column = text_column or "text"
        rows = hf_rows(source, kind, label, split, require_language, column, text_column_flag)
        yield from itertools.starmap(Document, rows)
        return
    for path, default in labelled_files(source, language=language, languages=languages):
        for block in read_blocks(path, default, require_language=require_language):
            yield from map(Document, block.texts, block.languages)


def languages_held(source: str | Path, read: Mapping[str, int]) -> list[str]:
    """The languages a corpus holds: those ``read``, and of corpus files also those their
    names give (``tr.jsonl``), which reading some languages did not open."""
    held = set(read)
    if source_kind(source) == "files":
        held |= {_held_language(path, lang) for path, lang in labelled_files(source) if lang}
    return sorted(held)


def _held_language(path: Path, named: str) -> str:
    """The language a file named for ``named`` holds: its first record's, where that is
    another language (``raw.jsonl`` of English records)."""
    label = _first_label(path)
    return label if label is not None and not _one_language(label, named) else named


def labelled_files(
    source: str | Path, *, language: str | None = None, languages: Sequence[str] | None = None
) -> list[tuple[Path, str | None]]:
    """The files of a corpus of files (see ``corpus_files``), each with the language of its
    documents that carry none: the file name's (``tr.jsonl``), else ``language``."""
    default = language_code(language) if language else None
    files = corpus_files(Path(source), languages=languages)
    return [(path, _file_language(path, default)) for path in files]


def require_source(source: str | Path, what: str, *, known: Sequence[str] = ()) -> None:
    """A one-line ``UsageError`` naming ``what`` (``--calibration data``) when ``source`` is a
    path that does not exist (not a Hub id nor a recipe); a bare name (``flores``) with the
    ``known`` datasets (Hub ids) it may mean."""
    path = Path(source)
    if not path.exists() and source_kind(source) == "files":
        named = known and len(path.parts) == 1  # a bare name (flores) may mean a known set
        sets = f" (not a file or folder, nor one of the known sets {', '.join(known)})"
        raise UsageError(f"{what} not found: {source}{sets if named else ''}")


def read_documents(
    source: str | Path,
    *,
    languages: Sequence[str] | str | None = None,
    limit: int | None = None,
) -> list[Document]:
    """The non-empty documents of a labelled corpus, optionally only some languages and the
    first ``limit`` of each (reading stops once each of ``languages`` has them); a language
    asked for but absent, or nothing left, is a one-line ``UsageError``."""
    require_source(source, "evaluation data", known=EVALUATION_SETS)
    if isinstance(languages, str):  # "en,tr", as the commands take it
        languages = [code.strip() for code in languages.split(",") if code.strip()]
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
            f"(it has: {', '.join(languages_held(source, counts)) or 'none'})"
        )
    if not documents:
        raise UsageError(f"no documents to evaluate in {source}")
    return documents
