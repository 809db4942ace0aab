"""Conformance of an evaluator: its declared attributes and options, and what ``evaluate()``
returns on the tiny experts (spec/plugin-api.md 5.2, 7.3)."""

from collections.abc import Mapping
from typing import Any

from xelm_cli.common.errors import PluginError, UsageError, XelmError, exception_line
from xelm_cli.plugin.conformance.report import (
    FAIL,
    PASS,
    SKIP,
    UNKNOWN_OPTION,
    Report,
    check_options,
    failure,
)
from xelm_cli.plugin.conformance.tiny import LANGUAGES, TinyExperts
from xelm_cli.plugin.contracts import EvalRequest, result_problem
from xelm_cli.plugin.options import declares_options
from xelm_cli.plugin.registry import Registration


def check_evaluator(
    registration: Registration, values: Mapping[str, Any], experts: TinyExperts
) -> Report:
    """Attributes, options declaration and, where it can build its data offline, evaluate()."""
    from xelm_cli.ensemble.results import build_evaluator
    from xelm_cli.ensemble.routing import build_router
    from xelm_cli.ensemble.runner import EnsembleModel

    report = Report("evaluator", registration.name, registration.plugin)
    owner = registration.obj
    # registration refused a class with a wrong name, primary or higher_is_better
    direction = "higher" if owner.higher_is_better else "lower"
    report.add("attributes", PASS, f"primary metric {owner.primary!r}, {direction} is better")
    if declares_options(owner):
        if check_options(registration, values, report) is None:
            return report
        try:
            build_evaluator(
                registration.qualified_name,
                EvalRequest(data=str(experts.corpus), options={UNKNOWN_OPTION: "1"}),
            )
        except UsageError:
            report.add("unknown option refused", PASS, f"--eval-arg {UNKNOWN_OPTION}=1 is refused")
        except Exception as exc:
            report.add("unknown option refused", FAIL, f"building it {failure(exc)}")
        else:
            report.add("unknown option refused", FAIL, f"--eval-arg {UNKNOWN_OPTION}=1 is accepted")
    else:
        report.add(
            "options declaration",
            SKIP,
            "no Options (plugin API 1.0): it reads EvalRequest.options by itself",
        )
    languages = tuple(LANGUAGES)
    attempts = [
        (
            "a generated corpus",
            EvalRequest(data=str(experts.corpus), languages=languages, options=dict(values)),
        ),
        (
            "a generated jsonl multiple-choice task",
            EvalRequest(
                data=str(experts.choice_task),
                task="jsonl",
                languages=languages,
                options=dict(values),
            ),
        ),
    ]
    refusals = []
    for what, request in attempts:
        try:
            evaluator = build_evaluator(registration.qualified_name, request)
        except PluginError as exc:  # a bug while being built, not a refusal of the data
            report.add("builds", FAIL, f"on {what}: {exception_line(exc)}")
            return report
        except XelmError as exc:
            refusals.append(f"{what}: {exception_line(exc)}")
            continue
        except Exception as exc:
            report.add("builds", FAIL, f"on {what} it {failure(exc)}")
            return report
        report.add("builds", PASS, f"on {what}")
        model = EnsembleModel(experts.bundles, build_router("uniform"), device="cpu", name="check")
        try:
            result = evaluator.evaluate(model)
        except Exception as exc:
            report.add("evaluate()", FAIL, failure(exc))
            return report
        report.add(*_check_result(result, evaluator))
        return report
    report.add(
        "evaluate()",
        SKIP,
        "not run: it needs data that cannot be generated here ("
        + "; ".join(refusals)
        + "); checked its attributes and options only",
    )
    return report


def _check_result(result: Any, evaluator: Any) -> tuple[str, str, str]:
    primary = evaluator.primary  # the instance's: it may depend on the request (lm-eval's task)
    problem = result_problem(result, primary)
    if problem is not None:
        return "evaluate()", FAIL, problem
    value, languages = result["overall"][primary], result["languages"]
    return (
        "evaluate()",
        PASS,
        f"overall {primary} = {value:.4g} over {len(languages)} languages",
    )
