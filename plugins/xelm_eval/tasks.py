"""Multiple-choice tasks for in-context evaluation: their files, splits and prompts.

Every task reads its files under a data root ``ROOT`` (``--data``), takes demonstrations from
one split and evaluates another, and turns an item into a :class:`Prompt` (a context and the
candidate continuations) under a protocol.

Layouts (a root may also be the folder that holds the task's folder, e.g. ``XNLI-1.0`` or
``sib200``):

- ``xnli``: the XNLI-1.0 release, ``ROOT/xnli.dev.tsv`` (demonstrations) and
  ``ROOT/xnli.test.tsv`` (evaluated). Tab-separated, a header row, no quoting; the columns
  used are ``language``, ``gold_label`` (entailment, neutral, contradiction), ``sentence1``
  (premise) and ``sentence2`` (hypothesis). One file holds every language.
- ``xstorycloze``: the XStoryCloze release, ``ROOT/spring2016.val.{lang}.tsv.split_20_80_train.tsv``
  (demonstrations) and ``..._eval.tsv`` (evaluated). Tab-separated, a header row, columns
  ``InputStoryid``, ``InputSentence1..4``, ``RandomFifthSentenceQuiz1..2``,
  ``AnswerRightEnding`` (1 or 2).
- ``sib200``: ``ROOT/{lang}/train.tsv`` (demonstrations) and ``ROOT/{lang}/test.tsv``
  (evaluated); tab-separated with CSV quoting, columns ``index_id``, ``category``, ``text``.
- ``xcopa``: ``ROOT/{lang}/val.jsonl`` (demonstrations) and ``ROOT/{lang}/test.jsonl``
  (evaluated), or the release's ``val.{lang}.jsonl`` and ``test.{lang}.jsonl``; JSON lines
  with ``premise``, ``choice1``, ``choice2``, ``question`` (cause or effect), ``label`` (0, 1).
- ``belebele``: the Belebele release, ``ROOT/{flores}.jsonl`` (``arb_Arab.jsonl``), one file per
  language that is both evaluated and the demonstration pool (an example is never its own
  demonstration); JSON lines with ``flores_passage``, ``question``, ``mc_answer1..4`` and
  ``correct_answer_num`` (1-4). Prompted as lm-evaluation-harness does: ``P: passage``,
  ``Q: question``, ``A: ...`` to ``D: ...``, ``Answer:``, the candidates being `` A``..`` D``.
- ``jsonl`` (any multiple-choice task already written as prompts): either
  ``ROOT/{lang}/test.jsonl`` (evaluated) with ``ROOT/{lang}/train.jsonl`` (demonstrations), or
  a single file, ``ROOT/{lang}.jsonl`` or a folder holding only one of the two, which is both
  evaluated and the demonstration pool (an example is never its own demonstration). Each line
  is ``{"context": str, "choices": [str, ...], "label": int}``: choice ``i`` is scored as the
  continuation of ``context``, so a choice usually starts with a space; at least two choices,
  none empty; ``label`` indexes the correct one.

Languages are the ones the files provide (for xnli, the values of the ``language`` column),
normalised with :func:`normalize_language`.

A root may also be the task's dataset on the Hugging Face Hub (or a local copy laid out like
it): one configuration per language, read through xelm's source layer. ``sib200``:
``Davlan/sib200`` (configurations ``arb_Arab``..., test evaluated, train demonstrations);
``xcopa``: ``cambridgeltl/xcopa`` (``tr``..., test and validation); ``xnli``: ``facebook/xnli``
(``ar``..., test and validation; premise, hypothesis, label 0-2); ``xstorycloze``:
``juletxara/xstory_cloze`` (``ru``..., eval and train); ``belebele``: ``facebook/belebele``
(``arb_Arab``..., test, which is also the demonstration pool). None of them is gated.

Protocols:

- ``paper`` (the X-ELM authors): English template words for every language; a candidate's
  score is its mean token log-likelihood (the lowest mean NLL wins).
- ``harness`` (lm-evaluation-harness): label words translated where the harness translates
  them (XNLI's "right", "Yes", "Also", "No"; XCOPA's connectives); a candidate's score is its
  summed log-likelihood (the highest wins).

A k-shot context is ``demo_1 + "\\n\\n" + ... + demo_k + "\\n\\n" + context``, each demonstration
being a context followed by its correct candidate.
"""

import csv
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import ArrayLike

from xelm_cli.api import (
    EvalSet,
    FormatError,
    UsageError,
    dataset_configs,
    is_hub_dataset,
    language_of_config,
    normalize_language,
)

__all__ = [
    "PROTOCOLS",
    "TASKS",
    "Example",
    "Prompt",
    "Task",
    "TaskData",
    "build_context",
    "check_protocol",
    "check_shots",
    "choice_score",
    "open_task",
    "predict",
    "sample_demonstrations",
    "task_names",
]

Split = Literal["demo", "eval"]

PROTOCOLS: dict[str, str] = {
    "paper": "mean token log-likelihood of each candidate, English template words (the lowest "
    "mean NLL wins)",
    "harness": "summed log-likelihood of each candidate, translated label words where "
    "lm-evaluation-harness translates them (the highest wins)",
}

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

SIB200_CATEGORIES = (
    "science/technology",
    "travel",
    "politics",
    "sports",
    "health",
    "entertainment",
    "geography",
)


def check_protocol(protocol: str) -> str:
    """``protocol`` if it is one of :data:`PROTOCOLS`, else a one-line UsageError."""
    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown protocol {protocol!r}; choose {' or '.join(PROTOCOLS)}")
    return protocol


# ---------------------------------------------------------------------------------- items


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


def choice_score(logprobs: ArrayLike, protocol: str) -> float:
    """A candidate's score, higher is better: its mean token log-probability under ``paper``
    (minus the mean NLL), its summed log-probability under ``harness``."""
    values = np.asarray(logprobs, dtype=np.float64)
    if values.size == 0:
        raise ValueError("a candidate has no tokens")
    return float(values.mean() if check_protocol(protocol) == "paper" else values.sum())


def predict(choice_logprobs: Sequence[ArrayLike], protocol: str) -> int:
    """The index of the best candidate (the first one on a tie)."""
    return int(np.argmax([choice_score(lp, protocol) for lp in choice_logprobs]))


# ---------------------------------------------------------------------------------- files


def _language(code: str, where: str) -> str:
    try:
        return normalize_language(code.replace("_", "-"))
    except UsageError:
        raise FormatError(f"{where}: {code!r} is not a language code") from None


def _require_file(path: Path, task: str) -> None:
    if not path.is_file():
        raise UsageError(f"{task}: missing file {path}")


def _read_tsv(
    path: Path, columns: Sequence[str], *, quoted: bool
) -> list[tuple[int, dict[str, str]]]:
    """The rows of a headed TSV file as (line number, {column: value}); blank lines skipped.
    ``quoted``: fields may be CSV-quoted (SIB-200); else quote characters are plain text (the
    XNLI and XStoryCloze releases)."""
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            if quoted:
                reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_MINIMAL)
            else:
                reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if header is None:
                raise FormatError(f"{path}: empty file; expected a header row")
            missing = [c for c in columns if c not in header]
            if missing:
                raise FormatError(
                    f"{path}:1: the header lacks column(s) {', '.join(missing)} "
                    f"(found: {', '.join(header)})"
                )
            for row in reader:
                if not row or row == [""]:
                    continue
                if len(row) != len(header):
                    raise FormatError(
                        f"{path}:{reader.line_num}: {len(row)} tab-separated fields, "
                        f"the header has {len(header)}"
                    )
                rows.append((reader.line_num, dict(zip(header, row, strict=True))))
    except UnicodeDecodeError:
        raise FormatError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise FormatError(f"{path}: {exc}") from None
    return rows


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """The objects of a JSON-lines file as (line number, object); blank lines skipped."""
    records: list[tuple[int, dict[str, Any]]] = []
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise FormatError(f"{path}:{number}: not valid JSON: {exc.msg}") from None
                if not isinstance(record, dict):
                    raise FormatError(f"{path}:{number}: expected a JSON object")
                records.append((number, record))
    except UnicodeDecodeError:
        raise FormatError(f"{path}: not UTF-8 text") from None
    return records


def _text(fields: dict[str, Any], key: str, where: str) -> str:
    value = fields.get(key)
    if not isinstance(value, str) or not value.strip():
        raise FormatError(f"{where}: {key!r} must be a non-empty string")
    return value.strip()


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


# ---------------------------------------------------------------------------------- tasks


class Task(ABC):
    """A multiple-choice task read from a data root (see the module docstring)."""

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


class XnliTask(Task):
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
            _require_file(path, self.name)
            grouped: dict[str, list[Example]] = {}
            for line, row in _read_tsv(path, self.COLUMNS, quoted=False):
                where = f"{path}:{line}"
                gold = row["gold_label"].strip()
                if gold not in self.LABELS:
                    raise FormatError(
                        f"{where}: gold_label {gold!r} is not one of {', '.join(self.LABELS)}"
                    )
                premise = _text(row, "sentence1", where)
                hypothesis = _text(row, "sentence2", where)
                fields = {"premise": premise, "hypothesis": hypothesis}
                example = Example(fields, self.LABELS.index(gold), where)
                grouped.setdefault(row["language"].strip(), []).append(example)
            self._by_split[split] = grouped
        return self._by_split[split]

    def _scan_languages(self) -> dict[str, str]:
        grouped = self._grouped("eval")
        return {_language(raw, items[0].where): raw for raw, items in grouped.items()}

    def _read_files(self, raw: str, split: Split) -> tuple[list[Example], str]:
        return self._grouped(split).get(raw, []), str(self.root / self.FILES[split])

    def hub_example(self, row: dict[str, Any], where: str) -> Example:
        label = row.get("label")
        if not isinstance(label, int) or not 0 <= label < len(self.LABELS):
            raise FormatError(f"{where}: 'label' must be 0, 1 or 2 ({', '.join(self.LABELS)})")
        fields = {"premise": _text(row, "premise", where)}
        fields["hypothesis"] = _text(row, "hypothesis", where)
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


class XStoryClozeTask(Task):
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
            languages.setdefault(_language(raw, str(path)), raw)
        return languages

    def _read_files(self, raw: str, split: Split) -> tuple[list[Example], str]:
        path = self.root / f"{self.PREFIX}{raw}{self.SUFFIXES[split]}"
        _require_file(path, self.name)
        columns = (*self.SENTENCES, *self.ENDINGS, "AnswerRightEnding")
        examples = []
        for line, row in _read_tsv(path, columns, quoted=False):
            where = f"{path}:{line}"
            answer = row["AnswerRightEnding"].strip()
            if answer not in ("1", "2"):
                raise FormatError(f"{where}: AnswerRightEnding {answer!r} is not 1 or 2")
            fields = {
                "sentences": [_text(row, key, where) for key in self.SENTENCES],
                "endings": [_text(row, key, where) for key in self.ENDINGS],
            }
            examples.append(Example(fields, int(answer) - 1, where))
        return examples, str(path)

    def hub_example(self, row: dict[str, Any], where: str) -> Example:
        answer = row.get("answer_right_ending")
        if answer not in (1, 2) or isinstance(answer, bool):
            raise FormatError(f"{where}: 'answer_right_ending' must be 1 or 2")
        fields = {
            "sentences": [_text(row, key, where) for key in self.HUB_SENTENCES],
            "endings": [_text(row, key, where) for key in self.HUB_ENDINGS],
        }
        return Example(fields, int(answer) - 1, where)

    def prompt(self, example: Example, protocol: str, language: str) -> Prompt:
        return Prompt(
            " ".join(example.fields["sentences"]),
            tuple(" " + ending for ending in example.fields["endings"]),
            example.label,
        )


class _FolderPerLanguage(Task):
    """A task with one folder per language holding one file per split."""

    FILES: ClassVar[dict[str, tuple[str, ...]]]  # split -> file names, "{lang}" replaced

    def _path(self, folder: Path, raw: str, split: Split) -> Path | None:
        for pattern in self.FILES[split]:
            path = folder / pattern.format(lang=raw)
            if path.is_file():
                return path
        return None

    def _holds_data(self, root: Path) -> bool:
        return any(self._path(folder, folder.name, "eval") for folder in self._folders(root))

    @staticmethod
    def _folders(root: Path) -> list[Path]:
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _scan_languages(self) -> dict[str, str]:
        languages: dict[str, str] = {}
        for folder in self._folders(self.root):
            if self._path(folder, folder.name, "eval"):
                languages.setdefault(_language(folder.name, str(folder)), folder.name)
        return languages

    def _split_file(self, raw: str, split: Split) -> Path:
        path = self._path(self.root / raw, raw, split)
        if path is None:
            wanted = " or ".join(
                str(self.root / raw / p.format(lang=raw)) for p in self.FILES[split]
            )
            raise UsageError(f"{self.name}: missing file {wanted}")
        return path


class Sib200Task(_FolderPerLanguage):
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
        rows = _read_tsv(path, ("category", "text"), quoted=True)
        return [self.example(row, f"{path}:{line}") for line, row in rows], str(path)

    def example(self, row: dict[str, Any], where: str) -> Example:
        category = str(row.get("category", "")).strip()
        if category not in SIB200_CATEGORIES:
            raise FormatError(
                f"{where}: category {category!r} is not one of {', '.join(SIB200_CATEGORIES)}"
            )
        fields = {"text": _text(row, "text", where)}
        return Example(fields, SIB200_CATEGORIES.index(category), where)

    def prompt(self, example: Example, protocol: str, language: str) -> Prompt:
        return Prompt(
            f"{example.fields['text']}\nTopic:",
            tuple(f" {category}" for category in SIB200_CATEGORIES),
            example.label,
        )


class XcopaTask(_FolderPerLanguage):
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
        records = _read_jsonl(path)
        return [self.example(r, f"{path}:{line}") for line, r in records], str(path)

    def example(self, row: dict[str, Any], where: str) -> Example:
        question = row.get("question")
        if question not in ("cause", "effect"):
            raise FormatError(f"{where}: 'question' must be 'cause' or 'effect'")
        label = row.get("label")
        if label not in (0, 1) or isinstance(label, bool):
            raise FormatError(f"{where}: 'label' must be 0 or 1")
        fields = {
            "premise": _text(row, "premise", where),
            "choices": [_text(row, key, where) for key in ("choice1", "choice2")],
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


class BelebeleTask(Task):
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
        _require_file(path, self.name)
        return [self.example(r, f"{path}:{line}") for line, r in _read_jsonl(path)], str(path)

    def example(self, row: dict[str, Any], where: str) -> Example:
        answer = str(row.get("correct_answer_num", "")).strip()
        if answer not in ("1", "2", "3", "4"):
            raise FormatError(f"{where}: 'correct_answer_num' must be 1, 2, 3 or 4")
        fields = {
            "passage": _text(row, "flores_passage", where),
            "question": _text(row, "question", where),
            "answers": [_text(row, key, where) for key in self.ANSWERS],
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


class JsonlTask(Task):
    name = "jsonl"
    layout = "{lang}/test.jsonl (with {lang}/train.jsonl for demonstrations) or {lang}.jsonl"

    def _sources(self, root: Path) -> dict[str, tuple[Path | None, Path | None]]:
        """{language as spelled: (evaluated file, demonstration file or None if shared)}."""
        sources: dict[str, tuple[Path | None, Path | None]] = {}
        for path in sorted(root.iterdir()):
            if path.name.startswith("."):
                continue
            if path.is_dir():
                test, train = path / "test.jsonl", path / "train.jsonl"
                if test.is_file():
                    sources[path.name] = (test, train if train.is_file() else None)
                elif train.is_file():
                    sources[path.name] = (train, None)
            elif path.is_file() and path.suffix == ".jsonl":
                if path.stem in sources:
                    raise UsageError(
                        f"jsonl: both {path} and the folder {root / path.stem} hold language "
                        f"{path.stem!r}; keep one"
                    )
                sources[path.stem] = (path, None)
        return sources

    def _holds_data(self, root: Path) -> bool:
        return bool(self._sources(root))

    def _scan_languages(self) -> dict[str, str]:
        languages: dict[str, str] = {}
        for raw, (path, _) in self._sources(self.root).items():
            languages.setdefault(_language(raw, str(path)), raw)
        return languages

    def shares_demos(self, raw: str) -> bool:
        return self._sources(self.root)[raw][1] is None

    def _read_files(self, raw: str, split: Split) -> tuple[list[Example], str]:
        evaluated, demos = self._sources(self.root)[raw]
        path = evaluated if split == "eval" or demos is None else demos
        assert path is not None
        examples = []
        for line, record in _read_jsonl(path):
            where = f"{path}:{line}"
            context, choices, label = (record.get(k) for k in ("context", "choices", "label"))
            if not isinstance(context, str):
                raise FormatError(f"{where}: 'context' must be a string")
            if (
                not isinstance(choices, list)
                or len(choices) < 2
                or not all(isinstance(c, str) and c for c in choices)
            ):
                raise FormatError(
                    f"{where}: 'choices' must be a list of two or more non-empty strings"
                )
            if (
                not isinstance(label, int)
                or isinstance(label, bool)
                or not 0 <= label < len(choices)
            ):
                raise FormatError(
                    f"{where}: 'label' must be an integer from 0 to {len(choices) - 1}"
                )
            examples.append(Example({"context": context, "choices": choices}, label, where))
        return examples, str(path)

    def prompt(self, example: Example, protocol: str, language: str) -> Prompt:
        return Prompt(example.fields["context"], tuple(example.fields["choices"]), example.label)


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
