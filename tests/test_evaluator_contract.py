"""A third-party evaluator held to its contract (spec/plugin-api.md 7.3) by `xelm ensemble eval`
and `xelm plugins check`: xelm sets ``evaluator.request`` when the class did not, a bad result or
an exception in ``evaluate()`` is one line naming the evaluator and its plugin (exit 6), never an
internal error after all the scoring."""

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xelm_cli.api import (
    Document,
    EvalRequest,
    Evaluator,
    LanguageModel,
    NoOptions,
    Register,
    hookimpl,
    option,
)
from xelm_cli.cli import run
from xelm_cli.ensemble.results import build_evaluator
from xelm_cli.plugin import conformance, host
from xelm_cli.plugin.conformance import FAIL, PASS, Report, TinyExperts
from xelm_cli.plugin.options import declares_options


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory) -> TinyExperts:
    return conformance.build_tiny_experts(tmp_path_factory.mktemp("contract") / "experts")


pytestmark = pytest.mark.usefixtures("isolated_registry")


class EvaluatorPlugin:
    def __init__(self, evaluator: type[Evaluator]) -> None:
        self.evaluator = evaluator

    @hookimpl
    def register_evaluators(self, register: Register) -> None:
        register(self.evaluator.name, self.evaluator)


class FirstLine(Evaluator):
    """Mean ln p of the tokens of each language's first corpus line."""

    name = "first-line"
    primary = "logprob"
    higher_is_better = True

    def __init__(self, request: EvalRequest) -> None:  # no super().__init__(request)
        corpus = Path(str(request.data))
        self.documents = [
            Document(path.read_text().splitlines()[0], path.stem)
            for path in sorted(corpus.glob("*.txt"))
        ]

    @property
    def languages(self) -> list[str]:
        return [str(document.language) for document in self.documents]

    def evaluate(self, model: LanguageModel) -> dict[str, Any]:
        scores = model.score_documents(self.documents)
        by_language = {
            str(document.language): {self.primary: float(np.mean(logprobs))}
            for document, logprobs in zip(self.documents, scores, strict=True)
        }
        overall = float(np.mean([scope[self.primary] for scope in by_language.values()]))
        return {"overall": {self.primary: overall}, "languages": by_language}


def install(evaluator: type[Evaluator]) -> None:
    plugin = EvaluatorPlugin(evaluator)
    host.reset_registry(host.load_registry(extra_plugins=[("mine", plugin)]))


def evaluate(experts: TinyExperts, name: str, *flags: str) -> int:
    """``xelm ensemble eval`` of the tiny experts with evaluator ``name``: its exit code."""
    members = [str(bundle.path) for bundle in experts.bundles]
    data = ["--data", str(experts.corpus), *flags]
    return run(["ensemble", "eval", *members, *data, "--evaluator", name, "--format", "json"])


def check(name: str, experts: TinyExperts) -> Report:
    (report,) = conformance.check(name, experts=experts)
    return report


def test_an_evaluator_without_super_init_gets_its_request(
    experts: TinyExperts, capsys: pytest.CaptureFixture[str]
) -> None:
    install(FirstLine)
    assert evaluate(experts, "first-line") == 0
    results = json.loads(capsys.readouterr().out)
    assert results["request"]["data"] == str(experts.corpus)
    assert results["provenance"]["evaluator"]["plugin"] == "mine"
    overall = results["systems"][0]["metrics"]["overall"]["logprob"]
    assert math.isfinite(overall) and overall < 0  # a mean log-probability
    report = check("first-line", experts)
    assert [r.check for r in report.results if r.status != PASS] == ["options declaration"]


class Raising(FirstLine):
    """Raises inside evaluate(): a bug in the evaluator."""

    name = "raising"

    def evaluate(self, model: LanguageModel) -> dict[str, Any]:
        raise KeyError("boom")


class RaisingWhenBuilt(FirstLine):
    """Raises in its constructor: a bug in the evaluator."""

    name = "raising-built"

    def __init__(self, request: EvalRequest) -> None:
        raise ValueError("no data today")


@pytest.mark.parametrize(
    ("evaluator", "line"),
    [
        (
            Raising,
            "xelm: error: evaluator 'raising' (plugin 'mine') failed while evaluating "
            "ensemble[language]: KeyError: 'boom'; this is a bug in the evaluator "
            "(XELM_DEBUG=1 shows the traceback)",
        ),
        (
            RaisingWhenBuilt,
            "xelm: error: evaluator 'raising-built' (plugin 'mine') failed while being built: "
            "ValueError: no data today; this is a bug in the evaluator "
            "(XELM_DEBUG=1 shows the traceback)",
        ),
    ],
)
def test_an_exception_in_the_evaluator_is_one_line_naming_it(
    experts: TinyExperts, capsys: pytest.CaptureFixture[str], evaluator: type[Evaluator], line: str
) -> None:
    install(evaluator)
    assert evaluate(experts, evaluator.name) == 6
    assert capsys.readouterr().err.strip() == line
    report = check(evaluator.name, experts)
    failed = {r.check: r.reason for r in report.results if r.status == FAIL}
    assert list(failed) == ["builds" if evaluator is RaisingWhenBuilt else "evaluate()"]


def returning(name: str, result: dict[str, Any]) -> type[Evaluator]:
    """A FirstLine registered as ``name`` whose evaluate() returns ``result``."""

    def evaluate(self: FirstLine, model: LanguageModel) -> dict[str, Any]:
        return result

    return type(name.title(), (FirstLine,), {"name": name, "evaluate": evaluate})


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        ({"overall": {"logprob": math.nan}, "languages": {}}, "overall['logprob'] is nan"),
        ({"overall": {"accuracy": 0.5}, "languages": {}}, "overall['logprob'] is None"),
        ({"overall": {"logprob": 1.0}}, "the result needs 'overall' and 'languages' dicts"),
        (
            {"overall": {"logprob": 1.0}, "languages": {}, "where": Path("x")},
            "the result is not JSON-serialisable: Object of type PosixPath",
        ),
    ],
)
def test_a_result_that_breaks_the_contract_is_refused_in_one_line(
    experts: TinyExperts,
    capsys: pytest.CaptureFixture[str],
    result: dict[str, Any],
    problem: str,
) -> None:
    install(returning("broken", result))
    assert evaluate(experts, "broken") == 6
    captured = capsys.readouterr()
    assert captured.out == ""  # no results with a bare NaN in them
    prefix = (
        "xelm: error: evaluator 'broken' (plugin 'mine') broke its contract evaluating "
        f"ensemble[language]: {problem}"
    )
    line = captured.err.strip()
    assert line.startswith(prefix) and "\n" not in line, line
    assert line.endswith("; this is a bug in the evaluator (xelm plugins check broken shows it)")
    failed = {r.check: r.reason for r in check("broken", experts).results if r.status == FAIL}
    assert failed["evaluate()"].startswith(problem)


class Declared(FirstLine):
    """Declares, explicitly, that it takes no options."""

    name = "declared"
    Options = NoOptions


def test_an_explicit_no_options_declares_none(
    experts: TinyExperts, capsys: pytest.CaptureFixture[str]
) -> None:
    install(Declared)
    members = [str(bundle.path) for bundle in experts.bundles]
    given = ["--data", str(experts.corpus), "--evaluator", "declared", "--eval-arg", "nope=1"]
    assert run(["ensemble", "eval", *members, *given]) == 2
    assert capsys.readouterr().err.strip() == (
        "xelm: error: evaluator 'declared' has no option 'nope' (it takes no options)"
    )
    report = check("declared", experts)
    assert {r.check: r.status for r in report.results}["unknown option refused"] == PASS

    # a class that sets no Options at all is of plugin API 1.0: it reads the options itself
    assert not declares_options(FirstLine) and declares_options(Declared)
    install(FirstLine)
    request = EvalRequest(str(experts.corpus), options={"k": "1", "name": "x"})
    assert build_evaluator("first-line", request).request.options == {"k": 1, "name": "x"}


class Tuned(FirstLine):
    """Declares two options with defaults."""

    name = "tuned"

    @dataclass(frozen=True, kw_only=True)
    class Options:
        shift: float = option(0.0, help="Added to the result.")
        label: str = option("first", help="A name.")


def test_results_record_every_option_a_declaring_plugin_ran_with(
    experts: TinyExperts, capsys: pytest.CaptureFixture[str]
) -> None:
    install(Tuned)
    assert evaluate(experts, "tuned", "--eval-arg", "shift=2") == 0
    results = json.loads(capsys.readouterr().out)
    assert results["provenance"]["evaluator"]["options"] == {"shift": 2.0, "label": "first"}
    assert results["provenance"]["router"]["options"] == {"fallback": None}  # all defaults
    assert results["request"]["options"] == {"shift": 2.0}  # what the user gave
    assert results["ensemble"]["router"] == {"name": "language", "options": {}}

    install(FirstLine)  # plugin API 1.0: no declaration, so the given options alone
    assert evaluate(experts, "first-line", "--eval-arg", "k=1") == 0
    results = json.loads(capsys.readouterr().out)
    assert results["provenance"]["evaluator"]["options"] == {"k": 1}


def test_a_folder_named_for_an_evaluators_task_is_refused_naming_task(
    experts: TinyExperts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plugin's evaluator declares its tasks; a folder named for one, evaluated without --task
    (so by the perplexity evaluator, which finds no corpus in it), names --task as the way out."""

    class Quiz(FirstLine):
        name = "quiz-eval"
        tasks = ("quiz",)

    install(Quiz)
    folder = tmp_path / "quiz-v2"
    folder.mkdir()
    (folder / "items.tsv").write_text("question\tanswer\n")
    members = [str(bundle.path) for bundle in experts.bundles]
    assert run(["ensemble", "eval", *members, "--data", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.endswith("; to evaluate the quiz task in context pass --task quiz\n")
