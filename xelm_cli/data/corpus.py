"""Reading corpora: documents with a language label, from files or directories.

Formats: JSON lines with ``text`` and ``lang`` (the mC4 record layout; ``language`` is accepted
too), optionally zstd-compressed (``.jsonl.zst``); plain text (``.txt``, ``.txt.zst``), one
document per non-empty line, its language from the file name (``tr.txt``) or ``language=``; a
directory of such files (sorted, recursive). A ``.zst`` file must hold complete zstd frames: a
truncated or corrupt stream is an error, never a silently shorter corpus.
"""

import functools
import io
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

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


def _lines(path: Path) -> Iterator[str]:
    with open(path, "rb") as raw:
        binary: Any = _ZstdReader(raw, path) if path.suffix == ".zst" else raw
        text = io.TextIOWrapper(io.BufferedReader(binary, CHUNK), encoding="utf-8", errors="strict")
        number = 0
        try:
            while line := text.readline(MAX_LINE_CHARS + 1):
                number += 1
                if len(line) > MAX_LINE_CHARS and not line.endswith("\n"):
                    raise FormatError(
                        f"{path}:{number}: line longer than {MAX_LINE_CHARS} characters "
                        "(not a text corpus, or a broken file)"
                    )
                yield line
        except UnicodeDecodeError as exc:
            raise FormatError(f"{path}: not UTF-8 text ({exc.reason})") from None
        except zstandard.ZstdError as exc:
            raise FormatError(f"{path}: corrupt zstd stream ({exc})") from None


def _file_language(path: Path, default: str | None) -> str | None:
    """The language a file name (``tr.jsonl``) gives, else ``default``."""
    try:
        return _language(path.name.split(".")[0])
    except UsageError:
        return default


def _unlabelled(where: str) -> UsageError:
    return UsageError(f"{where}: documents have no language: add a 'lang' field or pass --lang")


def _labelled(documents: Iterator[Document], where: str) -> Iterator[Document]:
    for doc in documents:
        if doc.language is None:
            raise _unlabelled(where)
        yield doc


def iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """The records of a JSON-lines file (.jsonl or .jsonl.zst) with their line numbers, each
    with a valid string ``text``, and every other field as written (``source``, ...)."""
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            raise FormatError(f"{path}:{number}: not a JSON object") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise FormatError(f"{path}:{number}: a record needs a string field 'text'")
        if "\\u" in line and not is_unicode(record["text"]):  # only escapes make surrogates
            raise FormatError(f"{path}:{number}: 'text' holds a lone surrogate: not valid Unicode")
        yield number, record


def _jsonl_documents(path: Path, default: str | None) -> Iterator[Document]:
    for number, record in iter_records(path):
        code = record.get("lang", record.get("language"))
        if code is not None and not isinstance(code, str):
            raise FormatError(f"{path}:{number}: 'lang' must be a string")
        code = code or default
        try:
            yield Document(record["text"], _language(code) if code else None)
        except UsageError as exc:
            raise FormatError(f"{path}:{number}: {exc}") from None


def _text_documents(path: Path, language: str | None) -> Iterator[Document]:
    for line in _lines(path):
        text = line.rstrip("\n")
        if text.strip():
            yield Document(text, language)


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
    language = _language(language) if language else None
    if source_kind(source) != "files":
        yield from _hf_documents(source, language, split, require_language)
        return
    for path in corpus_files(Path(source), languages=languages):
        default = _file_language(path, language)
        if path.name.endswith(JSONL_SUFFIXES):
            documents = _jsonl_documents(path, default)
        else:
            documents = _text_documents(path, default)
        yield from _labelled(documents, str(path)) if require_language else documents


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
