"""Reading corpora: documents with a language label, from files or directories.

Formats: JSON lines with ``text`` and ``lang`` (the mC4 record layout; ``language`` is accepted
too), optionally zstd-compressed (``.jsonl.zst``); plain text (``.txt``, ``.txt.zst``), one
document per non-empty line, its language from the file name (``tr.txt``) or ``language=``; a
directory of such files (sorted, recursive). A ``.zst`` file must hold complete zstd frames: a
truncated or corrupt stream is an error, never a silently shorter corpus.

Files are read in blocks of whole lines (``read_blocks``): a block of JSON lines is parsed at
once by Arrow's JSON reader, with no Python object per line, and only a block with something
unusual or broken in it is read line by line, so that both give the same documents and errors.
Each block ends at a ``FilePosition`` (bytes and lines read) that reading can start from again.
"""

import codecs
import functools
import io
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import zstandard

from xelm_cli.common.errors import FormatError, UsageError, exception_line
from xelm_cli.common.jsonio import is_unicode
from xelm_cli.lang.codes import normalize_language

JSONL_SUFFIXES = (".jsonl", ".jsonl.zst", ".json.zst")
TEXT_SUFFIXES = (".txt", ".txt.zst")
HF_DATA_SUFFIXES = (".parquet", ".arrow", ".csv", ".json")
HF_DISK_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name
HF_BATCH = 1000
CHUNK = 1 << 20
MAX_LINE_CHARS = 64 << 20  # a "line" longer than this is not a document but a broken file
# One zstd block (up to 128 KiB) can be encoded in 4 bytes, so compressed input is fed in pieces
# this small: one piece then decompresses to at most 32 MiB, however hostile the stream.
ZSTD_PIECE = 1 << 10
NEWLINE, OPEN_BRACE, OPEN_BRACKET = ord("\n"), ord("{"), ord("[")
LANGUAGE_FIELDS = ("lang", "language")
# Deep nesting is an error of Python's JSON reader (RecursionError), not of Arrow's: a line with
# more brackets than this is read line by line, where Python's reader decides.
NESTING = 500  # a record's language: 'lang', else 'language'


@dataclass(frozen=True)
class Document:
    """One document; ``language`` is a normalised code (see ``normalize_language``)."""

    text: str
    language: str | None = None


@functools.lru_cache(maxsize=4096)
def _language(code: str) -> str:
    return normalize_language(code)


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
        files = [p for p in files if _file_language(p, None) in wanted | {None}]
    return files


class _ZstdReader(io.RawIOBase):
    """Decompresses every zstd frame of ``raw``; a frame cut short raises ``FormatError``.

    (``ZstdDecompressor.stream_reader`` returns end-of-file on a truncated stream.)
    """

    def __init__(self, raw: BinaryIO, path: Path) -> None:
        self._raw = raw
        self._path = path
        self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._started = False  # has the current frame received any input
        self._input = memoryview(b"")
        self._fed = 0  # how much of ``_input`` was decompressed
        self._pending = b""
        self._at = 0  # how much of ``_pending`` was read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._at == len(self._pending):
            self._pending, self._at = b"", 0
            if not self._fill():
                return 0
        n = min(len(buffer), len(self._pending) - self._at)
        buffer[:n] = self._pending[self._at : self._at + n]
        self._at += n
        return n

    def _fill(self) -> bool:
        """Decompress one more piece of input into ``_pending``; False at the end of the input."""
        if self._fed == len(self._input) and not self._read_input():
            return False
        piece = self._input[self._fed : self._fed + ZSTD_PIECE]
        self._fed += len(piece)
        self._started = True
        self._pending = self._frame.decompress(piece)
        if self._frame.eof:  # what follows the frame in this piece is the next frame
            self._fed -= len(self._frame.unused_data)
            self._frame = zstandard.ZstdDecompressor().decompressobj()
            self._started = False
        return True

    def _read_input(self) -> bool:
        """The next chunk of compressed input; False at the end, where a frame cut short is an
        error."""
        self._input, self._fed = memoryview(self._raw.read(CHUNK)), 0
        if self._input:
            return True
        if self._started:
            raise FormatError(f"{self._path}: truncated zstd stream (the file is cut short)")
        return False


def _file_language(path: Path, default: str | None) -> str | None:
    """The language a file name (``tr.jsonl``) gives, else ``default``."""
    try:
        return _language(path.name.split(".")[0])
    except UsageError:
        return default


def _unlabelled(where: str) -> UsageError:
    return UsageError(f"{where}: documents have no language: add a 'lang' field or pass --lang")


def iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """The records of a JSON-lines file (.jsonl or .jsonl.zst) with their line numbers, each
    with a valid string ``text``, and every other field as written (``source``, ...)."""
    number = 0
    for piece in _pieces(path, FilePosition(), HF_BATCH):
        for line in _split_lines(piece, path):
            number += 1
            if line.strip():
                yield number, _record(line, path, number)


def _record(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        raise FormatError(f"{path}:{number}: not a JSON object") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise FormatError(f"{path}:{number}: a record needs a string field 'text'")
    if "\\u" in line and not is_unicode(record["text"]):  # only escapes make surrogates
        raise FormatError(f"{path}:{number}: 'text' holds a lone surrogate: not valid Unicode")
    return record


def _document(record: dict[str, Any], path: Path, number: int, default: str | None) -> Document:
    code = record.get("lang", record.get("language"))
    if code is not None and not isinstance(code, str):
        raise FormatError(f"{path}:{number}: 'lang' must be a string")
    code = code or default
    try:
        return Document(record["text"], _language(code) if code else None)
    except UsageError as exc:
        raise FormatError(f"{path}:{number}: {exc}") from None


@dataclass(frozen=True)
class FilePosition:
    """How far a corpus file was read: ``offset`` bytes of its (decompressed) content, which
    end after its first ``line`` lines. Reading again from a position continues exactly there."""

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
    lines: int = HF_BATCH,
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
        texts, languages, count = parse(piece, path, line, default)
        if require_language and None in languages:
            raise _unlabelled(str(path))
        offset, line = offset + len(piece), line + count
        yield Block(texts, languages, FilePosition(offset, line))


def _pieces(path: Path, start: FilePosition, lines: int) -> Iterator[bytes]:
    """The content of ``path`` after ``start``, in pieces of at most ``lines`` whole lines (the
    file's last line may lack its newline). A line longer than ``MAX_LINE_CHARS`` characters
    is a ``FormatError`` naming it, read no further than that."""
    with open(path, "rb") as raw:
        content: Any = _ZstdReader(raw, path) if path.suffix == ".zst" else raw
        try:
            _skip(content, start.offset, path)
            yield from _split_content(content, path, start.line, lines)
        except zstandard.ZstdError as exc:
            raise FormatError(f"{path}: corrupt zstd stream ({exc})") from None


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
    if content.seekable():
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


Parsed = tuple[list[str], list[str | None], int]  # texts, languages, lines read


def _text_block(data: bytes, path: Path, before: int, default: str | None) -> Parsed:
    lines = _split_lines(data, path)
    texts = [text for line in lines if (text := line.rstrip("\n")).strip()]
    return texts, [default] * len(texts), len(lines)


def _jsonl_block(data: bytes, path: Path, before: int, default: str | None) -> Parsed:
    parsed = _columnar_records(data, default)
    if parsed is not None:
        return parsed
    texts: list[str] = []
    languages: list[str | None] = []
    lines = _split_lines(data, path)
    for number, line in enumerate(lines, before + 1):
        if line.strip():
            document = _document(_record(line, path, number), path, number, default)
            texts.append(document.text)
            languages.append(document.language)
    return texts, languages, len(lines)


@functools.cache
def _arrow() -> Any:
    """pyarrow with its JSON reader and compute functions (imported when first used)."""
    import pyarrow
    import pyarrow.compute
    import pyarrow.json

    return pyarrow


@functools.cache
def _json_options() -> Any:
    """Arrow's JSON parsing of records: the fields documents are made of, as text."""
    pa = _arrow()
    fields = [(name, pa.string()) for name in ("text", *LANGUAGE_FIELDS)]
    schema = pa.schema(fields)
    return pa.json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")


def _columnar_records(data: bytes, default: str | None) -> Parsed | None:
    """The documents of JSON lines ``data`` read by Arrow's JSON reader, or None unless every
    line is one JSON object with a string ``text``, valid UTF-8 and ``\\n`` line ends and
    every language code is known: the line-by-line reading decides (and words) the rest."""
    pa = _arrow()
    view = np.frombuffer(data, dtype=np.uint8)
    starts = np.flatnonzero(view[:-1] == NEWLINE) + 1
    # A line that is not an object (Arrow's reader crashes on a bare `null`), a byte-order
    # mark, a blank line or a "\r" (a line break when read as text) is read line by line.
    if b"\r" in data or view[0] != OPEN_BRACE or np.any(view[starts] != OPEN_BRACE):
        return None
    brackets = (view == OPEN_BRACE) | (view == OPEN_BRACKET)
    if np.add.reduceat(brackets, np.concatenate([[0], starts]), dtype=np.int64).max() > NESTING:
        return None
    try:
        data.decode("utf-8")  # Arrow checks only the fields it keeps
        table = pa.json.read_json(
            pa.BufferReader(data),
            read_options=pa.json.ReadOptions(use_threads=False),
            parse_options=_json_options(),
        )
    except (UnicodeDecodeError, pa.ArrowInvalid):
        return None
    rows = len(starts) + 1
    text, lang, language = (table.column(name) for name in ("text", *LANGUAGE_FIELDS))
    # More rows than lines: a line held several values. A null 'lang' beside a 'language':
    # which of the two counts depends on whether the record has the key 'lang'.
    lang_is_null = pa.compute.and_(lang.is_null(), language.is_valid())
    if table.num_rows != rows or text.null_count or pa.compute.any(lang_is_null).as_py():
        return None
    languages = _languages(pa.compute.coalesce(lang, language, pa.scalar("")), default)
    return None if languages is None else (text.to_pylist(), languages, rows)


def _languages(codes: Any, default: str | None) -> list[str | None] | None:
    """Each row's normalised language (``default`` where its code is empty); None if a code is
    unknown (the line-by-line reading names the line)."""
    compute = _arrow().compute
    found = compute.unique(codes)
    try:
        names = [_language(code) if code else default for code in found.to_pylist()]
    except UsageError:
        return None
    if len(names) == 1:
        return names * len(codes)
    indices = compute.index_in(codes, value_set=found).to_numpy()
    languages: list[str | None] = np.array(names, dtype=object)[indices].tolist()
    return languages


def load_hf_dataset(source: str | Path, *, split: str | None = None) -> Any:
    """One split of a Hugging Face dataset: a ``datasets.Dataset`` for a ``save_to_disk``
    directory; for a Hub id or a local directory laid out like one, an ``IterableDataset``
    (streamed: nothing is downloaded or converted beyond what is read)."""
    import datasets

    kind = source_kind(source)
    try:
        if kind == "hf-disk":
            loaded = datasets.load_from_disk(str(source))
        else:
            loaded = datasets.load_dataset(str(source), split=split, streaming=True)
    except (ConnectionError, OSError) as exc:
        where = "the Hugging Face Hub" if kind == "hf-hub" else str(source)
        raise UsageError(
            f"cannot load dataset {source!s} from {where}: {exception_line(exc)} "
            "(offline? pass a local path: a corpus directory or a save_to_disk dataset)"
        ) from None
    except (ValueError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise UsageError(f"cannot load dataset {source!s}: {exc}") from None
    if isinstance(loaded, datasets.DatasetDict | datasets.IterableDatasetDict):
        return _pick_split(loaded, split, source)
    return loaded


def _pick_split(splits: Any, split: str | None, source: str | Path) -> Any:
    names = sorted(splits)
    if split is None:
        split = "train" if "train" in splits else (names[0] if len(names) == 1 else None)
    if split not in splits:
        raise UsageError(
            f"dataset {source!s} has splits {', '.join(names)}: choose one with --split"
        )
    return splits[split]


def _read(items: Any, source: str | Path) -> Iterator[Any]:
    """``items`` of a dataset, its read errors (a stream reads as it goes) as one line."""
    iterator = iter(items)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except (ConnectionError, TimeoutError) as exc:
            raise UsageError(
                f"cannot read dataset {source!s}: {exception_line(exc)} (offline? run the "
                "command again, or pass a local copy)"
            ) from None
        except (UsageError, FormatError):
            raise
        except Exception as exc:  # Arrow, JSON, gzip: the data is broken
            raise FormatError(f"cannot read dataset {source!s}: {exception_line(exc)}") from None
        yield item


def _hf_documents(
    source: str | Path, language: str | None, split: str | None, require_language: bool
) -> Iterator[Document]:
    dataset = load_hf_dataset(source, split=split)
    columns = list(dataset.column_names or [])
    if not columns:  # a stream whose features are not known before its first row
        columns = list(next(iter(_read(dataset.take(1), source)), {}))
    if "text" not in columns:
        raise FormatError(f"dataset {source!s} has no 'text' column (columns: {columns})")
    lang_column = next((c for c in ("lang", "language") if c in columns), None)
    wanted = ["text"] + ([lang_column] if lang_column else [])
    default = _language(language) if language else None
    row = 0
    if lang_column is None and default is None and require_language:
        raise _unlabelled(f"dataset {source!s}")
    for batch in _read(dataset.select_columns(wanted).iter(batch_size=HF_BATCH), source):
        codes = batch[lang_column] if lang_column else [None] * len(batch["text"])
        for text, code in zip(batch["text"], codes, strict=True):
            row += 1
            if not isinstance(text, str):
                raise FormatError(f"dataset {source!s} row {row}: 'text' is not a string")
            if code is not None and not isinstance(code, str):
                raise FormatError(f"dataset {source!s} row {row}: '{lang_column}' is not a string")
            if not code and default is None and require_language:
                raise _unlabelled(f"dataset {source!s} row {row}")
            try:
                yield Document(text, _language(code) if code else default)
            except UsageError as exc:
                raise FormatError(f"dataset {source!s} row {row}: {exc}") from None


def iter_documents(
    source: str | Path,
    *,
    language: str | None = None,
    split: str | None = None,
    require_language: bool = False,
    languages: Sequence[str] | None = None,
) -> Iterator[Document]:
    """Every document of a corpus, in file order; ``language`` labels unlabelled documents.
    With ``languages``, files named for other languages are not read (see ``corpus_files``).

    A document's language comes from its record (``lang``/``language``), else the file name
    (``tr.jsonl``), else ``language``. With ``require_language`` a document left without one
    is a one-line ``UsageError`` naming its file or dataset. ``split`` picks the split of a
    Hugging Face dataset (default ``train``, or its only split).
    """
    if source_kind(source) != "files":
        yield from _hf_documents(source, language and _language(language), split, require_language)
        return
    for path, default in labelled_files(source, language=language, languages=languages):
        for block in read_blocks(path, default, require_language=require_language):
            yield from map(Document, block.texts, block.languages)


def labelled_files(
    source: str | Path, *, language: str | None = None, languages: Sequence[str] | None = None
) -> list[tuple[Path, str | None]]:
    """The files of a corpus of files (see ``corpus_files``), each with the language of its
    documents that carry none: the file name's (``tr.jsonl``), else ``language``."""
    default = _language(language) if language else None
    files = corpus_files(Path(source), languages=languages)
    return [(path, _file_language(path, default)) for path in files]


def read_documents(
    source: str | Path,
    *,
    languages: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[Document]:
    """The non-empty documents of a labelled corpus, optionally only some languages and the
    first ``limit`` of each; a language asked for but absent, or nothing left, is a one-line
    ``UsageError``."""
    if not Path(source).exists() and source_kind(source) == "files":
        raise UsageError(f"evaluation data not found: {source}")
    wanted = set(languages) if languages else None
    counts: dict[str, int] = {}
    documents = []
    for document in iter_documents(source, require_language=True, languages=languages):
        language = str(document.language)
        if (wanted is not None and language not in wanted) or not document.text.strip():
            continue
        if limit is not None and counts.get(language, 0) >= limit:
            continue
        counts[language] = counts.get(language, 0) + 1
        documents.append(document)
    if wanted is not None and wanted - set(counts):
        raise UsageError(
            f"{source} has no documents in {', '.join(sorted(wanted - set(counts)))} "
            f"(it has: {', '.join(sorted(counts)) or 'none'})"
        )
    if not documents:
        raise UsageError(f"no documents to evaluate in {source}")
    return documents
