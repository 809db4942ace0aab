"""Progress bars on stderr (shown only on a terminal, so logs and pipes stay clean)."""

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

stderr_console = Console(stderr=True, soft_wrap=True)


@contextlib.contextmanager
def _bar(
    description: str, total: int | None, columns: list[ProgressColumn]
) -> Iterator[Callable[[int], None]]:
    with Progress(
        *columns,
        console=stderr_console,
        transient=True,
        disable=not sys.stderr.isatty(),
    ) as progress:
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


def document_progress(description: str) -> contextlib.AbstractContextManager[Callable[[int], None]]:
    """A counter of documents of unknown total; yields ``advance(n_documents)``."""
    columns: list[ProgressColumn] = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        MofNCompleteColumn(),
        TextColumn("documents"),
        TimeElapsedColumn(),
    ]
    return _bar(description, None, columns)
