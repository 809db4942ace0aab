"""XStoryCloze: the right ending of a four-sentence story."""

from pathlib import Path
from typing import Any, ClassVar

from xelm_cli.api import EvalSet, FormatError

from .base import Split, Task
from .files import file_language, read_tsv, require_file, text_field
from .items import Example, Prompt


class XStoryClozeTask(Task):
    """The XStoryCloze release, ``ROOT/spring2016.val.{lang}.tsv.split_20_80_train.tsv``
    (demonstrations) and ``..._eval.tsv`` (evaluated). Tab-separated, a header row, columns
    ``InputStoryid``, ``InputSentence1..4``, ``RandomFifthSentenceQuiz1..2``,
    ``AnswerRightEnding`` (1 or 2). On the Hub: ``juletxara/xstory_cloze`` (``ru``..., eval and
    train)."""

    name = "xstorycloze"
    layout = "spring2016.val.{lang}.tsv.split_20_80_{train,eval}.tsv (the XStoryCloze release)"
    PREFIX = "spring2016.val."
    SUFFIXES: ClassVar[dict[str, str]] = {
        "demo": ".tsv.split_20_80_train.tsv",
        "eval": ".tsv.split_20_80_eval.tsv",
    }
    SENTENCES = ("InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4")
    ENDINGS = ("RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2")
    hub = EvalSet(
        "juletxara/xstory_cloze", "XStoryCloze", "{lang}", ("eval", "train"),
        "input_sentence_1", "CC BY-SA 4.0",
        columns=(*(f"input_sentence_{i}" for i in range(2, 5)), "sentence_quiz1",
                 "sentence_quiz2", "answer_right_ending"),
    )  # fmt: skip
    HUB_SENTENCES = tuple(f"input_sentence_{i}" for i in range(1, 5))
    HUB_ENDINGS = ("sentence_quiz1", "sentence_quiz2")

    def _eval_files(self, root: Path) -> list[Path]:
        return sorted(root.glob(f"{self.PREFIX}*{self.SUFFIXES['eval']}"))

    def _holds_data(self, root: Path) -> bool:
        return bool(self._eval_files(root))

    def _scan_languages(self) -> dict[str, str]:
        languages: dict[str, str] = {}
        for path in self._eval_files(self.root):
            raw = path.name[len(self.PREFIX) : -len(self.SUFFIXES["eval"])]
            languages.setdefault(file_language(raw, str(path)), raw)
        return languages

    def _read_files(self, raw: str, split: Split) -> tuple[list[Example], str]:
        path = self.root / f"{self.PREFIX}{raw}{self.SUFFIXES[split]}"
        require_file(path, self.name)
        columns = (*self.SENTENCES, *self.ENDINGS, "AnswerRightEnding")
        examples = []
        for line, row in read_tsv(path, columns, quoted=False):
            where = f"{path}:{line}"
            answer = row["AnswerRightEnding"].strip()
            if answer not in ("1", "2"):
                raise FormatError(f"{where}: AnswerRightEnding {answer!r} is not 1 or 2")
            fields = {
                "sentences": [text_field(row, key, where) for key in self.SENTENCES],
                "endings": [text_field(row, key, where) for key in self.ENDINGS],
            }
            examples.append(Example(fields, int(answer) - 1, where))
        return examples, str(path)

    def hub_example(self, row: dict[str, Any], where: str) -> Example:
        answer = row.get("answer_right_ending")
        if answer not in (1, 2) or isinstance(answer, bool):
            raise FormatError(f"{where}: 'answer_right_ending' must be 1 or 2")
        fields = {
            "sentences": [text_field(row, key, where) for key in self.HUB_SENTENCES],
            "endings": [text_field(row, key, where) for key in self.HUB_ENDINGS],
        }
        return Example(fields, int(answer) - 1, where)

    def prompt(self, example: Example, protocol: str, language: str) -> Prompt:
        return Prompt(
            " ".join(example.fields["sentences"]),
            tuple(" " + ending for ending in example.fields["endings"]),
            example.label,
        )
