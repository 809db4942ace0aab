"""SIB-200: the topic of a sentence."""

from typing import Any, ClassVar

from xelm_cli.api import EvalSet, FormatError

from .base import Split
from .files import read_tsv, text_field
from .folders import FolderPerLanguage
from .items import Example, Prompt

SIB200_CATEGORIES = (
    "science/technology",
    "travel",
    "politics",
    "sports",
    "health",
    "entertainment",
    "geography",
)


class Sib200Task(FolderPerLanguage):
    """``ROOT/{lang}/train.tsv`` (demonstrations) and ``ROOT/{lang}/test.tsv`` (evaluated);
    tab-separated with CSV quoting, columns ``index_id``, ``category``, ``text``. On the Hub:
    ``Davlan/sib200`` (configurations ``arb_Arab``..., test evaluated, train demonstrations)."""

    name = "sib200"
    layout = "{lang}/train.tsv and {lang}/test.tsv (SIB-200)"
    folders = ("sib200", "tasks/sib200")
    FILES: ClassVar[dict[str, tuple[str, ...]]] = {"demo": ("train.tsv",), "eval": ("test.tsv",)}
    hub = EvalSet(
        "Davlan/sib200", "SIB-200", "{flores}", ("test", "train"), "text", "CC BY-SA 4.0",
        columns=("category",),
    )  # fmt: skip

    def _read_files(self, raw: str, split: Split) -> tuple[list[Example], str]:
        path = self._split_file(raw, split)
        rows = read_tsv(path, ("category", "text"), quoted=True)
        return [self.example(row, f"{path}:{line}") for line, row in rows], str(path)

    def example(self, row: dict[str, Any], where: str) -> Example:
        category = str(row.get("category", "")).strip()
        if category not in SIB200_CATEGORIES:
            raise FormatError(
                f"{where}: category {category!r} is not one of {', '.join(SIB200_CATEGORIES)}"
            )
        fields = {"text": text_field(row, "text", where)}
        return Example(fields, SIB200_CATEGORIES.index(category), where)

    def prompt(self, example: Example, protocol: str, language: str) -> Prompt:
        return Prompt(
            f"{example.fields['text']}\nTopic:",
            tuple(f" {category}" for category in SIB200_CATEGORIES),
            example.label,
        )
