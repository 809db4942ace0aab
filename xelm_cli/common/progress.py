"""Progress bars on stderr (shown only on a terminal, so logs and pipes stay clean)."""

import contextlib
import sys
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


def stderr_progress(
    *columns: str | ProgressColumn, transient: bool = True, shown: bool = True
) -> Progress:
    """A rich ``Progress`` with ``columns`` on stderr, drawn only on a terminal (logs and pipes
    stay clean) and only when ``shown`` (e.g. on rank 0 of a distributed run)."""
    return Progress(
        *columns,
        console=stderr_console,
        transient=transient,
        disable=not (shown and sys.stderr.isatty()),
    )


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
