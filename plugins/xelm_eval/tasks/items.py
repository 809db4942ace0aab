"""Task items (an example as read, a prompt as formatted, one language's data) and the
demonstrations of a k-shot prompt.

A k-shot context is ``demo_1 + "\\n\\n" + ... + demo_k + "\\n\\n" + context``, each demonstration
being a context followed by its correct candidate.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xelm_cli.api import UsageError


@dataclass(frozen=True)
class Example:
    """One task item as read: its fields, the index of the correct candidate, and where it
    came from (``path:line``)."""

    fields: dict[str, Any]
    label: int
    where: str


@dataclass(frozen=True)
class Prompt:
    """An item formatted under a protocol: choice ``i`` is scored as the continuation of
    ``context``; ``label`` indexes the correct one."""

    context: str
    choices: tuple[str, ...]
    label: int

    @property
    def demonstration(self) -> str:
        """The item as a demonstration: its context followed by its correct candidate."""
        return self.context + self.choices[self.label]


@dataclass(frozen=True)
class TaskData:
    """One language of a task, formatted: the evaluated prompts and the demonstration pool.

    With ``exclude_self`` the pool is the evaluated file itself (``demos[i]`` is
    ``examples[i]``), and example ``i`` never gets itself as a demonstration.
    """

    task: str
    language: str
    examples: tuple[Prompt, ...]
    demos: tuple[Prompt, ...]
    exclude_self: bool = False
    source: str = ""
    demo_source: str = ""

    @property
    def pool_size(self) -> int:
        """Demonstrations available to each evaluated example."""
        return max(len(self.demos) - int(self.exclude_self), 0)


def check_shots(data: TaskData, shots: int) -> None:
    """A one-line UsageError when the demonstration pool is smaller than ``shots``."""
    if shots > data.pool_size:
        where = f" ({data.demo_source})" if data.demo_source else ""
        raise UsageError(
            f"{data.task} {data.language}: {shots} shots asked but the demonstration pool "
            f"holds {data.pool_size} examples{where}"
        )


def limit_sample(population: int, size: int) -> np.ndarray:
    """The examples ``--limit`` keeps: a sample fixed once and for all (seed 0)."""
    return np.random.default_rng(0).choice(population, size=size, replace=False)


def sample_demonstrations(
    data: TaskData, index: int, shots: int, rng: np.random.Generator
) -> list[Prompt]:
    """``shots`` demonstrations for evaluated example ``index``, drawn without replacement
    from the pool with ``rng`` (in the order drawn)."""
    if shots <= 0:
        return []
    check_shots(data, shots)
    if data.exclude_self:
        picks = rng.choice(len(data.demos) - 1, size=shots, replace=False)
        picks = picks + (picks >= index)  # skip the example itself
    else:
        picks = rng.choice(len(data.demos), size=shots, replace=False)
    return [data.demos[int(i)] for i in picks]


def build_context(demos: Sequence[Prompt], context: str) -> str:
    """The demonstrations (context + correct candidate), each followed by a blank line, then
    ``context``; just ``context`` without demonstrations."""
    return "".join(demo.demonstration + "\n\n" for demo in demos) + context
