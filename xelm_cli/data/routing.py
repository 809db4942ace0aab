"""Where ``xelm data prepare`` puts each document it reads: under its language (every document,
or with ``--expert I`` only those an allocation's assigner sends to expert I), or with
``--expert all`` under its language *and* expert, so that one reading of the corpus fills the
work files of every expert (``LANG@I``: a *key*; each expert's shards are then finished from
its own keys)."""

from collections.abc import Sequence
from dataclasses import dataclass

from xelm_cli.cluster.assigning import ExpertDocuments, assigned_experts

SEPARATOR = "@"  # in no language code (BCP 47 subtags are letters, digits and hyphens)


@dataclass(frozen=True)
class Routing:
    """The experts whose documents are kept (none: every document, under its language), and
    whether each has keys of its own (``split``: ``--expert all``)."""

    experts: tuple[ExpertDocuments, ...] = ()
    split: bool = False

    @property
    def assigns(self) -> bool:
        return bool(self.experts)

    @property
    def indexes(self) -> list[int | None]:
        """The experts with keys of their own; [None] when the keys are the languages."""
        return [index for index, _ in self.members()]

    def members(self) -> list[tuple[int | None, ExpertDocuments | None]]:
        """Each set of keys (``indexes``) with the expert whose documents it holds (None:
        every document)."""
        if self.split:
            return [(expert.index, expert) for expert in self.experts]
        return [(None, self.experts[0] if self.experts else None)]

    def key(self, language: str, index: int | None) -> str:
        """Where ``language``'s documents of expert ``index`` go (None: the language itself)."""
        return language if index is None else f"{language}{SEPARATOR}{index}"

    def keys(self, language: str) -> list[str]:
        return [self.key(language, index) for index in self.indexes]

    def language(self, key: str) -> str:
        return key.split(SEPARATOR, 1)[0]

    def of_expert(self, keys: Sequence[str], index: int | None) -> dict[str, str]:
        """The language of each of ``keys`` that belongs to expert ``index``: {language: key}."""
        return {self.language(key): key for key in keys if self.index(key) == index}

    def index(self, key: str) -> int | None:
        _, separator, index = key.partition(SEPARATOR)
        return int(index) if separator else None

    def labels(self, texts: Sequence[str], languages: Sequence[str]) -> list[str | None]:
        """Each document's key (None: none of the kept experts gets it)."""
        if not self.experts:
            return list(languages)
        experts = assigned_experts(self.experts[0].assigner, texts, languages)
        if not self.split:
            mine = self.experts[0].index
            return [lang if e == mine else None for lang, e in zip(languages, experts, strict=True)]
        return [self.key(lang, int(e)) for lang, e in zip(languages, experts, strict=True)]


__all__ = ["SEPARATOR", "Routing"]
