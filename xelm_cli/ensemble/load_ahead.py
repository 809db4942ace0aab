"""Reading the next expert's weights on a background thread while the current one scores.

A resident ensemble (on a GPU that holds every expert) loads each expert once, one after
another. Most of a load is reading, checking and converting its tensors, which runs outside
the GIL and touches no process-wide torch state, so it can run beside the current expert's
scoring; the model itself is built on the scoring thread, because transformers sets the
process-wide default dtype while it builds one.
"""

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Generic, TypeVar

Read = TypeVar("Read")

THREAD_NAME = "xelm-load-ahead"


class LoadAhead(Generic[Read]):
    """``read(index)`` of each index of ``order``, taken in that order: taking one starts the
    next one's read on a background thread, so at most one read runs ahead of the caller. A
    background read's exception is raised, unchanged, by the ``take`` of its index. Leaving
    the ``with`` block waits for an unfinished read and drops it: no thread outlives it."""

    def __init__(self, order: Sequence[int], read: Callable[[int], Read]) -> None:
        self._order = list(order)
        self._read = read
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
        self._pending: tuple[int, Future[Read]] | None = None

    def take(self, index: int) -> Read:
        """What ``read(index)`` returned (waiting for its background read, or reading here
        when none was started), the read of the index after it in ``order`` started."""
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == index:
            value = pending[1].result()
        else:
            if pending is not None:  # taken out of order: that read is not wanted now
                pending[1].cancel()
            value = self._read(index)
        position = self._order.index(index) + 1 if index in self._order else len(self._order)
        if position < len(self._order):
            upcoming = self._order[position]
            self._pending = (upcoming, self._pool.submit(self._read, upcoming))
        return value

    def close(self) -> None:
        self._pending = None
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "LoadAhead[Read]":
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
