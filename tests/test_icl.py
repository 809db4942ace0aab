"""In-context evaluation: task loaders and prompts (fixtures in the published XNLI and
XStoryCloze layouts, the shared SIB-200 and XCOPA data), demonstration sampling, and the icl
evaluator's arithmetic (a controlled scorer) and end to end on a real tiny model."""

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from xelm_eval.icl import IclEvaluator
from xelm_eval.tasks import (
    SIB200_CATEGORIES,
    Prompt,
    TaskData,
    build_context,
    choice_score,
    limit_sample,
    open_task,
    predict,
    sample_demonstrations,
    task_names,
)

from xelm_cli.api import (
    ChoiceRequest,
    Document,
    EvalRequest,
    FormatError,
    LanguageModel,
    UsageError,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED_TASKS = ROOT.parent / "shared" / "data" / "tasks"
TASK_FIXTURES = Path(__file__).parent / "fixtures" / "tasks"
XNLI = TASK_FIXTURES / "xnli"
XSTORYCLOZE = TASK_FIXTURES / "xstorycloze"
JSONL = TASK_FIXTURES / "jsonl"


def write_jsonl(path: Path, records: Sequence[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def evaluator(task: str, data: Path | str, **kwargs) -> IclEvaluator:
    return IclEvaluator(EvalRequest(data=str(data), task=task, **kwargs))


# ---------------------------------------------------------------- XNLI (release layout fixture)


def test_xnli_reads_every_language_of_the_release_files() -> None:
    task = open_task("xnli", XNLI)  # the files sit in XNLI/XNLI-1.0/
    assert task.root == XNLI / "XNLI-1.0"
    assert task.languages() == ["de", "en"]
    en, de = task.load("en", "paper"), task.load("de", "paper")
    assert (len(en.examples), len(en.demos)) == (4, 3)
    assert (len(de.examples), len(de.demos)) == (3, 3)
    assert [p.label for p in en.examples] == [1, 0, 2, 0]  # neutral, entailment, contradiction
    assert [p.label for p in de.demos] == [0, 1, 2]


def test_xnli_paper_prompt_uses_english_words_and_keeps_quotes() -> None:
    en = open_task("xnli", XNLI).load("en", "paper")
    second = en.examples[1]
    assert second.context == 'The sign said "closed" all week., right? '
    assert second.choices == (
        "Yes, The sign was up for days.",
        "Also, The sign was up for days.",
        "No, The sign was up for days.",
    )
    de = open_task("xnli", XNLI).load("de", "paper")
    assert de.examples[0].context == "Das Fenster war weit offen., right? "
    assert de.examples[0].choices[2] == "No, Das Fenster war geschlossen."


def test_xnli_harness_prompt_translates_the_label_words() -> None:
    de = open_task("xnli", XNLI).load("de", "harness")
    assert de.examples[0].context == "Das Fenster war weit offen., richtig? "
    assert de.examples[0].choices == (
        "Ja, Das Fenster war geschlossen.",
        "Auch, Das Fenster war geschlossen.",
        "Nein, Das Fenster war geschlossen.",
    )
    assert de.examples[0].label == 2
    en = open_task("xnli", XNLI).load("en", "harness")
    assert en.examples[0] == open_task("xnli", XNLI).load("en", "paper").examples[0]


def test_xnli_flat_layout_and_a_bad_label(tmp_path: Path) -> None:
    for name in ("xnli.dev.tsv", "xnli.test.tsv"):
        shutil.copy(XNLI / "XNLI-1.0" / name, tmp_path / name)
    assert open_task("xnli", tmp_path).root == tmp_path
    test = tmp_path / "xnli.test.tsv"
    lines = test.read_text().splitlines()
    lines[3] = lines[3].replace("\tneutral\t", "\tmaybe\t", 1)
    test.write_text("\n".join(lines) + "\n")
    with pytest.raises(FormatError, match=r"xnli\.test\.tsv:4: gold_label 'maybe'"):
        open_task("xnli", tmp_path).languages()


# ---------------------------------------------------------------- XStoryCloze (release layout)


def test_xstorycloze_reads_train_and_eval_splits() -> None:
    task = open_task("xstorycloze", XSTORYCLOZE)
    assert task.languages() == ["en", "ru"]
    en = task.load("en", "paper")
    assert (len(en.examples), len(en.demos)) == (4, 3)
    assert [p.label for p in en.examples] == [0, 1, 0, 1]
    first = en.examples[0]
    assert first.context == (
        "Lily planted seeds. She watered them daily. Weeks went by. Green shoots appeared."
    )
    assert first.choices == (" Lily was happy with her garden.", " Lily hated plants forever.")
    assert en.demos[2].demonstration == (
        'Sam lost his keys. He searched the kitchen. He checked his coat. His sister said "look '
        'in the car". He found them in the car.'
    )
    assert task.load("ru", "harness").examples == task.load("ru", "paper").examples


def test_xstorycloze_malformed_row_names_file_and_line(tmp_path: Path) -> None:
    for path in XSTORYCLOZE.iterdir():
        shutil.copy(path, tmp_path / path.name)
    broken = tmp_path / "spring2016.val.ru.tsv.split_20_80_eval.tsv"
    lines = broken.read_text().splitlines()
    lines[2] = lines[2].rsplit("\t", 1)[0]  # drop AnswerRightEnding
    broken.write_text("\n".join(lines) + "\n")
    with pytest.raises(FormatError) as caught:
        open_task("xstorycloze", tmp_path).load("ru", "paper")
    assert str(caught.value) == f"{broken}:3: 7 tab-separated fields, the header has 8"
    assert open_task("xstorycloze", tmp_path).load("en", "paper").examples  # others still read


# ---------------------------------------------------------------- generic JSONL


def test_jsonl_split_folder_and_single_file() -> None:
    task = open_task("jsonl", JSONL)
    assert task.languages() == ["en", "tr"]
    en = task.load("en", "paper")
    assert (len(en.examples), len(en.demos), en.exclude_self) == (3, 3, False)
    assert en.examples[2] == Prompt("Cats like to chase", (" mice", " clouds", " taxes"), 0)
    tr = task.load("tr", "harness")
    assert (len(tr.examples), tr.pool_size, tr.exclude_self) == (3, 2, True)
    assert tr.examples[0] == Prompt("Kar beyaz", (" renklidir", " seslidir"), 0)


def test_jsonl_single_file_never_uses_the_example_as_its_own_demonstration() -> None:
    tr = open_task("jsonl", JSONL).load("tr", "paper")
    for seed in range(20):
        rng = np.random.default_rng(seed)
        for index, example in enumerate(tr.examples):
            demos = sample_demonstrations(tr, index, 2, rng)
            assert example not in demos and len(set(demos)) == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"tr\.jsonl:2: not valid JSON"),
        ('{"context": "x", "choices": [" a"], "label": 0}', r"tr\.jsonl:2: 'choices' must be"),
        ('{"context": "x", "choices": [" a", " b"], "label": 2}', r"tr\.jsonl:2: 'label' must"),
        (
            '{"context": "x", "choices": [" \\ud800", " b"], "label": 0}',
            r"tr\.jsonl:2: .*surrogate",
        ),
    ],
)
def test_jsonl_malformed_line(tmp_path: Path, line: str, message: str) -> None:
    good = '{"context": "Su", "choices": [" akar", " uçar"], "label": 0}'
    (tmp_path / "tr.jsonl").write_text(good + "\n" + line + "\n")
    with pytest.raises(FormatError, match=message):
        open_task("jsonl", tmp_path).load("tr", "paper")


def test_jsonl_empty_evaluation_file(tmp_path: Path) -> None:
    (tmp_path / "sw.jsonl").write_text("\n")
    with pytest.raises(FormatError, match=r"sw\.jsonl: no jsonl examples for language 'sw'"):
        evaluator("jsonl", tmp_path)


# ---------------------------------------------------------------- real shared data


def test_sib200_on_the_shared_data() -> None:
    task = open_task("sib200", SHARED_TASKS)  # the parent of sib200/ works too
    assert task.root == SHARED_TASKS / "sib200"
    assert {"en", "tr", "zh", "sw"} <= set(task.languages())
    en = task.load("en", "paper")
    assert (len(en.examples), len(en.demos)) == (204, 701)
    labels = [p.label for p in en.demos]
    assert np.bincount(labels, minlength=7).tolist() == [176, 138, 102, 85, 77, 65, 58]
    first = en.demos[0]
    assert first.context == (
        "Turkey is encircled by seas on three sides: the Aegean Sea to the west, the Black Sea "
        "to the north and the Mediterranean Sea to the south.\nTopic:"
    )
    assert first.choices == tuple(" " + c for c in SIB200_CATEGORIES)
    assert first.demonstration.endswith("\nTopic: geography")
    # CSV quoting is undone: the text keeps one pair of quotes, not the file's doubled ones.
    quoted = [p.context for p in en.demos if "settled law of the land" in p.context]
    assert len(quoted) == 1 and '"settled law of the land"' in quoted[0]
    assert not quoted[0].startswith('"')
    assert task.load("en", "harness").examples[:5] == en.examples[:5]


def test_xcopa_on_the_shared_data() -> None:
    task = open_task("xcopa", SHARED_TASKS / "xcopa")
    assert task.languages() == ["sw", "tr", "vi", "zh"]
    sw = task.load("sw", "paper")
    assert (len(sw.examples), len(sw.demos)) == (500, 100)
    assert sum(p.label for p in sw.examples) == 250
    demo = sw.demos[0]  # effect
    assert demo.context == "Mwanaume alifungua bomba la maji so"
    assert demo.choices == (" choo kilijaa maji.", " maji yalitiririka kutoka kwenye bomba.")
    assert demo.label == 1
    harness = task.load("sw", "harness").demos[0]
    assert harness.context == "Mwanaume alifungua bomba la maji kwa hiyo"
    assert harness.choices == demo.choices
    zh_paper, zh_harness = (task.load("zh", p).examples[0] for p in ("paper", "harness"))
    assert zh_paper.context == "该物品用气泡包装纸包着 because"  # cause; the 。 is dropped
    assert zh_harness.context == "该物品用气泡包装纸包着 因为"
    assert zh_paper.choices == (" 它很易碎。", " 它很小。") and zh_paper.label == 0


# ---------------------------------------------------------------- demonstrations


def test_demonstrations_are_deterministic_per_seed_and_vary_between_runs() -> None:
    pool = open_task("sib200", SHARED_TASKS).load("sw", "paper", limit=10)

    def draw(seed: int) -> list[list[Prompt]]:
        rng = np.random.default_rng(seed)
        return [sample_demonstrations(pool, i, 3, rng) for i in range(len(pool.examples))]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)
    assert all(len(set(demos)) == 3 for demos in draw(7))
    first, second = (
        evaluator("sib200", SHARED_TASKS, languages=("sw",), limit=10, shots=3, runs=2)
        for _ in range(2)
    )
    assert first._prompts() == second._prompts()


def test_another_seed_draws_other_demonstrations_in_every_run() -> None:
    """Runs of seed 1 are not runs of seed 0 shifted by one (seeded by (seed, run))."""

    def contexts(seed: int) -> list[list[str]]:
        built = evaluator(
            "sib200", SHARED_TASKS, languages=("sw",), limit=10, shots=3, runs=2, seed=seed
        )
        requests, plan = built._prompts()
        return [[requests[i].context for i in run] for run in plan["sw"]]

    zero, one = contexts(0), contexts(1)
    assert zero[0] != zero[1] and one[0] != one[1]
    assert not {tuple(run) for run in zero} & {tuple(run) for run in one}


def test_build_context_layout() -> None:
    demos = [Prompt("A is", (" one", " two"), 1), Prompt("B is", (" three", " four"), 0)]
    assert build_context(demos, "C is") == "A is two\n\nB is three\n\nC is"
    assert build_context([], "C is") == "C is"
    en = open_task("jsonl", JSONL).load("en", "paper")
    rng = np.random.default_rng(0)
    (demo,) = sample_demonstrations(en, 0, 1, rng)
    assert demo in en.demos


def test_more_shots_than_the_pool_is_refused() -> None:
    with pytest.raises(UsageError) as caught:
        evaluator("xnli", XNLI, languages=("de",), shots=4)
    message = str(caught.value)
    assert "xnli de: 4 shots" in message and "holds 3 examples" in message
    assert "xnli.dev.tsv" in message
    with pytest.raises(UsageError, match=r"jsonl tr: 3 shots .* holds 2 examples"):
        evaluator("jsonl", JSONL, languages=("tr",), shots=3)
    assert evaluator("jsonl", JSONL, languages=("tr",), shots=2).languages == ["tr"]


# ---------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"task": None},
            r"^--task is required for the icl evaluator \(tasks: xnli, xstorycloze, "
            r"sib200, xcopa, belebele, jsonl\)$",
        ),
        ({"task": "hellaswag"}, r"unknown task 'hellaswag'; tasks: xnli, xstorycloze"),
        ({"data": None}, r"needs --data"),
        ({"protocol": "mine"}, r"unknown protocol 'mine'; choose paper or harness"),
        ({"runs": 0}, r"--runs must be at least 1"),
        ({"shots": -1}, r"--shots must be 0 or more"),
        ({"limit": 0}, r"--limit must be at least 1"),
        ({"languages": ("fr",)}, r"no xnli data for language 'fr' .*\(available: de, en\)"),
        ({"languages": ("zz",)}, r"unknown language code 'zz'"),
        ({"data": "/nonexistent/xnli"}, r"xnli data root /nonexistent/xnli does not exist"),
        ({"data": str(JSONL)}, r"no xnli data under .*: expected xnli\.dev\.tsv"),
    ],
)
def test_bad_requests_are_one_line_usage_errors(kwargs: dict, message: str) -> None:
    request = {"data": str(XNLI), "task": "xnli", **kwargs}
    with pytest.raises(UsageError, match=message) as caught:
        IclEvaluator(EvalRequest(**request))
    assert "\n" not in str(caught.value)


def test_missing_demonstration_file_only_matters_with_shots(tmp_path: Path) -> None:
    shutil.copy(XNLI / "XNLI-1.0" / "xnli.test.tsv", tmp_path / "xnli.test.tsv")
    assert evaluator("xnli", tmp_path).languages == ["de", "en"]
    with pytest.raises(UsageError, match=r"xnli: missing file .*xnli\.dev\.tsv"):
        evaluator("xnli", tmp_path, shots=1)


# ---------------------------------------------------------------- the evaluator's arithmetic


class TableModel(LanguageModel):
    """A deterministic scorer: each choice's token log-probabilities come from a table (a
    callable may make them depend on the context). Records every call."""

    name = "table"

    def __init__(self, table: dict) -> None:
        self.table = table
        self.calls: list[list[ChoiceRequest]] = []

    def score_choices(self, requests: Sequence[ChoiceRequest]) -> list[list[np.ndarray]]:
        self.calls.append(list(requests))
        out = []
        for request in requests:
            row = []
            for choice in request.choices:
                entry = self.table[choice]
                values = entry(request.context) if callable(entry) else entry
                row.append(np.asarray(values, dtype=np.float64))
            out.append(row)
        return out

    def score_documents(self, documents: Sequence[Document]) -> list[np.ndarray]:
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        return len(text.split())


# Mean and sum disagree: " b" has the better mean, " a" the better sum, and so on.
ARITHMETIC_TABLE = {
    " a": [-1.0],
    " b": [-0.6, -0.6],  # label 0: paper 1 (wrong), harness 0 (right)
    " c": [-2.0],
    " d": [-0.6] * 4,  # label 1: paper 1 (right), harness 0 (wrong)
    " e": [-1.0],
    " f": [-2.0],
    " g": [-0.1],  # label 2: both right
    " h": [-3.0, -3.0],
    " i": [-4.0],  # label 0: paper 0 (right), harness 1 (wrong)
    " j": [-1.0],
    " k": [-0.9],  # label 1: both right
    " l": [-0.2] * 3,
    " m": [-0.3],  # label 0: paper 0 (right), harness 1 (wrong)
}


def arithmetic_data(root: Path) -> Path:
    write_jsonl(root / "en" / "test.jsonl", [
        {"context": "one", "choices": [" a", " b"], "label": 0},
        {"context": "two", "choices": [" c", " d"], "label": 1},
        {"context": "three", "choices": [" e", " f", " g"], "label": 2},
        {"context": "four", "choices": [" h", " i"], "label": 0},
    ])  # fmt: skip
    write_jsonl(root / "tr.jsonl", [
        {"context": "bir", "choices": [" j", " k"], "label": 1},
        {"context": "iki", "choices": [" l", " m"], "label": 0},
    ])  # fmt: skip
    return root


def test_choice_scores_mean_versus_sum() -> None:
    assert choice_score([-0.6, -0.6], "paper") == pytest.approx(-0.6)
    assert choice_score([-0.6, -0.6], "harness") == pytest.approx(-1.2)
    assert predict([ARITHMETIC_TABLE[" a"], ARITHMETIC_TABLE[" b"]], "paper") == 1
    assert predict([ARITHMETIC_TABLE[" a"], ARITHMETIC_TABLE[" b"]], "harness") == 0


@pytest.mark.parametrize(("protocol", "en", "tr"), [("paper", 0.75, 1.0), ("harness", 0.5, 0.5)])
def test_zero_shot_accuracy_by_hand(tmp_path: Path, protocol: str, en: float, tr: float) -> None:
    data = arithmetic_data(tmp_path)
    model = TableModel(ARITHMETIC_TABLE)
    result = evaluator("jsonl", data, protocol=protocol, runs=3, seed=5).evaluate(model)
    assert len(model.calls) == 1
    assert len(model.calls[0]) == 6  # the three identical 0-shot runs are scored once
    assert [r.language for r in model.calls[0]] == ["en"] * 4 + ["tr"] * 2
    assert model.calls[0][0] == ChoiceRequest("one", (" a", " b"), "en")
    assert result["task"] == "jsonl" and result["protocol"] == protocol
    assert (result["shots"], result["runs"], result["seed"]) == (0, 3, 5)
    assert result["languages"]["en"] == {
        "accuracy": en,
        "stderr": 0.0,
        "stderr_examples": pytest.approx(math.sqrt(en * (1 - en) / 4)),  # the 4 examples drawn
        "runs": [en] * 3,
        "examples": 4,
        "chance": pytest.approx((1 / 2 + 1 / 2 + 1 / 3 + 1 / 2) / 4),  # one item has 3 choices
    }
    assert result["languages"]["tr"]["accuracy"] == tr
    assert result["overall"]["chance"] == pytest.approx(((11 / 6) / 4 + 1 / 2) / 2)
    assert result["overall"]["accuracy"] == pytest.approx((en + tr) / 2)
    assert result["overall"]["stderr"] == 0.0
    # the mean of two languages' independent samples: sqrt(var_en + var_tr) / 2
    by_hand = math.sqrt(en * (1 - en) / 4 + tr * (1 - tr) / 2) / 2
    assert result["overall"]["stderr_examples"] == pytest.approx(by_hand)
    json.dumps(result)


def test_equal_runs_give_exact_means_and_a_stderr_of_exactly_zero(tmp_path: Path) -> None:
    # one item of ten right in every language and run: float sums of 0.1 would drift
    for lang in ("en", "tr", "ar"):
        write_jsonl(tmp_path / lang / "test.jsonl", [
            {"context": f"{lang} {i}", "choices": [" a", " b"], "label": int(i > 0)}
            for i in range(10)
        ])  # fmt: skip
    model = TableModel({" a": [-1.0], " b": [-2.0]})  # always predicts " a" (label 0)
    result = evaluator("jsonl", tmp_path, runs=3).evaluate(model)
    for scope in (*result["languages"].values(), result["overall"]):
        assert (scope["accuracy"], scope["stderr"], scope["runs"]) == (0.1, 0.0, [0.1] * 3)
    # equal runs leave the examples' error: sqrt(0.1 x 0.9 / 10), over 3 languages / sqrt(3)
    assert result["languages"]["en"]["stderr_examples"] == pytest.approx(math.sqrt(0.009))
    assert result["overall"]["stderr_examples"] == pytest.approx(math.sqrt(0.009 / 3))
    assert result["overall"]["chance"] == 0.5


def test_limit_keeps_a_fixed_random_sample_in_file_order(tmp_path: Path) -> None:
    data = arithmetic_data(tmp_path)
    task = open_task("jsonl", data)
    everything = task.load("en", "paper").examples
    kept = task.load("en", "paper", limit=2).examples
    assert kept == tuple(everything[i] for i in sorted(limit_sample(4, 2)))
    assert task.load("en", "paper", limit=2).examples == kept  # the same every time
    result = evaluator("jsonl", data, limit=1).evaluate(TableModel(ARITHMETIC_TABLE))
    assert result["languages"]["en"]["examples"] == 1


def test_few_shot_runs_differ_and_stderr_is_over_runs(tmp_path: Path) -> None:
    # Four demonstrations; the scorer answers right exactly when the prompt opens with a
    # "good" demonstration, so each run's accuracy follows from the demonstrations drawn.
    write_jsonl(tmp_path / "en" / "train.jsonl", [
        {"context": f"{word} demo", "choices": [" p", " q"], "label": 0}
        for word in ("good", "good", "bad", "bad")
    ])  # fmt: skip
    write_jsonl(tmp_path / "en" / "test.jsonl", [
        {"context": f"item {i}", "choices": [" right", " wrong"], "label": 0} for i in range(8)
    ])  # fmt: skip
    table = {
        " right": lambda context: [-1.0 if context.startswith("good") else -3.0],
        " wrong": [-2.0],
        " p": [-1.0],
        " q": [-1.0],
    }
    model = TableModel(table)
    ev = evaluator("jsonl", tmp_path, shots=1, runs=4, seed=11, protocol="harness")
    result = ev.evaluate(model)
    assert len(model.calls) == 1
    assert model.calls[0][0].context.endswith(" demo p\n\nitem 0")

    pool = open_task("jsonl", tmp_path).load("en", "harness")
    expected = []
    for run in range(4):
        rng = np.random.default_rng([11, run])
        demos = [sample_demonstrations(pool, i, 1, rng)[0] for i in range(8)]
        expected.append(sum(d.context.startswith("good") for d in demos) / 8)
    assert len(set(expected)) > 1  # the runs draw different demonstrations
    lang = result["languages"]["en"]
    assert lang["runs"] == pytest.approx(expected)
    assert lang["accuracy"] == pytest.approx(np.mean(expected))
    assert lang["stderr"] == pytest.approx(np.std(expected, ddof=1) / math.sqrt(4))
    overall = result["overall"]
    assert (overall["accuracy"], overall["stderr"]) == (lang["accuracy"], lang["stderr"])
    assert overall["runs"] == pytest.approx(expected)


# ---------------------------------------------------------------- a real tiny model


def test_real_tiny_model_on_sib200(seed_bundle: Path) -> None:
    from xelm_cli.bundle.store import Bundle
    from xelm_cli.ensemble.runner import single_model

    model = single_model(Bundle.read(seed_bundle), "seed")
    ev = evaluator("sib200", SHARED_TASKS / "sib200", languages=("en", "tr"), limit=5, shots=1,
                   runs=2)  # fmt: skip
    assert ev.languages == ["en", "tr"]
    result = ev.evaluate(model)
    assert set(result["languages"]) == {"en", "tr"}
    for lang in result["languages"].values():
        assert lang["examples"] == 5 and len(lang["runs"]) == 2
        assert all(0.0 <= a <= 1.0 for a in lang["runs"])
        assert lang["accuracy"] == pytest.approx(np.mean(lang["runs"]))
        assert lang["stderr"] >= 0.0
    means = [lang["accuracy"] for lang in result["languages"].values()]
    assert result["overall"]["accuracy"] == pytest.approx(np.mean(means))
    assert 0.0 <= result["overall"]["accuracy"] <= 1.0
    json.dumps(result)


def test_task_names() -> None:
    assert task_names() == ["xnli", "xstorycloze", "sib200", "xcopa", "belebele", "jsonl"]
    assert isinstance(open_task("SIB200", SHARED_TASKS), type(open_task("sib200", SHARED_TASKS)))
    assert TaskData("t", "en", (), ()).pool_size == 0
