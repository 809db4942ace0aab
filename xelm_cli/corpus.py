"""Reading corpora: documents with a language label, from files or directories.

Formats: JSON lines with ``text`` and ``lang`` (the mC4 record layout; ``language`` is accepted
too), optionally zstd-compressed (``.jsonl.zst``); plain text (``.txt``, ``.txt.zst``), one
document per non-empty line, its language from ``language=`` or the file name (``tr.txt``); a
directory of such files (sorted, recursive).
"""

import functools
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard

from .errors import FormatError, UsageError
from .languages import normalize_language

JSONL_SUFFIXES = (".jsonl", ".jsonl.zst", ".json.zst")
TEXT_SUFFIXES = (".txt", ".txt.zst")
CHUNK = 1 << 20
MAX_LINE_BYTES = 64 << 20  # a "line" larger than this is not a document but a broken file


@dataclass(frozen=True)
class Document:
    """One document; ``language`` is a normalised code (see ``normalize_language``)."""

    text: str
    language: str | None = None


@functools.lru_cache(maxsize=4096)
def _language(code: str) -> str:
    return normalize_language(code)


def corpus_files(source: Path) -> list[Path]:
    """The readable files of a corpus path, in a stable order."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise UsageError(f"corpus not found: {source}")
    files = sorted(
        p
        for p in source.rglob("*")
        if p.is_file() and p.name.endswith(JSONL_SUFFIXES + TEXT_SUFFIXES)
    )
    if not files:
        raise UsageError(f"no corpus files (*.jsonl[.zst], *.txt[.zst]) in {source}")
    return files


def _lines(path: Path) -> Iterator[str]:
    with open(path, "rb") as raw:
        binary = zstandard.ZstdDecompressor().stream_reader(raw) if path.suffix == ".zst" else raw
        text = io.TextIOWrapper(io.BufferedReader(binary, CHUNK), encoding="utf-8", errors="strict")
        try:
            while line := text.readline(MAX_LINE_BYTES):
                yield line
        except UnicodeDecodeError as exc:
            raise FormatError(f"{path}: not UTF-8 text ({exc.reason})") from None
        except zstandard.ZstdError as exc:
            raise FormatError(f"{path}: corrupt zstd stream ({exc})") from None


def _file_language(path: Path, language: str | None) -> str | None:
    if language:
        return _language(language)
    stem = path.name.split(".")[0]
    try:
        return _language(stem)
    except UsageError:
        return None


def _jsonl_documents(path: Path, default: str | None) -> Iterator[Document]:
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise FormatError(f"{path}:{number}: not a JSON object") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise FormatError(f"{path}:{number}: a record needs a string field 'text'")
        code = record.get("lang", record.get("language")) or default
        if code is not None and not isinstance(code, str):
            raise FormatError(f"{path}:{number}: 'lang' must be a string")
        try:
            yield Document(record["text"], _language(code) if code else None)
        except UsageError as exc:
            raise FormatError(f"{path}:{number}: {exc}") from None


def _text_documents(path: Path, language: str | None) -> Iterator[Document]:
    for line in _lines(path):
        text = line.rstrip("\n")
        if text.strip():
            yield Document(text, language)


def iter_documents(source: str | Path, *, language: str | None = None) -> Iterator[Document]:
    """Every document of a corpus, in file order; ``language`` labels unlabelled documents."""
    for path in corpus_files(Path(source)):
        default = _file_language(path, language)
        if path.name.endswith(JSONL_SUFFIXES):
            yield from _jsonl_documents(path, default)
        else:
            yield from _text_documents(path, default)
