"""The resumable work directory of ``xelm data prepare``.

Tokenised documents are appended per language to ``LANG.tokens.bin`` and ``LANG.lengths.bin``
(uint64 token count per document) in a hidden sibling of the output, ``.OUT.prepare/``. Every
few seconds, and when a source is finished, the files are flushed to disk and ``state.json``
records (atomically) how far each source was read and how many documents and tokens each
language holds at that moment. When reading ends, each language's document offsets are
written from its lengths to ``LANG.offsets.bin`` (afresh on every run: derived, never trusted)
and mapped for pass 2. A killed run leaves the directory behind, and so does one that
failed (a corrupt file, a full disk) once it recorded documents; a rerun finds it (same key:
what reading depends on, see ``prepare._reading_inputs``), cuts every file back to the
recorded sizes and continues each source from its recorded position. A directory of another
key, or one whose files hold less than its state records, is discarded with a line saying
why. Nothing in it looks like shards: the output appears only when ``data_prepare`` renames
a finished directory into place.
"""

import contextlib
import itertools
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from xelm_cli.common.atomic import write_bytes_atomic
from xelm_cli.common.errors import FormatError, UsageError, XelmError
from xelm_cli.common.jsonio import parse_json_object, pretty_json
from xelm_cli.data.shards import OFFSETS_DTYPE, TOKEN_DTYPES, offsets_file, tokens_file
from xelm_cli.data.sources import MetAgain, SourceUnavailable

STATE_NAME = "state.json"
CHECKPOINT_SECONDS = 2.0
LENGTH_DTYPE = np.dtype("<u8")
OFFSETS_CHUNK = 1 << 20  # lengths summed at a time into a language's offsets (8 MiB)


def lengths_file(language: str) -> str:
    return f"{language}.lengths.bin"


def work_directory(out: Path) -> Path:
    return out.with_name(f".{out.name}.prepare")


class RepeatedByARerun(UsageError):
    """A usage error that the same command meets again: the work directory is not kept for it."""


class ReusedByARerun(UsageError):
    """A usage error that the same command meets again, but that a rerun with other options
    (``rerun``: which) continues the work of: the work directory is kept, and the error says
    so."""

    def __init__(self, message: str, rerun: str) -> None:
        super().__init__(message)
        self.rerun = rerun


class DamagedWork(FormatError):
    """A work file lost part of what its state records: that work cannot be continued."""


@dataclass
class LanguageCount:
    documents: int = 0
    tokens: int = 0
    bytes: int = 0
    full: bool = False  # reached its read limit: no source adds to it any more


class _Appender:
    """Appends one language's documents; sizes are checked against the state on resume."""

    def __init__(self, directory: Path, language: str, dtype: np.dtype[Any], count: LanguageCount):
        self.count = count
        self._tokens = open_at(directory / tokens_file(language), count.tokens * dtype.itemsize)
        self._lengths = open_at(directory / lengths_file(language), count.documents * 8)
        self._dtype = dtype

    def add(self, documents: list[list[int]], nbytes: int) -> None:
        lengths = np.fromiter(map(len, documents), dtype=LENGTH_DTYPE, count=len(documents))
        flat = np.fromiter(
            itertools.chain.from_iterable(documents), dtype=self._dtype, count=int(lengths.sum())
        )
        self._tokens.write(flat.data)  # not tofile: its errors lose the OS's reason (disk full)
        self._lengths.write(lengths.data)
        self.count.documents += len(documents)
        self.count.tokens += int(lengths.sum())
        self.count.bytes += nbytes

    def sync(self) -> None:
        for f in (self._tokens, self._lengths):
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        self._tokens.close()
        self._lengths.close()


def cut_to(path: Path, size: int) -> None:
    """``path`` cut to its first ``size`` bytes; left alone when it has as many. A complete
    language's file may be hard-linked into shards already written (read-only, sealed): a
    rerun after an interruption must neither fail on it nor touch it."""
    if path.stat().st_size != size:
        os.truncate(path, size)


def open_at(path: Path, size: int) -> Any:
    """``path`` opened for appending after its first ``size`` bytes (the rest is cut off)."""
    f = open(path, "ab")  # noqa: SIM115
    if f.tell() < size:
        f.close()
        raise DamagedWork(f"{path} is shorter than its recorded size: run again to start afresh")
    f.truncate(size)
    return f


def write_offsets(
    lengths: Path, path: Path, documents: int
) -> "np.memmap[Any, np.dtype[np.uint64]]":
    """The document offsets of the first ``documents`` lengths of file ``lengths`` (0, then
    each document's end: ``documents + 1``) written to ``path`` and mapped read-only. Memory
    stays bounded: ``OFFSETS_CHUNK`` lengths are summed at a time, the running total carried.
    Always written afresh (a file a killed run left may hold fewer documents or be cut short:
    it is never trusted), under a temporary name renamed over ``path``: the one it replaces
    may be hard-linked into shards already written (read-only, sealed), which keep it whole."""
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)  # a killed run's
    total = np.zeros(1, dtype=OFFSETS_DTYPE)
    with open(lengths, "rb") as source, open(partial, "wb") as target:
        target.write(total.data)
        left = documents
        while left:
            count = min(left, OFFSETS_CHUNK)
            data = source.read(count * LENGTH_DTYPE.itemsize)
            if len(data) < count * LENGTH_DTYPE.itemsize:
                raise DamagedWork(
                    f"{lengths} is shorter than its recorded size: run again to start afresh"
                )
            ends = np.cumsum(np.frombuffer(data, dtype=LENGTH_DTYPE), dtype=OFFSETS_DTYPE)
            ends += total[0]
            target.write(ends.data)  # not tofile: its errors lose the OS's reason (disk full)
            total[0] = ends[-1]
            left -= count
    os.replace(partial, path)
    return np.memmap(path, dtype=OFFSETS_DTYPE, mode="r", shape=(documents + 1,))


class ResumableDirectory:
    """A work directory that a killed run continues from: how far each source was read, how
    much each language holds, and the state file that records both. The files the counts
    describe are its caller's to write and to sync before each checkpoint (``data fetch``'s
    JSON lines), or :class:`WorkDirectory`'s (tokens)."""

    def __init__(
        self,
        out: Path,
        key: str,
        *,
        fresh: bool,
        inputs: dict[str, Any] | None = None,
        notes: dict[str, Any] | None = None,
    ) -> None:
        self.path = work_directory(out)
        self.key = key
        self.inputs = inputs or {}  # what the key is made of: says why a state is not resumed
        self.notes = notes or {}  # kept in the state for the next run, not part of the key
        state = None if fresh else saved_state(self.path)
        if state is not None:
            why = self._why_not_resumed(state) if state.get("key") != key else self._damage(state)
            if why:
                _say_discarded(self.path, why)
                state = None
        if state is None:
            shutil.rmtree(self.path, ignore_errors=True)
            state = {"key": key, "sources": {}, "languages": {}}
        self.resumed = bool(state["sources"])
        self.notes = {**state.get("notes", {}), **self.notes}  # a resumed run's, updated
        self.path.mkdir(parents=True, exist_ok=True)
        self.sources: dict[str, dict[str, Any]] = state["sources"]
        self.counts = {lang: LanguageCount(**c) for lang, c in state["languages"].items()}
        self._saved = time.monotonic()

    def _why_not_resumed(self, state: dict[str, Any]) -> str:
        before = state.get("inputs", {})
        changed = sorted(k for k in {*before, *self.inputs} if before.get(k) != self.inputs.get(k))
        return f"other {', '.join(changed)}" if changed else "made for other options"

    def _damage(self, state: dict[str, Any]) -> str | None:
        """Why the files of ``state`` cannot be continued (None: they can; none checked here)."""
        return None

    def position(self, source: str) -> Any:
        return self.sources.get(source, {}).get("position")

    def finished(self, source: str) -> bool:
        return bool(self.sources.get(source, {}).get("done"))

    def checkpoint(
        self, source: str, position: Any, *, done: bool = False, now: bool = False
    ) -> None:
        """Record ``position`` of ``source`` once the documents read before it are on disk;
        at most every few seconds unless ``done`` or ``now``."""
        if not (done or now) and time.monotonic() - self._saved < CHECKPOINT_SECONDS:
            return
        self._sync()
        self.sources[source] = {**self.sources.get(source, {}), "position": position, "done": done}
        self._write_state()

    def reopen(self, sources: Iterable[str]) -> None:
        """Mark ``sources`` as not read to their end, to be read on from their recorded
        positions, with the counts and notes as they are now: one state written for all."""
        self._sync()
        for source in sources:
            self.sources[source] = {**self.sources.get(source, {}), "done": False}
        self._write_state()

    def _write_state(self) -> None:
        state = {
            "key": self.key,
            "sources": self.sources,
            "languages": {lang: vars(c) for lang, c in sorted(self.counts.items())},
            "inputs": self.inputs,
            "notes": self.notes,
        }
        write_bytes_atomic(self.path / STATE_NAME, pretty_json(state))
        self._saved = time.monotonic()

    def _sync(self) -> None:
        """Put the files this directory writes itself on disk (none here)."""

    def release(self) -> None:
        """Close the files this directory writes itself (none here)."""

    def remove(self) -> None:
        self.release()
        shutil.rmtree(self.path, ignore_errors=True)

    @contextlib.contextmanager
    def removed_unless_resumable(self) -> Iterator[None]:
        """Remove the directory when the block ends, unless it ends by an interruption that the
        same command continues from (the source unreachable, Ctrl-C)."""
        try:
            yield
        except (SourceUnavailable, KeyboardInterrupt):
            self.release()  # see kept_on_error
            raise
        except BaseException:
            self.remove()
            raise
        self.remove()

    @contextlib.contextmanager
    def kept_on_error(self) -> Iterator[None]:
        """Remove the directory when the block ends. On an error keep it when it holds what a
        rerun continues from (documents recorded in its state) and the error is not one a rerun
        meets again, the error then saying so; Ctrl-C and an unreachable source keep it as
        they are. A rerun meets again what ``RepeatedByARerun`` and ``MetAgain`` say (a row of
        a dataset that cannot be read is read again where the work stopped): no work is kept
        for them, and they claim no continuation. ``ReusedByARerun`` keeps it for the rerun
        that it names."""
        try:
            yield
        except (SourceUnavailable, KeyboardInterrupt):
            # closed now, not when collected: a rerun in this process (a notebook's) would
            # otherwise get a killed run's buffered writes appended to the files it resumes
            self.release()
            if saved_state(self.path) is None:  # stopped before its first checkpoint:
                self.remove()  # nothing to continue from, and nothing left behind
            raise
        except (RepeatedByARerun, DamagedWork, MetAgain):
            self.remove()
            raise
        except ReusedByARerun as exc:
            if not _holds_documents(saved_state(self.path)):
                self.remove()
                raise
            self.release()
            raise UsageError(
                f"{exc}; what was read is kept in {self.path}: {exc.rerun} reuses it (delete "
                "that directory to start afresh)"
            ) from exc
        except (XelmError, OSError) as exc:
            if not _holds_documents(saved_state(self.path)):
                self.remove()
                raise
            self.release()
            raise _continued_by_a_rerun(exc, self.path) from exc
        except BaseException:
            self.remove()
            raise
        self.remove()


def saved_state(path: Path) -> dict[str, Any] | None:
    """The state recorded in work directory ``path``; None: none readable."""
    with contextlib.suppress(OSError, FormatError):
        return parse_json_object((path / STATE_NAME).read_bytes(), "preparation state")
    return None


def recorded_source(out: Path) -> dict[str, Any] | None:
    """The input's record (``SourcePlan.record``) in the state of ``out``'s work directory: a
    rerun reuses its file hashes instead of reading every file again."""
    source = (saved_state(work_directory(out)) or {}).get("notes", {}).get("source")
    return source if isinstance(source, dict) else None


def _say_discarded(path: Path, why: str) -> None:
    sys.stderr.write(
        f"xelm: warning: discarding the work of an earlier run in {path} ({why}): starting afresh\n"
    )


def _holds_documents(state: dict[str, Any] | None) -> bool:
    return any(count["documents"] for count in (state or {}).get("languages", {}).values())


def _continued_by_a_rerun(exc: XelmError | OSError, path: Path) -> XelmError:
    """``exc`` as an error (of the same exit status) that says the work read so far is kept."""
    kept = (
        f"; what was read so far is kept in {path}: the same command continues from there "
        "(delete that directory to start afresh)"
    )
    if isinstance(exc, XelmError):
        return type(exc)(f"{exc}{kept}")
    where = f": {exc.filename}" if exc.filename else ""
    return XelmError(f"{exc.strerror or exc}{where}{kept}")


class WorkDirectory(ResumableDirectory):
    """``data prepare``'s work directory: each language's tokens appended to its token and
    length files, in ``dtype_name``'s token type."""

    def __init__(
        self,
        out: Path,
        key: str,
        dtype_name: str,
        *,
        fresh: bool,
        inputs: dict[str, Any],
        source: dict[str, Any],
    ) -> None:
        self.dtype = TOKEN_DTYPES[dtype_name]
        super().__init__(out, key, fresh=fresh, inputs=inputs, notes={"source": source})
        self._appenders: dict[str, _Appender] = {}

    def _damage(self, state: dict[str, Any]) -> str | None:
        """A token or length file shorter than the state records (a full disk, a copy cut
        short, a file edited): its documents are lost."""
        for language, count in sorted(state["languages"].items()):
            recorded = {
                tokens_file(language): count["tokens"] * self.dtype.itemsize,
                lengths_file(language): count["documents"] * LENGTH_DTYPE.itemsize,
            }
            for name, size in recorded.items():
                path = self.path / name
                if (path.stat().st_size if path.exists() else 0) < size:
                    return f"{name} is shorter than its recorded size"
        return None

    def appender(self, language: str) -> _Appender:
        if language not in self._appenders:
            count = self.counts.setdefault(language, LanguageCount())
            self._appenders[language] = _Appender(self.path, language, self.dtype, count)
        return self._appenders[language]

    def _sync(self) -> None:
        for appender in self._appenders.values():
            appender.sync()

    def close(self) -> dict[str, NDArray[np.uint64]]:
        """Close every file; each language's document offsets (``documents + 1``), written to
        its offsets file here (:func:`write_offsets`) and mapped read-only from it. Every file is
        cut to what the state records: a language this run never appended to may still hold
        what a killed run wrote after its last checkpoint."""
        for appender in self._appenders.values():
            appender.close()
        offsets: dict[str, NDArray[np.uint64]] = {}
        for language, count in sorted(self.counts.items()):
            if count.documents == 0:
                continue
            cut_to(self.path / tokens_file(language), count.tokens * self.dtype.itemsize)
            cut_to(self.path / lengths_file(language), count.documents * LENGTH_DTYPE.itemsize)
            offsets[language] = write_offsets(
                self.path / lengths_file(language),
                self.path / offsets_file(language),
                count.documents,
            )
        return offsets

    def release(self) -> None:
        for appender in self._appenders.values():
            with contextlib.suppress(OSError):  # a full disk: what the state records is synced
                appender.close()
