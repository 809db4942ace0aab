"""XNLI: natural language inference (entailment, neutral, contradiction)."""

from pathlib import Path
from typing import Any, ClassVar

from xelm_cli.api import EvalSet, FormatError

from .base import Split, Task
from .files import file_language, read_tsv, require_file, text_field
from .items import Example, Prompt

# XNLI label words of lm-evaluation-harness for its 15 XNLI languages: "right", then the words
# for entailment, neutral and contradiction ("Yes", "Also", "No"). Any other language (an XNLI
# file may carry more) falls back to the English words.
XNLI_WORDS: dict[str, tuple[str, str, str, str]] = {
    "ar": ("صحيح", "نعم", "لذا", "رقم"),
    "bg": ("правилно", "да", "така", "не"),
    "de": ("richtig", "Ja", "Auch", "Nein"),
    "el": ("σωστός", "Ναί", "Έτσι", "όχι"),
    "en": ("right", "Yes", "Also", "No"),
    "es": ("correcto", "Sí", "Asi que", "No"),
    "fr": ("correct", "Oui", "Aussi", "Non"),
    "hi": ("सही", "हाँ", "इसलिए", "नहीं"),
    "ru": ("правильно", "Да", "Так", "Нет"),
    "sw": ("sahihi", "Ndiyo", "Hivyo", "Hapana"),
    "th": ("ถูกต้อง", "ใช่", "ดังนั้น", "ไม่"),
    "tr": ("doğru", "Evet", "Böylece", "Hayır"),  # noqa: RUF001 (Turkish dotless i)
    "ur": ("صحیح", "جی ہاں", "اس لئے", "نہیں"),
    "vi": ("đúng", "Vâng", "Vì vậy", "Không"),
    "zh": ("正确", "是的", "所以", "不是的"),
}


class XnliTask(Task):
    """The XNLI-1.0 release, ``ROOT/xnli.dev.tsv`` (demonstrations) and ``ROOT/xnli.test.tsv``
    (evaluated). Tab-separated, a header row, no quoting; the columns used are ``language``,
    ``gold_label`` (entailment, neutral, contradiction), ``sentence1`` (premise) and
    ``sentence2`` (hypothesis). One file holds every language: the values of the ``language``
    column. On the Hub: ``facebook/xnli`` (``ar``..., test and validation; premise, hypothesis,
    label 0-2)."""

    name = "xnli"
    layout = "xnli.dev.tsv and xnli.test.tsv (the XNLI-1.0 release)"
    folders = ("XNLI-1.0",)
    FILES: ClassVar[dict[str, str]] = {"demo": "xnli.dev.tsv", "eval": "xnli.test.tsv"}
    LABELS = ("entailment", "neutral", "contradiction")
    COLUMNS = ("language", "gold_label", "sentence1", "sentence2")
    hub = EvalSet(
        "facebook/xnli", "XNLI", "{lang}", ("test", "validation"), "premise", "CC BY-NC 4.0",
        columns=("hypothesis", "label"),
    )  # fmt: skip

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self._by_split: dict[str, dict[str, list[Example]]] = {}

    def _holds_data(self, root: Path) -> bool:
        return (root / self.FILES["eval"]).is_file()

    def _grouped(self, split: Split) -> dict[str, list[Example]]:
        if split not in self._by_split:
            path = self.root / self.FILES[split]
            require_file(path, self.name)
            grouped: dict[str, list[Example]] = {}
            for line, row in read_tsv(path, self.COLUMNS, quoted=False):
                where = f"{path}:{line}"
                gold = row["gold_label"].strip()
                if gold not in self.LABELS:
                    raise FormatError(
                        f"{where}: gold_label {gold!r} is not one of {', '.join(self.LABELS)}"
                    )
                premise = text_field(row, "sentence1", where)
                hypothesis = text_field(row, "sentence2", where)
                fields = {"premise": premise, "hypothesis": hypothesis}
                example = Example(fields, self.LABELS.index(gold), where)
                grouped.setdefault(row["language"].strip(), []).append(example)
            self._by_split[split] = grouped
        return self._by_split[split]

    def _scan_languages(self) -> dict[str, str]:
        grouped = self._grouped("eval")
        return {file_language(raw, items[0].where): raw for raw, items in grouped.items()}

    def _read_files(self, raw: str, split: Split) -> tuple[list[Example], str]:
        return self._grouped(split).get(raw, []), str(self.root / self.FILES[split])

    def hub_example(self, row: dict[str, Any], where: str) -> Example:
        label = row.get("label")
        if not isinstance(label, int) or not 0 <= label < len(self.LABELS):
            raise FormatError(f"{where}: 'label' must be 0, 1 or 2 ({', '.join(self.LABELS)})")
        fields = {"premise": text_field(row, "premise", where)}
        fields["hypothesis"] = text_field(row, "hypothesis", where)
        return Example(fields, label, where)

    def prompt(self, example: Example, protocol: str, language: str) -> Prompt:
        words = XNLI_WORDS["en"]
        if protocol == "harness":
            words = XNLI_WORDS.get(language.split("-")[0], XNLI_WORDS["en"])
        right, *labels = words
        hypothesis = example.fields["hypothesis"]
        return Prompt(
            f"{example.fields['premise']}, {right}? ",
            tuple(f"{word}, {hypothesis}" for word in labels),
            example.label,
        )
