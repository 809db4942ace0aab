"""Belebele: reading comprehension, four answers to a question on a passage."""

from pathlib import Path
from typing import Any

from xelm_cli.api import EvalSet, FormatError, language_of_config

from .base import Split, Task
from .files import read_jsonl, require_file, text_field
from .items import Example, Prompt


class BelebeleTask(Task):
    """The Belebele release, ``ROOT/{flores}.jsonl`` (``arb_Arab.jsonl``), one file per language
    that is both evaluated and the demonstration pool (an example is never its own
    demonstration); JSON lines with ``flores_passage``, ``question``, ``mc_answer1..4`` and
    ``correct_answer_num`` (1-4). Prompted as lm-evaluation-harness does: ``P: passage``,
    ``Q: question``, ``A: ...`` to ``D: ...``, ``Answer:``, the candidates being `` A``..`` D``.
    On the Hub: ``facebook/belebele`` (``arb_Arab``..., test, which is also the demonstration
    pool)."""

    name = "belebele"
    layout = "{flores}.jsonl files (the Belebele release: arb_Arab.jsonl, ...)"
    folders = ("Belebele", "belebele")
    hub = EvalSet(
        "facebook/belebele", "Belebele", "{flores}", ("test",), "flores_passage", "CC BY-SA 4.0",
        columns=("question", "mc_answer1", "mc_answer2", "mc_answer3", "mc_answer4",
                 "correct_answer_num"),
    )  # fmt: skip
    ANSWERS = ("mc_answer1", "mc_answer2", "mc_answer3", "mc_answer4")
    LETTERS = ("A", "B", "C", "D")

    @staticmethod
    def _files(root: Path) -> list[Path]:
        return sorted(p for p in root.glob("*.jsonl") if language_of_config(p.stem))

    def _holds_data(self, root: Path) -> bool:
        return bool(self._files(root))

    def _scan_languages(self) -> dict[str, str]:
        languages: dict[str, str] = {}
        for path in self._files(self.root):
            languages.setdefault(str(language_of_config(path.stem)), path.stem)
        return languages

    def shares_demos(self, raw: str) -> bool:
        return True  # one split: demonstrations are other items of the evaluated file

    def _read_files(self, raw: str, split: Split) -> tuple[list[Example], str]:
        path = self.root / f"{raw}.jsonl"
        require_file(path, self.name)
        return [self.example(r, f"{path}:{line}") for line, r in read_jsonl(path)], str(path)

    def example(self, row: dict[str, Any], where: str) -> Example:
        answer = str(row.get("correct_answer_num", "")).strip()
        if answer not in ("1", "2", "3", "4"):
            raise FormatError(f"{where}: 'correct_answer_num' must be 1, 2, 3 or 4")
        fields = {
            "passage": text_field(row, "flores_passage", where),
            "question": text_field(row, "question", where),
            "answers": [text_field(row, key, where) for key in self.ANSWERS],
        }
        return Example(fields, int(answer) - 1, where)

    def prompt(self, example: Example, protocol: str, language: str) -> Prompt:
        """lm-evaluation-harness's layout (both protocols): passage, question, lettered
        answers, and the letters as the candidates."""
        f = example.fields
        answers = "".join(
            f"{letter}: {answer}\n"
            for letter, answer in zip(self.LETTERS, f["answers"], strict=True)
        )
        return Prompt(
            f"P: {f['passage']}\nQ: {f['question']}\n{answers}Answer:",
            tuple(f" {letter}" for letter in self.LETTERS),
            example.label,
        )
