"""Multiple-choice tasks for in-context evaluation: their files, splits and prompts.

Every task reads its files under a data root ``ROOT`` (``--data``), takes demonstrations from
one split and evaluates another, and turns an item into a :class:`Prompt` (a context and the
candidate continuations) under a protocol (:mod:`.protocols`; k-shot contexts in :mod:`.items`).

Each task class's docstring describes its layout: :class:`XnliTask`, :class:`XStoryClozeTask`,
:class:`Sib200Task`, :class:`XcopaTask`, :class:`BelebeleTask`, :class:`JsonlTask`. A root may
also be the folder that holds the task's folder (e.g. ``XNLI-1.0`` or ``sib200``). Languages are
the ones the files provide, normalised with :func:`normalize_language`.

A root may also be the task's dataset on the Hugging Face Hub (or a local copy laid out like
it): one configuration per language, read through xelm's source layer; each class's docstring
names its dataset. None of them is gated.
"""

from pathlib import Path

from xelm_cli.api import UsageError

from .base import Split, Task
from .belebele import BelebeleTask
from .items import (
    Example,
    Prompt,
    TaskData,
    build_context,
    check_shots,
    limit_sample,
    sample_demonstrations,
)
from .jsonl import JsonlTask
from .protocols import PROTOCOLS, check_protocol, choice_score, predict
from .sib200 import SIB200_CATEGORIES, Sib200Task
from .xcopa import FULL_STOPS, XCOPA_HARNESS, XCOPA_HARNESS_DEFAULT, XCOPA_PAPER, XcopaTask
from .xnli import XNLI_WORDS, XnliTask
from .xstorycloze import XStoryClozeTask

__all__ = [
    "FULL_STOPS",
    "PROTOCOLS",
    "SIB200_CATEGORIES",
    "TASKS",
    "XCOPA_HARNESS",
    "XCOPA_HARNESS_DEFAULT",
    "XCOPA_PAPER",
    "XNLI_WORDS",
    "BelebeleTask",
    "Example",
    "JsonlTask",
    "Prompt",
    "Sib200Task",
    "Split",
    "Task",
    "TaskData",
    "XStoryClozeTask",
    "XcopaTask",
    "XnliTask",
    "build_context",
    "check_protocol",
    "check_shots",
    "choice_score",
    "limit_sample",
    "open_task",
    "predict",
    "sample_demonstrations",
    "task_names",
]

TASKS: dict[str, type[Task]] = {
    "xnli": XnliTask,
    "xstorycloze": XStoryClozeTask,
    "sib200": Sib200Task,
    "xcopa": XcopaTask,
    "belebele": BelebeleTask,
    "jsonl": JsonlTask,
}


def task_names() -> list[str]:
    """The names of the tasks, in a fixed order."""
    return list(TASKS)


def open_task(name: str, root: str | Path) -> Task:
    """The task ``name`` reading its files under ``root``; UsageError for an unknown name or a
    root without the task's files."""
    key = name.strip().lower()
    if key not in TASKS:
        raise UsageError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return TASKS[key](root)
