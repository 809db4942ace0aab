"""A third-party evaluator held to its contract (spec/plugin-api.md 7.3) by `xelm ensemble eval`
and `xelm plugins check`: xelm sets ``evaluator.request`` when the class did not, a bad result or
an exception in ``evaluate()`` is one line naming the evaluator and its plugin (exit 6), never an
internal error after all the scoring."""

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from evaluator_helpers import FirstLine, install_evaluator

from xelm_cli.api import EvalRequest, Evaluator, LanguageModel, NoOptions, option
from xelm_cli.cli import run
from xelm_cli.ensemble.results import build_evaluator
from xelm_cli.plugin import conformance
from xelm_cli.plugin.conformance import FAIL, PASS, Report, TinyExperts
from xelm_cli.plugin.options import declares_options

pytestmark = pytest.mark.usefixtures("isolated_registry")


def evaluate(experts: TinyExperts, name: str, *flags: str) -> int:
    """``xelm ensemble eval`` of the tiny experts with evaluator ``name``: its exit code."""
    members = [str(bundle.path) for bundle in experts.bundles]
    data = ["--data", str(experts.corpus), *flags]
    return run(["ensemble", "eval", *members, *data, "--evaluator", name, "--format", "json"])


def check(name: str, experts: TinyExperts) -> Report:
    (report,) = conformance.check(name, experts=experts)
    return report


def test_an_evaluator_without_super_init_gets_its_request(
    tiny_experts: TinyExperts, capsys: pytest.CaptureFixture[str]
) -> None:
    install_evaluator(FirstLine)
    assert evaluate(tiny_experts, "first-line") == 0
    results = json.loads(capsys.readouterr().out)
    assert results["request"]["data"] == str(tiny_experts.corpus)
    assert results["provenance"]["evaluator"]["plugin"] == "mine"
    assert results["request"]["protocol"] is None  # it scores no choices (uses_protocol False)
    overall = results["systems"][0]["metrics"]["overall"]["logprob"]
    assert math.isfinite(overall) and overall < 0  # a mean log-probability
    report = check("first-line", tiny_experts)
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
    tiny_experts: TinyExperts,
    capsys: pytest.CaptureFixture[str],
    evaluator: type[Evaluator],
    line: str,
) -> None:
    install_evaluator(evaluator)
    assert evaluate(tiny_experts, evaluator.name) == 6
    assert capsys.readouterr().err.strip() == line
    report = check(evaluator.name, tiny_experts)
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
        (
            {"overall": {"logprob": math.nan}, "languages": {}},
            "the result holds a NaN or infinity, which JSON cannot hold (use None)",
        ),
        (  # anywhere: results files are JSON, which has no NaN (a strict reader refuses it)
            {"overall": {"logprob": 1.0}, "languages": {"en": {"logprob": math.nan}}},
            "the result holds a NaN or infinity, which JSON cannot hold (use None)",
        ),
        ({"overall": {"logprob": None}, "languages": {}}, "overall['logprob'] is None"),
        ({"overall": {"logprob": True}, "languages": {}}, "overall['logprob'] is True"),
        (
            {"overall": {"accuracy": 0.5}, "languages": {}},
            "overall has no 'logprob', the evaluator's primary metric",
        ),
        ({"overall": {"logprob": 1.0}}, "the result needs 'overall' and 'languages' dicts"),
        (
            {"overall": {"logprob": 1.0}, "languages": {}, "where": Path("x")},
            "the result is not JSON-serialisable: Object of type PosixPath",
        ),
    ],
)
def test_a_result_that_breaks_the_contract_is_refused_in_one_line(
    tiny_experts: TinyExperts,
    capsys: pytest.CaptureFixture[str],
    result: dict[str, Any],
    problem: str,
) -> None:
    install_evaluator(returning("broken", result))
    assert evaluate(tiny_experts, "broken") == 6
    captured = capsys.readouterr()
    assert captured.out == ""  # no results with a bare NaN in them
    prefix = (
        "xelm: error: evaluator 'broken' (plugin 'mine') broke its contract evaluating "
        f"ensemble[language]: {problem}"
    )
    line = captured.err.strip()
    assert line.startswith(prefix) and "\n" not in line, line
    assert line.endswith("; this is a bug in the evaluator (xelm plugins check broken shows it)")
    failed = {r.check: r.reason for r in check("broken", tiny_experts).results if r.status == FAIL}
    assert failed["evaluate()"].startswith(problem)


class Declared(FirstLine):
    """Declares, explicitly, that it takes no options."""

    name = "declared"
    Options = NoOptions


def test_an_explicit_no_options_declares_none(
    tiny_experts: TinyExperts, capsys: pytest.CaptureFixture[str]
) -> None:
    install_evaluator(Declared)
    members = [str(bundle.path) for bundle in tiny_experts.bundles]
    given = ["--data", str(tiny_experts.corpus), "--evaluator", "declared", "--eval-arg", "nope=1"]
    assert run(["ensemble", "eval", *members, *given]) == 2
    assert capsys.readouterr().err.strip() == (
        "xelm: error: evaluator 'declared' has no option 'nope' (it takes no options)"
    )
    report = check("declared", tiny_experts)
    assert {r.check: r.status for r in report.results}["unknown option refused"] == PASS

    # a class that sets no Options at all is of plugin API 1.0: it reads the options itself
    assert not declares_options(FirstLine) and declares_options(Declared)
    install_evaluator(FirstLine)
    request = EvalRequest(str(tiny_experts.corpus), options={"k": "1", "name": "x"})
    assert build_evaluator("first-line", request).request.options == {"k": 1, "name": "x"}


class Tuned(FirstLine):
    """Declares two options with defaults."""

    name = "tuned"

    @dataclass(frozen=True, kw_only=True)
    class Options:
        shift: float = option(0.0, help="Added to the result.")
        label: str = option("first", help="A name.")


def test_results_record_every_option_a_declaring_plugin_ran_with(
    tiny_experts: TinyExperts, capsys: pytest.CaptureFixture[str]
) -> None:
    install_evaluator(Tuned)
    assert evaluate(tiny_experts, "tuned", "--eval-arg", "shift=2") == 0
    results = json.loads(capsys.readouterr().out)
    assert results["provenance"]["evaluator"]["options"] == {"shift": 2.0, "label": "first"}
    assert results["provenance"]["router"]["options"] == {"fallback": None}  # all defaults
    assert results["request"]["options"] == {"shift": 2.0}  # what the user gave
    assert results["ensemble"]["router"] == {"name": "language", "options": {}}

    install_evaluator(FirstLine)  # plugin API 1.0: no declaration, so the given options alone
    assert evaluate(tiny_experts, "first-line", "--eval-arg", "k=1") == 0
    results = json.loads(capsys.readouterr().out)
    assert results["provenance"]["evaluator"]["options"] == {"k": 1}


def test_a_folder_named_for_an_evaluators_task_is_refused_naming_task(
    tiny_experts: TinyExperts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plugin's evaluator declares its tasks; a folder named for one, evaluated without --task
    (so by the perplexity evaluator, which finds no corpus in it), names --task as the way out."""

    class Quiz(FirstLine):
        name = "quiz-eval"
        tasks = ("quiz",)

    install_evaluator(Quiz)
    folder = tmp_path / "quiz-v2"
    folder.mkdir()
    (folder / "items.tsv").write_text("question\tanswer\n")
    members = [str(bundle.path) for bundle in tiny_experts.bundles]
    assert run(["ensemble", "eval", *members, "--data", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.endswith("; to evaluate the quiz task in context pass --task quiz\n")
