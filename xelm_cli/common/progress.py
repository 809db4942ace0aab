"""Progress on stderr: bars on a terminal; in a log (stderr a file or a pipe: a batch job) one
plain line per unfinished task every ``XELM_PROGRESS_SECONDS`` seconds (default 60; 0: none),
so a long job's log shows it moving without filling with redraws."""

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from xelm_cli.common.units import duration

stderr_console = Console(stderr=True, soft_wrap=True)


@contextlib.contextmanager
def transformers_bars_off() -> Iterator[None]:
    """transformers' own tqdm bars ("Loading weights", "Writing model shards") off for the
    block, as they are under the command line, then back as they were."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


LOG_SECONDS_VARIABLE = "XELM_PROGRESS_SECONDS"
DEFAULT_LOG_SECONDS = 60.0


def stderr_progress(
    *columns: str | ProgressColumn, transient: bool = True, shown: bool = True
) -> Progress:
    """A rich ``Progress`` with ``columns`` on stderr, only when ``shown`` (e.g. on rank 0 of
    a distributed run): drawn on a terminal, else logged a line at a time (``ProgressLog``)."""
    if shown and sys.stderr.isatty():
        return Progress(*columns, console=stderr_console, transient=transient)
    interval = log_seconds() if shown else 0.0
    return ProgressLog(*columns, console=stderr_console, interval=interval)


def log_seconds() -> float:
    """Seconds between progress lines in a log: ``XELM_PROGRESS_SECONDS``, 0 for none."""
    text = os.environ.get(LOG_SECONDS_VARIABLE, "").strip()
    try:
        value = float(text) if text else DEFAULT_LOG_SECONDS
    except ValueError:
        value = DEFAULT_LOG_SECONDS
    return value if value > 0 else 0.0


# when the last progress line of this process was written: one clock for every task, so a
# command whose steps each take less than the interval still logs every interval
_last_line = [time.monotonic()]
_POLL_SECONDS = 1.0


class ProgressLog(Progress):
    """Progress for a log: no bar; every ``interval`` seconds (none when 0) of the process, one
    line per visible, unfinished task that moved since the line before: its description, its
    count (``1,234/5,000``), its other columns' text and its times (``2.5 min elapsed, 40 s
    left``)."""

    def __init__(self, *columns: str | ProgressColumn, interval: float, **kwargs: Any) -> None:
        super().__init__(*columns, disable=True, **kwargs)
        self.interval = interval
        self._stopping = threading.Event()
        self._writer: threading.Thread | None = None
        self._shown: dict[TaskID, float] = {}  # each task's count in its last line

    def start(self) -> None:
        super().start()
        if self.interval > 0 and self._writer is None:
            self._stopping.clear()
            self._writer = threading.Thread(target=self._write_lines, daemon=True)
            self._writer.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        super().stop()

    def _write_lines(self) -> None:
        while not self._stopping.wait(min(self.interval / 4, _POLL_SECONDS)):
            if time.monotonic() - _last_line[0] < self.interval:
                continue
            _last_line[0] = time.monotonic()
            for line in self.lines():
                self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def lines(self) -> list[str]:
        """The line of each visible task not yet finished that moved since its last line."""
        columns = [TextColumn(c) if isinstance(c, str) else c for c in self.columns]
        lines = []
        with self._lock:
            for task in self.tasks:
                if not task.visible or task.finished or self._shown.get(task.id) == task.completed:
                    continue
                self._shown[task.id] = task.completed
                parts: list[str] = []
                for part in filter(None, (_log_text(column, task) for column in columns)):
                    if part.endswith(" left") and parts and parts[-1].endswith(" elapsed"):
                        parts[-1] += f", {part}"  # 40 s elapsed, 2.5 min left
                    else:
                        parts.append(part)
                lines.append("  ".join(parts))
        return lines


def _log_text(column: ProgressColumn, task: Task) -> str:
    """What ``column`` shows of ``task`` in a log line: no bar, numbers with separators, times
    labelled (and left out while unknown)."""
    if isinstance(column, BarColumn):
        return ""
    if isinstance(column, MofNCompleteColumn):
        total = f"/{task.total:,.0f}" if task.total is not None else ""
        return f"{task.completed:,.0f}{total}"
    if isinstance(column, TimeElapsedColumn):
        return f"{duration(task.finished_time or task.elapsed or 0)} elapsed"
    if isinstance(column, TimeRemainingColumn):
        left = task.time_remaining
        return "" if left is None else f"{duration(left)} left"
    rendered = column(task)
    return rendered.plain.strip() if isinstance(rendered, Text) else ""


@contextlib.contextmanager
def _bar(
    description: str, total: int | None, columns: list[ProgressColumn]
) -> Iterator[Callable[[int], None]]:
    with stderr_progress(*columns) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def byte_progress(
    description: str, total: int | None
) -> contextlib.AbstractContextManager[Callable[[int], None]]:
    """A bar of ``total`` bytes; yields ``advance(n_bytes)``."""
    columns: list[ProgressColumn] = [
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    ]
    return _bar(description, total, columns)


def count_progress(
    description: str, total: int, unit: str
) -> contextlib.AbstractContextManager[Callable[[int], None]]:
    """A bar of ``total`` items (``unit``: what they are) with the time taken and the time
    left; yields ``advance(n)``."""
    columns: list[ProgressColumn] = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    return _bar(description, total, columns)


class LanguageProgress:
    """One row per language while preparing data: tokens read (of the read limit, where there
    is one), documents, megabytes, tokens per second and the time left."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, language: str, count: Any, limit: int | None) -> None:
        if language not in self._tasks:
            self._tasks[language] = self._progress.add_task(
                language, total=limit, documents=0, megabytes=0.0
            )
        self._progress.update(
            self._tasks[language],
            completed=count.tokens,
            documents=count.documents,
            megabytes=count.bytes / 1e6,
            **({"total": count.tokens} if count.full else {}),  # stopped at its limit: done
        )


@contextlib.contextmanager
def language_progress() -> Iterator[LanguageProgress]:
    """Rows of ``LanguageProgress`` on stderr (terminal only)."""
    columns: list[ProgressColumn] = [
        TextColumn("{task.description:>5}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TextColumn("tokens  {task.fields[documents]:,} docs  {task.fields[megabytes]:,.1f} MB"),
        _TokenRate(),
        TimeRemainingColumn(),
    ]
    with stderr_progress(*columns, transient=False) as progress:
        yield LanguageProgress(progress)


class _TokenRate(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} tok/s")
