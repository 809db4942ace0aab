"""Where a language's documents come from: corpus files, or a dataset streamed per language.

A *source* yields batches of labelled texts. Two kinds:

- ``DatasetSource``: one configuration (or data directory) and split of a Hugging Face
  dataset, read with
  ``datasets.load_dataset(..., streaming=True)``. A Hub id and a local directory laid out like
  a Hub dataset repository (data files per configuration, a README with a ``configs:``
  section) take exactly the same path. Nothing is materialised, so reading can stop at a cap
  after a sliver of a terabyte corpus. With ``language`` set, every row is that language
  (mC4's ``ar`` configuration); otherwise rows carry a ``lang``/``language`` column, and
  ``label`` (``--lang``) is the language of rows whose column is empty or missing. A row whose
  text is null is a blank document, and one whose language code is unknown (``und``) one of a
  language not wanted: both are skipped, each said once a stream.
- ``FileSource``: corpus files read by ``xelm_cli.data.corpus`` (JSON lines, text, ``save_to_disk``
  datasets), optionally only the files of some languages.

A stream reports its position after each batch (``Stream.position``); opening the source again
at that position continues after the last row of that batch, so a killed preparation resumes
where it stopped. Dataset streams resume from ``IterableDataset.state_dict``, file streams from
the byte offset and line number reached in the file being read (neither re-reads a row).
"""

import contextlib
import ctypes
import gc
import itertools
import logging
import os
import queue
import re
import sys
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from xelm_cli.common.digest import sha256_bytes, sha256_file
from xelm_cli.common.errors import FormatError, UsageError, XelmError, exception_line, one_line
from xelm_cli.common.hub import hub_unreachable
from xelm_cli.common.jsonio import canonical_json
from xelm_cli.data.blocks import FilePosition, read_blocks
from xelm_cli.data.corpus import (
    corpus_files,
    has_text,
    iter_documents,
    labelled_files,
    source_kind,
)
from xelm_cli.data.hub_errors import (
    MIRROR_VARIABLE,
    hub_refusal,
    is_network_error,
    local_copies,
    without_the_hub,
)
from xelm_cli.data.labels import LANGUAGE_FIELDS, language_code, record_label
from xelm_cli.lang.codes import normalize_language, wanted_form

DEFAULT_BATCH = 1000
SHOWN_CHOICES = 40  # configurations named in a message, at most
T = TypeVar("T")
COLUMNAR = "arrow-batches"  # how a dataset position was taken (DatasetSource.open)
_HUB_REVISION = re.compile(r"@([0-9a-f]{40})/")


def resolve_dataset(dataset: str) -> str:
    """Where to read a dataset from: ``$XELM_HUB_MIRROR/OWNER/NAME`` when that directory
    exists (a local copy laid out like the Hub repository), else ``dataset`` itself."""
    mirror = os.environ.get(MIRROR_VARIABLE)
    if mirror and not Path(dataset).exists():
        local = Path(mirror) / dataset
        if (local / "README.md").is_file():
            return str(local)
    return dataset


class SourceUnavailable(UsageError):
    """The source could not be reached (network, Hub): the same command may succeed later, so
    a preparation keeps what it has read so far."""


class MetAgain(XelmError):
    """An error that the same command meets again where it met it (the data is broken there,
    or a row has no language): a preparation keeps no work for a rerun to continue, as there
    is nothing a rerun could continue past. Raised as ``BrokenData`` or ``UnlabelledRow``."""


class BrokenData(MetAgain, FormatError):
    """A dataset's data cannot be read (a row of the wrong type, a corrupt file)."""


class DamagedDataFile(FormatError):
    """One data file of a dataset cannot be read (cut short, corrupt): named, so that it can be
    replaced; a preparation keeps what it read before it, for the same command to continue
    once it is."""


class UnlabelledRow(MetAgain, UsageError):
    """A dataset row with no language, read without ``--lang``."""


# Reading a dataset whose rows carry their languages, without knowing which languages it has
# (no --langs), stops once every language read from it so far is full (at its read limit) and
# this many batches in a row after that brought no language not read before: a dataset of one
# language (fineweb-2's deu_Latn, whose rows say "deu") is then left a few batches after its
# limit instead of being read to its end. A language first met further on than that is not read:
# --langs names the languages to read when a dataset holds a language only far into it.
NEW_LANGUAGE_BATCHES = 3


class LanguagesMet:
    """When a stream whose languages are not known before it is read has given enough (see
    ``NEW_LANGUAGE_BATCHES``): ``after`` is told each batch's languages."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.quiet = 0  # batches in a row after which every language seen was full

    def after(self, languages: Iterable[str], full: Callable[[str], bool]) -> bool:
        """Whether to stop after a batch of rows of ``languages``, ``full(language)`` saying
        whether a language has all it needs."""
        before = len(self.seen)
        self.seen.update(languages)
        if len(self.seen) > before or not self.seen or not all(map(full, self.seen)):
            self.quiet = 0  # a new language, none yet, or one not full
            return False
        self.quiet += 1  # the first is the batch that filled the last language (or a later one)
        return self.quiet > NEW_LANGUAGE_BATCHES


def require_hub(datasets: Iterable[str]) -> None:
    """Refuse at once, rather than after the Hub client's retries, to read ``datasets`` when
    some are on the Hub (not local copies, XELM_HUB_MIRROR included) and the Hub cannot be
    reached. With HF_HUB_OFFLINE set the datasets library decides (it fails at once).
    Everything xelm reads from a Hub dataset is streamed, so nothing cached can stand in."""
    from huggingface_hub import constants

    remote = sorted({d for d in datasets if not Path(resolve_dataset(d)).exists()})
    why = hub_unreachable() if remote and not constants.HF_HUB_OFFLINE else None
    if why:
        raise SourceUnavailable(
            f"cannot reach the Hugging Face Hub for {', '.join(remote)}: {why} (offline? run "
            f"the same command again with network access, or {local_copies(remote)})"
        )


def finish_arrow_work() -> None:
    """Let Arrow's worker threads finish before the interpreter exits (the CLI calls this last).

    ``datasets`` streams parquet through ``ParquetFragment.to_batches`` over a Python file
    object. Once such a scan's iterator is dropped (read to its end or not), pyarrow 26 tears
    the scan down on one of its worker threads, and that teardown takes the GIL to release the
    Python buffers it read. If the interpreter is finalizing by then, CPython ends the thread
    inside a C++ destructor and the process aborts ("terminate called without an active
    exception", exit 134). Collecting garbage drops every abandoned scan now; waiting for the
    pools lets their teardown run while the GIL can still be taken. pyarrow has no Python API
    for the wait, so this calls libarrow's ``ThreadPool::WaitForIdle``; where that library or
    its symbols are not found, nothing is waited for."""
    if "pyarrow" not in sys.modules:
        return
    gc.collect()
    pools, wait_for_idle = _arrow_thread_pools()
    for _ in range(2):  # a task on one pool can queue work on the other
        for pool in pools:
            wait_for_idle(pool)  # ctypes releases the GIL for the call


def _arrow_thread_pools() -> tuple[list[int], Any]:
    """Arrow's I/O and CPU thread pools, and its ``ThreadPool::WaitForIdle`` (C++ names, as
    libarrow exports them); no pools where they are not found."""
    import pyarrow

    for directory in pyarrow.get_library_dirs():
        for path in sorted(Path(directory).glob("libarrow.so.*")):
            try:
                library = ctypes.CDLL(str(path))
                io_pool = library._ZN5arrow2io8internal15GetIOThreadPoolEv
                cpu_pool = library._ZN5arrow8internal16GetCpuThreadPoolEv
                wait_for_idle = library._ZN5arrow8internal10ThreadPool11WaitForIdleEv
            except (OSError, AttributeError):
                continue
            io_pool.restype = cpu_pool.restype = ctypes.c_void_p
            wait_for_idle.argtypes = [ctypes.c_void_p]
            return [io_pool(), cpu_pool()], wait_for_idle
    return [], None


@dataclass
class Batch:
    languages: list[str]
    texts: list[str]
    blank: dict[str, int] = field(default_factory=dict)  # rows skipped as blank, per language


class Stream:
    """Batches of a source; ``position`` is where the next ``open`` continues after the batch
    last yielded."""

    def __init__(self, batches: Iterator[Batch], position: Any) -> None:
        self._batches = batches
        self._position = position

    def __iter__(self) -> Iterator[Batch]:
        return self._batches

    @property
    def position(self) -> Any:
        return self._position() if callable(self._position) else self._position


def read_ahead(items: Iterable[T], depth: int = 2) -> Generator[T, None, None]:
    """``items``, produced on a thread up to ``depth`` ahead of the caller: work that releases
    the GIL (decompression, the Rust tokenizer) overlaps the caller's. Errors reach the caller
    in order; closing the iterator stops the thread at its next item."""
    ready: queue.Queue[tuple[T] | BaseException | None] = queue.Queue(depth)
    stop = threading.Event()

    def put(item: tuple[T] | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item,)):
                    return
            put(None)
        except BaseException as exc:  # handed to the caller, raised there
            put(exc)

    thread = threading.Thread(target=produce, name="xelm-read-ahead", daemon=True)
    thread.start()
    try:
        while (got := ready.get()) is not None:
            if isinstance(got, BaseException):
                raise got
            yield got[0]
    finally:
        stop.set()


def prefetched(stream: Stream, depth: int = 2) -> Iterator[tuple[Batch, Any]]:
    """``(batch, position after it)`` of ``stream``, read ahead on a thread: reading and
    decoding the next batches overlaps the caller's tokenising of this one. Positions are
    taken as each batch is read, so a position never runs ahead of the batch it comes with."""
    return read_ahead(((batch, stream.position) for batch in stream), depth)


@dataclass(frozen=True)
class DatasetSource:
    """One configuration (or data directory) and split of a Hugging Face dataset (Hub id or
    local directory)."""

    dataset: str
    config: str | None = None
    split: str = "train"
    text_column: str = "text"
    revision: str | None = None
    language: str | None = None  # every row's language; None: rows carry a language column
    data_dir: str | None = None  # a folder of the repository: its files alone (data/ar)
    label: str | None = None  # the language of rows whose language column is empty or missing
    languages: tuple[str, ...] | None = None  # wanted: rows' labels as these name them

    def describe(self) -> str:
        where = "/".join(p for p in (self.config, self.data_dir, self.split) if p)
        return f"{self.dataset} [{where}]"

    def options(self) -> dict[str, Any]:
        """Where the rows come from (not which of their languages are wanted)."""
        given = asdict(self).items()
        return {k: v for k, v in given if v is not None and k != "languages"}

    def record(self) -> dict[str, Any]:
        """What this source is: its options and the data files it resolves to (names and
        sizes of local files, not their modification times: a copy or a touch is the same
        data; for the Hub, file names at a commit)."""
        files = self._data_files()
        listing: list[Any] = []
        revision = self.revision
        for name in files:
            path = Path(name)
            if path.is_file():
                listing.append([path.name, path.stat().st_size])
            else:
                listing.append(name)
                match = _HUB_REVISION.search(name)
                revision = match.group(1) if match else revision
        # a Hub file's name holds its commit: the revision asked for (none, a branch or that
        # commit) adds nothing to what is read, and a run pinned to the commit is the same
        hub = any(isinstance(entry, str) for entry in listing)
        options = {k: v for k, v in self.options().items() if not (hub and k == "revision")}
        return {
            "kind": "dataset",
            **self.options(),
            "resolved_revision": revision,
            "data_files": len(files),
            "digest": sha256_bytes(canonical_json({"source": options, "files": listing})),
        }

    def _builder(self) -> Any:
        """The dataset's builder, resolved once per source object: ``record`` (which lists the
        data files) and every ``open`` share it, so a Hub dataset's files are resolved once."""
        builder = self.__dict__.get("_resolved")
        if builder is None:
            import datasets

            require_hub([self.dataset])
            with _translated(self):
                builder = datasets.load_dataset_builder(
                    resolve_dataset(self.dataset),
                    name=self.config,
                    data_dir=self.data_dir,
                    revision=self.revision,
                )
                builder = _with_own_format(builder, self.split)
            object.__setattr__(self, "_resolved", builder)  # a cache, not a field
        return builder

    def _data_files(self) -> list[str]:
        data_files = self._builder().config.data_files or {}
        if self.split not in data_files:
            raise UsageError(
                f"{self.describe()}: no split {self.split!r} (it has "
                f"{', '.join(sorted(data_files)) or 'none'}); choose one with --split"
            )
        return [str(name) for name in data_files[self.split]]

    def _load(self) -> Any:
        """The split as an ``IterableDataset`` (what ``load_dataset(..., streaming=True)``
        returns, from the builder ``record`` resolved)."""
        builder = self._builder()
        with _translated(self):
            return builder.as_streaming_dataset(split=self.split)

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every row, all columns (evaluation sets and task data, read whole)."""
        dataset = self._load()
        with _translated(self):
            yield from dataset

    def open(self, position: Any = None, *, batch_size: int = DEFAULT_BATCH) -> Stream:
        """Batches of at most ``batch_size`` rows from ``position`` on. Rows are read as Arrow
        tables of ``batch_size`` rows (``IterableDataset.iter`` in the ``arrow`` format), their
        columns converted to Python a column at a time; the position after each table is the
        dataset's ``state_dict``, which resumes after that table's last row (with the batch size
        it was taken with, whatever ``batch_size`` is now). A position of an earlier xelm (no
        ``reader``: taken while reading row by row) resumes row by row."""
        columnar = not position or position.get("reader") == COLUMNAR
        dataset = self._load()
        if columnar:
            dataset = dataset.with_format("arrow")
        state: dict[str, Any] = {"rows": 0, "dataset": None}
        if columnar:  # its state counts tables of batch_size rows: resume with the same size
            batch_size = int((position or {}).get("batch_size", batch_size))
            state.update(reader=COLUMNAR, batch_size=batch_size)
        if position:
            dataset.load_state_dict(position["dataset"])
            state["rows"] = position["rows"]
        state["dataset"] = dataset.state_dict()
        read = self._tables if columnar else self._batches
        batches = as_wanted(read(dataset, state, batch_size), self.languages)
        return Stream(batches, lambda: dict(state))

    def _labels(self) -> "_Rows":
        """How this stream labels its rows: every row's language (``language``), that of rows
        without one (``label``); and what it said of the rows it skipped."""
        every = normalize_language(self.language) if self.language else None
        unlabelled = normalize_language(self.label) if self.label else None
        return _Rows(self.describe(), self.text_column, every, unlabelled)

    def _tables(self, dataset: Any, state: dict[str, Any], size: int) -> Iterator[Batch]:
        labels = self._labels()
        tables = iter(dataset.iter(batch_size=size))
        while True:
            with _translated(self, dataset, state["rows"]):
                table = next(tables, None)
                if table is None:
                    return
                batch = self._from_table(table, state["rows"], labels)
            state["rows"] += table.num_rows
            state["dataset"] = dataset.state_dict()
            yield batch

    def _from_table(self, table: Any, before: int, labels: "_Rows") -> Batch:
        """A batch from an Arrow table of rows ``before + 1 ...``: each row goes through
        ``_add`` (the same checks and messages as a row read alone), with only the columns
        ``_add`` looks at converted to Python."""
        batch = Batch([], [])
        names = table.column_names
        if not table.num_rows:
            return batch
        if self.text_column not in names:  # _add names every column: give it a whole row
            self._add(batch, table.slice(0, 1).to_pylist()[0], before + 1, labels)
        wanted = [self.text_column]
        if labels.every is None:
            wanted += [c for c in LANGUAGE_FIELDS if c in names]
        columns = [table.column(name).to_pylist() for name in wanted]
        add = self._add
        for number, values in enumerate(zip(*columns, strict=True), start=before + 1):
            add(batch, dict(zip(wanted, values, strict=True)), number, labels)
        return batch

    def _batches(self, dataset: Any, state: dict[str, Any], size: int) -> Iterator[Batch]:
        """Row by row: what positions taken by earlier versions resume with."""
        rows = iter(dataset)
        labels = self._labels()
        while True:
            batch, read = Batch([], []), 0
            with _translated(self, dataset, state["rows"]):
                for row in itertools.islice(rows, size):
                    read += 1
                    state["rows"] += 1
                    self._add(batch, row, state["rows"], labels)
            if not read:
                return
            state["dataset"] = dataset.state_dict()
            yield batch

    def _add(self, batch: Batch, row: dict[str, Any], number: int, labels: "_Rows") -> None:
        """Row ``number`` into ``batch`` when it has text. A null text is a blank document, and a
        row whose language code is unknown (``und``) is skipped as one of a language not
        wanted, each said once a stream (``labels``); a text that is not text, or a row without
        a language and without ``--lang``, stops the reading (``MetAgain``)."""
        column = self.text_column
        if column not in row:
            raise BrokenData(
                f"{self.describe()} row {number} has no column {column!r} (columns: "
                f"{', '.join(sorted(row))}); choose one with --text-column (a recipe's: its "
                "text_column)"
            )
        text = row[column]
        if not isinstance(text, str):
            if text is None:
                labels.null_text(number)
                _count_blank(batch, self._row_language(row, labels)[0])
                return
            raise BrokenData(
                f"{self.describe()} row {number}: {column!r} is not text "
                f"({type(text).__name__}); choose the text column with --text-column (a "
                "recipe's: its text_column)"
            )
        language, label = self._row_language(row, labels)
        if language is None and label is not None:
            labels.unknown(label, number)
            return
        if language is None:
            raise UnlabelledRow(
                f"{self.describe()} row {number}: no language (a 'lang' column, --lang, or a "
                "per-language --config such as '{lang}')"
            )
        if has_text(text):
            batch.languages.append(language)
            batch.texts.append(text)
        else:
            _count_blank(batch, language)

    def _row_language(
        self, row: dict[str, Any], labels: "_Rows"
    ) -> tuple[str | None, tuple[str, Any] | None]:
        """A row's language (``--lang``'s, its label's, else ``--label``'s; None: none known)
        and its label (None where there is none or ``--lang`` decides): a label with no
        language is an unknown code."""
        if labels.every is not None:
            return labels.every, None
        label = record_label(row)
        return (labels.unlabelled, None) if label is None else (labels.language(label[1]), label)


def _count_blank(batch: Batch, language: str | None) -> None:
    if language is not None:
        batch.blank[language] = batch.blank.get(language, 0) + 1


@dataclass
class _Rows:
    """How a dataset stream labels its rows (``every``: every row's language; ``unlabelled``:
    that of rows without one), and what it has said of the rows it skipped: once a stream, the
    first row of each kind, on stderr (the stream may run on a thread of its own)."""

    where: str  # the source, as described
    text_column: str
    every: str | None
    unlabelled: str | None
    unknown_codes: set[str] = field(default_factory=set)  # not normalize_language's
    said: set[str] = field(default_factory=set)  # the kinds of skipped rows already named

    def language(self, code: Any) -> str | None:
        """A row's language code as xelm names it (``language_code``, cached: a dataset
        repeats a few codes); None when it is unknown or not text."""
        if not isinstance(code, str) or code in self.unknown_codes:
            return None
        try:
            return language_code(code)
        except UsageError:
            self.unknown_codes.add(code)
            return None

    def null_text(self, number: int) -> None:
        self._once(
            "null",
            f"row {number}: its {self.text_column!r} is null: rows without text are skipped, "
            "as blank documents are",
        )

    def unknown(self, label: tuple[str, Any], number: int) -> None:
        column, code = label
        self._once(
            "unknown",
            f"row {number}: unknown language code {code!r} in its {column!r} column: rows of "
            "unknown languages are skipped, as those of languages not wanted are",
        )

    def _once(self, kind: str, message: str) -> None:
        if kind not in self.said:
            self.said.add(kind)
            sys.stderr.write(f"xelm: warning: {self.where} {message}\n")


@dataclass(frozen=True)
class FileSource:
    """Corpus files (or a ``save_to_disk`` dataset), optionally only some languages' files."""

    path: str
    language: str | None = None  # label of documents that carry none
    split: str | None = None  # of a save_to_disk dataset
    languages: tuple[str, ...] | None = field(default=None)
    text_column: str | None = None  # of a save_to_disk dataset (None: text)

    def describe(self) -> str:
        return self.path

    def files(self) -> list[Path]:
        """The files read: with ``languages``, files named for another language are skipped
        (``tr.jsonl`` holds Turkish)."""
        return corpus_files(Path(self.path), languages=self.languages)

    def record(self, previous: dict[str, Any] | None = None) -> dict[str, Any]:
        """The files' names, sizes and sha256 (a file whose name, size and modification time
        equal ``previous``'s keeps its recorded sha256 instead of being hashed again)."""
        root = Path(self.path)
        known = {f["name"]: f for f in (previous or {}).get("files", [])}
        files = []
        for path in self.files():
            info = path.stat()
            name = path.relative_to(root).as_posix() if root.is_dir() else path.name
            old = known.get(name, {})
            same = old.get("size") == info.st_size and old.get("mtime_ns") == info.st_mtime_ns
            sha = old["sha256"] if same and "sha256" in old else sha256_file(path)
            files.append(
                {"name": name, "size": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": sha}
            )
        content = [{k: f[k] for k in ("name", "size", "sha256")} for f in files]
        kind = source_kind(self.path)  # files, or hf-disk for a save_to_disk dataset
        column = {"text_column": self.text_column} if self.text_column else {}
        sealed = {"kind": kind, "split": self.split, **column, "content": content}
        return {
            "kind": kind,
            "path": self.path,
            "split": self.split,
            **column,
            "digest": sha256_bytes(canonical_json(sealed)),
            "files": files,
        }

    def open(self, position: Any = None, *, batch_size: int = DEFAULT_BATCH) -> Stream:
        """Batches of the documents of at most ``batch_size`` lines of one file, from
        ``position`` on: ``{"file": index in files(), "offset": bytes of its content read,
        "line": lines read}``, which continues at the next line without re-reading the lines
        before it. A ``save_to_disk`` dataset, and a position of an earlier xelm (a number of
        documents), are read from the start, skipping that many documents."""
        if isinstance(position, int) or source_kind(self.path) != "files":
            return self._skipping(int(position or 0), batch_size)
        state = dict(position or {"file": 0, "offset": 0, "line": 0})
        files = labelled_files(self.path, language=self.language, languages=self.languages)

        def batches() -> Iterator[Batch]:
            first, resume = state["file"], FilePosition(state["offset"], state["line"])
            for index, (path, default) in enumerate(files[first:], start=first):
                start = resume if index == first else FilePosition()
                blocks = read_blocks(
                    path, default, start=start, lines=batch_size, require_language=True
                )
                for block in blocks:
                    state.update(file=index, offset=block.end.offset, line=block.end.line)
                    yield _batch(block.texts, block.languages)

        return Stream(as_wanted(batches(), self.languages), lambda: dict(state))

    def _skipping(self, skip: int, batch_size: int) -> Stream:
        state = {"rows": skip}
        documents = iter_documents(
            self.path,
            text_column_flag="--text-column",
            language=self.language,
            split=self.split,
            require_language=True,
            languages=self.languages,
            text_column=self.text_column,
        )
        documents = itertools.islice(documents, skip, None)

        def batches() -> Iterator[Batch]:
            while chunk := list(itertools.islice(documents, batch_size)):
                state["rows"] += len(chunk)
                yield _batch([d.text for d in chunk], [d.language for d in chunk])

        return Stream(as_wanted(batches(), self.languages), lambda: state["rows"])


def as_wanted(batches: Iterator[Batch], wanted: Sequence[str] | None) -> Iterator[Batch]:
    """``batches``, each label as ``wanted`` names its language (see ``wanted_form``: rows of
    ``arb-Arab`` are ``ar`` when ar is wanted)."""
    wanted_set = set(wanted or ())
    for batch in batches:
        if wanted_set:
            forms = {
                lang: wanted_form(lang, wanted_set) for lang in {*batch.languages, *batch.blank}
            }
            if any(lang != form for lang, form in forms.items()):
                batch.languages = [forms[lang] for lang in batch.languages]
                blank: dict[str, int] = {}
                for lang, n in batch.blank.items():
                    blank[forms[lang]] = blank.get(forms[lang], 0) + n
                batch.blank = blank
        yield batch


def _batch(texts: list[str], languages: list[str | None]) -> Batch:
    """The documents with text (every one is labelled: read with ``require_language``)."""
    kept = [i for i, text in enumerate(texts) if has_text(text)]
    if len(kept) < len(texts):
        texts, languages = [texts[i] for i in kept], [languages[i] for i in kept]
    return Batch(cast(list[str], languages), texts)


Source = DatasetSource | FileSource


@contextlib.contextmanager
def _translated(source: DatasetSource, dataset: Any = None, rows: int = 0) -> Iterator[None]:
    """``datasets``/Hub/Arrow failures as one line naming the source and the way out: the
    Hub's refusals by their type and HTTP status (``hub_refusal``), the network's failures
    (a download cut short too) as ``SourceUnavailable``, a data file that ``dataset`` (being
    read, after ``rows`` rows) cannot read as ``DamagedDataFile``, anything else as
    ``BrokenData``."""
    import datasets

    where = source.describe()
    try:
        with _quiet_libraries():
            yield
    except (UsageError, FormatError):
        raise
    except datasets.data_files.EmptyDatasetError:
        folder = f"folder {source.data_dir!r}" if source.data_dir else "repository"
        raise UsageError(
            f"{where}: its {folder} holds no data files; check --data-dir / --config"
        ) from None
    except Exception as exc:  # the Hub's, the network's; else Arrow, gzip, JSON: broken data
        refused = hub_refusal(
            exc, source.dataset, revision=source.revision, where=source.describe()
        )
        if refused is not None:
            raise refused from None
        if is_network_error(exc, remote=not Path(resolve_dataset(source.dataset)).exists()):
            raise SourceUnavailable(
                f"cannot load dataset {source.dataset} ({where}): {exception_line(exc, 200)} "
                f"({without_the_hub(source.dataset, exc)})"
            ) from None
        if _empty_data_file(exc):
            file = _data_file_being_read(dataset)
            named = f"its data file {file}" if file else "one of its data files"
            raise BrokenData(
                f"cannot read {where}: {named} holds no rows (datasets cannot stream an empty "
                "file): remove it, or leave its language out of --langs"
            ) from None
        damaged = _data_file_being_read(dataset) if _cut_or_corrupt(exc) else None
        if damaged is not None:  # (before ValueError's reading: Arrow's errors are ValueErrors)
            raise DamagedDataFile(
                f"cannot read {where} after row {rows:,}: its data file {damaged} is damaged "
                f"({exception_line(exc, 200)}): replace it with a good copy (download it again)"
            ) from None
        if isinstance(exc, ValueError):
            raise _config_or_split_error(source, exc) from None
        raise BrokenData(f"cannot read {where}: {exception_line(exc)}") from None


# What Arrow says of a parquet or JSON-lines file that is cut short or corrupt (a parquet
# file's footer, or a JSON line that ends mid-value)
_ARROW_DAMAGE = re.compile(
    r"parquet magic bytes|deserialize thrift|unexpected end of (stream|file)|json parse error|"
    r"corrupt|truncated",
    re.IGNORECASE,
)


def _cut_or_corrupt(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a file that ends early or does not decompress or
    parse (a compressed file, a parquet file, a JSON-lines file): the file is damaged, not its
    rows (a row of the wrong type is met again in any copy)."""
    import gzip
    import lzma
    import zlib

    import pyarrow
    import zstandard

    damage = (EOFError, gzip.BadGzipFile, zlib.error, lzma.LZMAError, zstandard.ZstdError)
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, damage):
            return True
        if isinstance(seen, pyarrow.ArrowException) and _ARROW_DAMAGE.search(str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _empty_data_file(exc: BaseException) -> bool:
    """Whether ``exc`` is what ``datasets`` raises streaming a data file of no rows: a parquet
    file's empty row group asks Arrow for batches of 0 rows, an empty JSON-lines file ends its
    reader's iterator where a first row is awaited."""
    import pyarrow

    if isinstance(exc, StopIteration):
        return True
    return isinstance(exc, pyarrow.ArrowInvalid) and "BatchSize must be greater than 0" in str(exc)


def _data_file_being_read(dataset: Any) -> str | None:
    """The data file a streamed ``datasets.IterableDataset`` was reading (its innermost
    iterable's shard), or None where its internals do not say (they are not public API) or
    there is none (the dataset was not open yet)."""
    try:
        state, inner = dataset.state_dict(), dataset._ex_iterable
        while "examples_iterable" in state:
            state = state["examples_iterable"]
        while hasattr(inner, "ex_iterable"):
            inner = inner.ex_iterable
        files = inner.kwargs.get("original_files") or inner.kwargs.get("files")
        file = files[int(state["shard_idx"])]
    except Exception:  # any other layout: the source is named without its file
        return None
    return file if isinstance(file, str) else None  # (older releases: an iterator of files)


def dataset_configs(dataset: str, revision: str | None = None) -> list[str]:
    """The configuration names of a dataset (Hub id or local Hub-layout directory)."""
    require_hub([dataset])
    with _translated(DatasetSource(dataset, revision=revision)):
        return _config_names(dataset, revision)


def dataset_splits(dataset: str, config: str | None, revision: str | None = None) -> list[str]:
    """The split names of one configuration of a dataset."""
    require_hub([dataset])
    with _translated(DatasetSource(dataset, config=config, revision=revision)):
        return _split_names(dataset, config, revision)


# Untranslated: what _config_or_split_error (itself part of _translated) lists the choices with.
def _config_names(dataset: str, revision: str | None) -> list[str]:
    import datasets

    return list(datasets.get_dataset_config_names(resolve_dataset(dataset), revision=revision))


def _split_names(
    dataset: str, config: str | None, revision: str | None, data_dir: str | None = None
) -> list[str]:
    import datasets

    return list(
        datasets.get_dataset_split_names(
            resolve_dataset(dataset), config, revision=revision, data_dir=data_dir
        )
    )


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Hide the Hub client's retry warnings and datasets' error logs: what went wrong reaches
    the user once, as xelm's one line."""
    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "datasets")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _config_or_split_error(source: DatasetSource, exc: ValueError) -> Exception:
    message = str(exc)
    if "BuilderConfig" in message or "Config name is missing" in message:
        try:
            names = _config_names(source.dataset, source.revision)
        except Exception:  # listing failed too: report what load_dataset said
            names = []
        shown = ", ".join(names[:SHOWN_CHOICES]) + (" ..." if len(names) > SHOWN_CHOICES else "")
        what = (
            f"no configuration {source.config!r}"
            if source.config
            else "several configurations: choose one with --config"
        )
        return UsageError(
            f"{source.dataset} has {what} (it has {shown or 'none listed'}); "
            "check --config / --lang-map"
        )
    if "split" in message.lower():
        try:
            splits = _split_names(source.dataset, source.config, source.revision, source.data_dir)
        except Exception:
            splits = []
        return UsageError(
            f"{source.describe()}: no split {source.split!r} (it has "
            f"{', '.join(splits) or 'none listed'}); choose one with --split"
        )
    return BrokenData(f"cannot read {source.describe()}: {one_line(message, 300)}")


# datasets' packaged builder of each data file extension (compressed files: the inner one)
FORMAT_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".ndjson": "json",
                   ".csv": "csv", ".txt": "text", ".arrow": "arrow"}  # fmt: skip
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".lz4")


def _file_format(name: str) -> str | None:
    suffixes = Path(name.split("?")[0]).suffixes
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return FORMAT_BUILDERS.get(suffixes[-1].lower()) if suffixes else None


def _with_own_format(builder: Any, split: str) -> Any:
    """``builder``, or one for the format the files of ``split`` are in: datasets reads every
    configuration of a repository in one format (its most common), so a repository mixing
    parquet and JSON lines (a configuration, or a split of one) is otherwise read wrongly."""
    import datasets

    files = [str(name) for name in (builder.config.data_files or {}).get(split, [])]
    formats = {_file_format(name) for name in files}
    if len(formats) != 1 or None in formats or builder.name in formats:
        return builder
    (own,) = formats
    return datasets.load_dataset_builder(str(own), data_files={split: files})
