"""Reading corpus files (JSON lines or text, optionally zstd- or gzip-compressed) in blocks of
whole lines (``read_blocks``), or record by record (``iter_records``).

A block of JSON lines is parsed at once by Arrow's JSON reader (``xelm_cli.data.columnar``), with
no Python object per line, and only a block with something unusual or broken in it is read line
by line, so that both give the same documents and errors. Each block ends at a
``FilePosition`` (bytes and lines read) that reading can start from again.
"""

import codecs
import gzip
import io
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import zstandard

from xelm_cli.common.errors import FormatError, UsageError
from xelm_cli.common.jsonio import is_unicode
from xelm_cli.data.columnar import NEWLINE, Parsed, columnar_records
from xelm_cli.data.labels import language_code, record_label, unlabelled
from xelm_cli.data.zstd_stream import CHUNK, ZstdReader

COMPRESSIONS = ("", ".zst", ".gz")  # how a corpus file may be compressed: not, zstd, gzip
JSONL_SUFFIXES = tuple(f"{n}{c}" for n in (".jsonl", ".json", ".ndjson") for c in COMPRESSIONS)
TEXT_SUFFIXES = tuple(f".txt{c}" for c in COMPRESSIONS)
CORPUS_FILE_TYPES = "*.jsonl, *.json, *.ndjson, *.txt, each optionally .gz or .zst"
BLOCK_LINES = 1000  # lines a block holds unless asked otherwise
MAX_LINE_CHARS = 64 << 20  # a "line" longer than this is not a document but a broken file


def iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """The records of a JSON-lines file (.jsonl, .jsonl.zst, ...) with their line numbers, each
    with a valid string ``text``, and every other field as written (``source``, ...)."""
    number = 0
    for index, piece in enumerate(_pieces(path, FilePosition(), BLOCK_LINES)):
        for line in _split_lines(_without_bom(piece, index == 0), path):
            number += 1
            if line.strip():
                yield number, _record(line, path, number)


def _record(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        # a line that does not even open an object is likely text in a file named .jsonl;
        # one that opens an array or only an object, the start of one JSON document
        start = line.strip()
        hint = " (plain text? name the file .txt)"
        if start == "{" or start.startswith("["):
            hint = " (one JSON document, not JSON lines: write one record per line)"
        elif start.startswith("{"):
            hint = ""
        raise FormatError(f"{path}:{number}: not a JSON object{hint}") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise FormatError(f"{path}:{number}: a record needs a string field 'text'")
    if "\\u" in line and not is_unicode(record["text"]):  # only escapes make surrogates
        raise FormatError(f"{path}:{number}: 'text' holds a lone surrogate: not valid Unicode")
    return record


def _record_language(
    record: dict[str, Any], path: Path, number: int, default: str | None
) -> str | None:
    label = record_label(record)
    if label is not None and not isinstance(label[1], str):
        raise FormatError(f"{path}:{number}: {label[0]!r} must be a string")
    code = label[1] if label is not None else default
    try:
        return language_code(code) if code else None
    except UsageError as exc:
        raise FormatError(f"{path}:{number}: {exc}") from None


def first_label(path: Path) -> str | None:
    """The language label (normalised) of the first record of a JSON-lines corpus file; None
    for a text file, a file without records, a first record without a label, and one that
    cannot be read (reading the whole file says why)."""
    if not path.name.endswith(JSONL_SUFFIXES):
        return None
    try:
        for index, piece in enumerate(_pieces(path, FilePosition(), 1)):
            for number, line in enumerate(_split_lines(_without_bom(piece, index == 0), path), 1):
                if line.strip():
                    return _record_language(_record(line, path, number), path, number, None)
    except (FormatError, UsageError):
        pass
    return None


@dataclass(frozen=True)
class FilePosition:
    """How far a corpus file was read: ``offset`` bytes of its (decompressed) content, which
    end after its first ``line`` lines. Reading again from a position continues exactly there:
    a compressed file is decompressed again up to ``offset`` (neither zstd nor gzip can start
    mid-stream), a plain one is seeked."""

    offset: int = 0
    line: int = 0


@dataclass
class Block:
    """The documents of consecutive lines of one file, and the position after them."""

    texts: list[str]
    languages: list[str | None]
    end: FilePosition


def read_blocks(
    path: Path,
    default: str | None,
    *,
    start: FilePosition = FilePosition(),
    lines: int = BLOCK_LINES,
    require_language: bool = False,
) -> Iterator[Block]:
    """The documents of a corpus file (JSON lines or text) from ``start`` on, in blocks of at
    most ``lines`` lines; ``default`` labels documents that carry no language. JSON lines are
    parsed a block at a time by Arrow's JSON reader (no Python object per line); a block with
    anything unusual in it, and every broken one, is read line by line instead, so documents
    and errors (file and line named) are the same either way. With ``require_language`` a
    document left without a language is a one-line ``UsageError``."""
    parse = _jsonl_block if path.name.endswith(JSONL_SUFFIXES) else _text_block
    offset, line = start.offset, start.line
    for piece in _pieces(path, start, lines):
        texts, languages, count = parse(_without_bom(piece, offset == 0), path, line, default)
        if require_language and None in languages:
            raise unlabelled(str(path))
        offset, line = offset + len(piece), line + count
        yield Block(texts, languages, FilePosition(offset, line))


def _without_bom(piece: bytes, first: bool) -> bytes:
    """``piece`` without the UTF-8 byte-order mark that Windows tools write at the start of a
    file (``first``: the piece starts at the file's offset 0); the mark is no text, and the
    offsets of positions still count its bytes."""
    return piece[len(codecs.BOM_UTF8) :] if first and piece.startswith(codecs.BOM_UTF8) else piece


def _pieces(path: Path, start: FilePosition, lines: int) -> Iterator[bytes]:
    """The content of ``path`` after ``start``, in pieces of at most ``lines`` whole lines (the
    file's last line may lack its newline). A line longer than ``MAX_LINE_CHARS`` characters
    is a ``FormatError`` naming it, read no further than that."""
    with open(path, "rb") as raw:
        content: Any = raw
        if path.suffix == ".zst":
            content = ZstdReader(raw, path)
        elif path.suffix == ".gz":
            content = gzip.GzipFile(fileobj=raw, mode="rb")
        try:
            _skip(content, start.offset, path)
            yield from _split_content(content, path, start.line, lines)
        except zstandard.ZstdError as exc:
            raise FormatError(f"{path}: corrupt zstd stream ({exc})") from None
        except (gzip.BadGzipFile, zlib.error) as exc:
            raise FormatError(f"{path}: corrupt gzip stream ({exc})") from None
        except EOFError:  # gzip's end of input inside a member
            raise FormatError(
                f"{path}: truncated gzip stream (the file is cut short or corrupt)"
            ) from None


def _split_content(content: BinaryIO, path: Path, before: int, lines: int) -> Iterator[bytes]:
    """``_pieces`` of ``content``, whose first ``before`` lines were read before."""
    pending = bytearray()
    ends = np.zeros(0, dtype=np.int64)  # newline positions in ``pending``
    unfinished = _UnfinishedLine(path)
    while chunk := content.read(CHUNK):
        found = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == NEWLINE)
        ends = np.concatenate([ends, found + len(pending)])
        pending += chunk
        while len(ends) >= lines:
            yield from _whole_lines(pending, ends[:lines], path, before)
            cut = int(ends[lines - 1]) + 1
            del pending[:cut]
            before += lines
            ends = ends[lines:] - cut
        if unfinished.too_long(chunk, found, pending, int(ends[-1]) + 1 if len(ends) else 0):
            yield from _whole_lines(pending, ends, path, before)
            raise _too_long(path, before + len(ends) + 1)
    if pending:
        last = ends if pending.endswith(b"\n") else np.append(ends, len(pending))
        yield from _whole_lines(pending, last, path, before)


def _whole_lines(pending: bytearray, ends: Any, path: Path, before: int) -> Iterator[bytes]:
    """The lines of ``pending`` up to the newline at ``ends[-1]`` as one piece; if one of
    them is longer than ``MAX_LINE_CHARS`` characters, the lines before it, then an error."""
    if not len(ends):
        return
    starts = np.concatenate([[0], ends[:-1] + 1])
    for i in np.flatnonzero(ends - starts > MAX_LINE_CHARS):  # bytes: at least the characters
        if _characters(memoryview(pending)[starts[i] : ends[i]]) > MAX_LINE_CHARS:
            if i:
                yield bytes(pending[: ends[i - 1] + 1])
            raise _too_long(path, before + int(i) + 1)
    yield bytes(pending[: ends[-1] + 1])


def _too_long(path: Path, number: int) -> FormatError:
    return FormatError(
        f"{path}:{number}: line longer than {MAX_LINE_CHARS} characters "
        "(not a text corpus, or a broken file)"
    )


class _UnfinishedLine:
    """The characters of the last, unfinished line read, counted only once it holds more than
    ``MAX_LINE_CHARS`` bytes, and from then on a chunk at a time."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._chars = -1  # not counted yet

    def too_long(self, chunk: bytes, newlines: Any, pending: bytearray, start: int) -> bool:
        """Is the line from ``start`` on, which ``chunk`` (with ``newlines``) added to, too
        long? A UTF-8 error in it is reported first, as reading it as text would."""
        if len(newlines):
            self._chars = -1
        if len(pending) - start <= MAX_LINE_CHARS:
            return False
        if self._chars < 0:
            self._chars = _characters(memoryview(pending)[start:])
        else:
            self._chars += _characters(chunk)
        if self._chars <= MAX_LINE_CHARS:
            return False
        _decode(bytes(pending[start:]), self._path, final=False)
        return True


def _characters(utf8: Any) -> int:
    """Characters in UTF-8 bytes: every byte but continuation bytes starts one."""
    data = np.frombuffer(utf8, dtype=np.uint8)
    return int(np.count_nonzero((data & 0xC0) != 0x80))


def _skip(content: BinaryIO, offset: int, path: Path) -> None:
    """Move past the first ``offset`` bytes of ``content`` (decompressing them when it must)."""
    if not offset:
        return
    if isinstance(content, io.BufferedReader):  # the file itself, not a decompressing reader
        content.seek(offset)
        skipped = min(offset, os.fstat(content.fileno()).st_size)
    else:
        skipped = 0
        while skipped < offset and (chunk := content.read(min(CHUNK, offset - skipped))):
            skipped += len(chunk)
    if skipped < offset:
        raise FormatError(f"{path} is shorter than where reading stopped: start over with --force")


def _decode(data: bytes, path: Path, *, final: bool = True) -> str:
    try:
        return codecs.getincrementaldecoder("utf-8")("strict").decode(data, final=final)
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _split_lines(data: bytes, path: Path) -> list[str]:
    """The lines of ``data`` as reading the file as text gives them (universal newlines)."""
    return io.StringIO(_decode(data, path), newline=None).readlines()


def _text_block(data: bytes, path: Path, before: int, default: str | None) -> Parsed:
    lines = _split_lines(data, path)
    texts = [text for line in lines if (text := line.rstrip("\n")).strip()]
    return texts, [default] * len(texts), len(lines)


def _jsonl_block(data: bytes, path: Path, before: int, default: str | None) -> Parsed:
    parsed = columnar_records(data, default)
    if parsed is not None:
        return parsed
    texts: list[str] = []
    languages: list[str | None] = []
    lines = _split_lines(data, path)
    for number, line in enumerate(lines, before + 1):
        if line.strip():
            record = _record(line, path, number)
            texts.append(record["text"])
            languages.append(_record_language(record, path, number, default))
    return texts, languages, len(lines)
