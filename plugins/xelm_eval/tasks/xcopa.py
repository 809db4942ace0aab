"""XCOPA: the cause or the effect of a premise."""

from typing import Any, ClassVar

from xelm_cli.api import EvalSet, FormatError

from .base import Split
from .files import read_jsonl, text_field
from .folders import FolderPerLanguage
from .items import Example, Prompt

# XCOPA connectives (cause, effect). The paper protocol uses "because" and "so"; the harness
# uses its translations for the XCOPA languages and "because"/"therefore" (its English COPA
# words) for any other language.
XCOPA_PAPER = ("because", "so")
XCOPA_HARNESS_DEFAULT = ("because", "therefore")
XCOPA_HARNESS: dict[str, tuple[str, str]] = {
    "et": ("sest", "seetõttu"),
    "ht": ("poukisa", "donk sa"),
    "id": ("karena", "maka"),
    "it": ("perché", "quindi"),
    "qu": ("imataq", "chaymi"),
    "sw": ("kwa sababu", "kwa hiyo"),
    "ta": ("காரணமாக", "எனவே"),
    "th": ("เพราะ", "ดังนั้น"),
    "tr": ("çünkü", "bu yüzden"),
    "vi": ("bởi vì", "vì vậy"),
    "zh": ("因为", "所以"),
}
# Sentence-final full stops removed from an XCOPA premise before its connective: Latin,
# ideographic, fullwidth, Devanagari danda, Arabic (Urdu).
FULL_STOPS = ".\u3002\uff0e\u0964\u06d4"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


class XcopaTask(FolderPerLanguage):
    """``ROOT/{lang}/val.jsonl`` (demonstrations) and ``ROOT/{lang}/test.jsonl`` (evaluated), or
    the release's ``val.{lang}.jsonl`` and ``test.{lang}.jsonl``; JSON lines with ``premise``,
    ``choice1``, ``choice2``, ``question`` (cause or effect), ``label`` (0, 1). On the Hub:
    ``cambridgeltl/xcopa`` (``tr``..., test and validation)."""

    name = "xcopa"
    layout = "{lang}/val.jsonl and {lang}/test.jsonl (XCOPA)"
    hub = EvalSet(
        "cambridgeltl/xcopa", "XCOPA", "{lang}", ("test", "validation"), "premise", "CC BY 4.0",
        columns=("choice1", "choice2", "question", "label"),
    )  # fmt: skip
    folders = ("xcopa", "tasks/xcopa")
    FILES: ClassVar[dict[str, tuple[str, ...]]] = {
        "demo": ("val.jsonl", "val.{lang}.jsonl"),
        "eval": ("test.jsonl", "test.{lang}.jsonl"),
    }

    def _read_files(self, raw: str, split: Split) -> tuple[list[Example], str]:
        path = self._split_file(raw, split)
        records = read_jsonl(path)
        return [self.example(r, f"{path}:{line}") for line, r in records], str(path)

    def example(self, row: dict[str, Any], where: str) -> Example:
        question = row.get("question")
        if question not in ("cause", "effect"):
            raise FormatError(f"{where}: 'question' must be 'cause' or 'effect'")
        label = row.get("label")
        if label not in (0, 1) or isinstance(label, bool):
            raise FormatError(f"{where}: 'label' must be 0 or 1")
        fields = {
            "premise": text_field(row, "premise", where),
            "choices": [text_field(row, key, where) for key in ("choice1", "choice2")],
            "question": question,
        }
        return Example(fields, int(label), where)

    def prompt(self, example: Example, protocol: str, language: str) -> Prompt:
        premise = example.fields["premise"]
        if premise[-1] in FULL_STOPS:
            premise = premise[:-1]
        words = XCOPA_PAPER
        if protocol == "harness":
            words = XCOPA_HARNESS.get(language.split("-")[0], XCOPA_HARNESS_DEFAULT)
        connective = words[0] if example.fields["question"] == "cause" else words[1]
        return Prompt(
            f"{premise} {connective}",
            tuple(" " + _lower_first(choice) for choice in example.fields["choices"]),
            example.label,
        )
