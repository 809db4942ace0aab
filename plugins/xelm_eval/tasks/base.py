"""The task base class: finding a task's files (or its Hub dataset), its languages, and loading
one language as prompts with its demonstration pool."""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from xelm_cli.api import (
    EvalSet,
    FormatError,
    UsageError,
    dataset_configs,
    is_hub_dataset,
    normalize_language,
)

from .items import Example, Prompt, TaskData, limit_sample
from .protocols import check_protocol

Split = Literal["demo", "eval"]


class Task(ABC):
    """A multiple-choice task read from a data root: the files each subclass's docstring
    describes, found in the root or in one of its ``folders``, or the ``hub`` dataset (one
    configuration per language) when the root names one."""

    name: ClassVar[str]
    layout: ClassVar[str]  # the expected files, for error messages
    folders: ClassVar[tuple[str, ...]] = ()  # subfolders of a root that may hold the files
    # The task on the Hub: a configuration per language; splits (evaluated, demonstrations),
    # one split when the evaluated examples are also the demonstration pool.
    hub: ClassVar[EvalSet | None] = None

    def __init__(self, root: str | Path) -> None:
        self.dataset: str | None = None  # a Hub id or a local Hub-layout copy
        if self.hub is not None and is_hub_dataset(str(root)):
            self.dataset = str(root)
            self.evalset = replace(self.hub, dataset=self.dataset)
            self.root = Path(self.dataset)
        else:
            self.root = self._resolve(Path(root))
        self._languages: dict[str, str] | None = None
        self._hub_configs: list[str] | None = None

    def _resolve(self, root: Path) -> Path:
        if not root.is_dir():
            what = "is not a directory" if root.exists() else "does not exist"
            raise UsageError(f"{self.name} data root {root} {what}")
        for candidate in (root, *(root / folder for folder in self.folders)):
            if candidate.is_dir() and self._holds_data(candidate):
                return candidate
        raise UsageError(f"no {self.name} data under {root}: expected {self.layout}")

    @abstractmethod
    def _holds_data(self, root: Path) -> bool:
        """Whether ``root`` has the task's evaluated files."""

    @abstractmethod
    def _scan_languages(self) -> dict[str, str]:
        """{normalised code: the code as the files spell it} for every evaluated language."""

    @abstractmethod
    def _read_files(self, raw: str, split: Split) -> tuple[list[Example], str]:
        """The examples of one language (as the files spell it) and split, and their file."""

    def read(self, raw: str, split: Split) -> tuple[list[Example], str]:
        """The examples of one language (as the data spells it: a folder, a configuration)
        and split, and where they were read."""
        if self.dataset is None:
            return self._read_files(raw, split)
        split_name = self._hub_split(split)
        where = f"{self.dataset} [{raw}/{split_name}]"
        rows = enumerate(self.evalset.rows(raw, split_name), 1)
        return [self.hub_example(row, f"{where} row {i}") for i, row in rows], where

    def _hub_split(self, split: Split) -> str:
        assert self.hub is not None
        splits = self.hub.splits
        return splits[0] if split == "eval" or len(splits) == 1 else splits[1]

    def example(self, row: dict[str, Any], where: str) -> Example:
        """An example from one record (a task whose Hub rows have its files' columns)."""
        raise NotImplementedError(f"{self.name} reads no records")

    def hub_example(self, row: dict[str, Any], where: str) -> Example:
        """An example from a row of the Hub dataset."""
        return self.example(row, where)

    @abstractmethod
    def prompt(self, example: Example, protocol: str, language: str) -> Prompt:
        """Format ``example`` of ``language`` (normalised) under ``protocol``."""

    def shares_demos(self, raw: str) -> bool:
        """Whether the demonstrations come from the evaluated file itself."""
        return self.dataset is not None and self.hub is not None and len(self.hub.splits) == 1

    def languages(self) -> list[str]:
        """The task's languages (normalised codes), sorted."""
        if self._languages is None:
            self._languages = self._scan_languages() if self.dataset is None else self._configs()
        return sorted(self._languages)

    def _configs(self) -> dict[str, str]:
        return self.evalset.languages(self._listed_configs())

    def _listed_configs(self) -> list[str]:
        """The Hub dataset's configurations, listed once per task (a listing is a Hub
        request): the default languages and their check both read them."""
        if self._hub_configs is None:
            self._hub_configs = dataset_configs(self.evalset.dataset)
        return self._hub_configs

    def check_languages(self, languages: Sequence[str]) -> None:
        """One line naming the first of ``languages`` the data lacks and those it has."""
        if self.dataset is not None:
            self.evalset.check_languages(languages, self._listed_configs())
        for language in languages:
            self.raw_language(language)

    def raw_language(self, language: str) -> str:
        """The data's spelling of ``language``; UsageError listing the available ones. On the
        Hub, its configuration (a missing one is reported by ``check_languages``)."""
        code = normalize_language(language)
        if self.dataset is not None:
            assert self.hub is not None
            return self.hub.config_for(code)
        self.languages()
        assert self._languages is not None
        if code not in self._languages:
            available = ", ".join(sorted(self._languages)) or "none"
            raise UsageError(
                f"no {self.name} data for language {code!r} under {self.root} "
                f"(available: {available})"
            )
        return self._languages[code]

    def load(
        self, language: str, protocol: str, *, limit: int | None = None, demos: bool = True
    ) -> TaskData:
        """One language formatted under ``protocol``: its evaluated examples and (with
        ``demos``) the demonstration pool. ``limit`` keeps a fixed random sample of that many
        examples, in file order (the same for every run and seed; task files are often sorted
        by label, so the first N would all share one)."""
        check_protocol(protocol)
        code = normalize_language(language)
        raw = self.raw_language(code)
        examples, source = self.read(raw, "eval")
        if not examples:
            raise FormatError(f"{source}: no {self.name} examples for language {code!r}")
        prompts = [self.prompt(example, protocol, code) for example in examples]
        if limit is not None and limit < len(prompts):
            chosen = sorted(int(i) for i in limit_sample(len(prompts), limit))
            kept = set(chosen)
            order = [*chosen, *(i for i in range(len(prompts)) if i not in kept)]
            prompts = [prompts[i] for i in order]  # a shared pool keeps demos[i] == examples[i]
        shared = self.shares_demos(raw)
        pool: list[Prompt] = []
        demo_source = ""
        if shared:
            pool, demo_source = prompts, source
        elif demos:
            demo_examples, demo_source = self.read(raw, "demo")
            pool = [self.prompt(example, protocol, code) for example in demo_examples]
        evaluated = prompts if limit is None else prompts[:limit]
        return TaskData(self.name, code, tuple(evaluated), tuple(pool), shared, source, demo_source)
