"""What a conformance check reports (one line per check), and the option checks that routers
and evaluators share."""

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from xelm_cli.common.errors import PluginError, UsageError, XelmError, exception_line
from xelm_cli.plugin.options import (
    as_text,
    declared_options,
    declares_options,
    options_class,
    parse_options,
)
from xelm_cli.plugin.registry import Registration, bugs_reported

PASS, FAIL, SKIP = "pass", "fail", "skip"
UNKNOWN_OPTION = "xelm_check_no_such_option"


@dataclass(frozen=True)
class CheckResult:
    """One line of the report: ``check`` passed, failed or was skipped, and why."""

    check: str
    status: str
    reason: str

    def line(self) -> str:
        return f"{self.status.upper():4}  {self.check}: {self.reason}"


@dataclass
class Report:
    """What ``xelm plugins check`` found for one registration."""

    kind: str
    name: str
    plugin: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == FAIL]

    def add(self, check: str, status: str, reason: str) -> None:
        self.results.append(CheckResult(check, status, reason))

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "plugin": self.plugin,
            "passed": not self.failed,
            "checks": [
                {"check": r.check, "status": r.status, "reason": r.reason} for r in self.results
            ],
        }


def plugin_label(registration: Registration) -> str:
    return f"{registration.kind} {registration.name!r}"


def option_via(registration: Registration) -> str:
    return "--router-arg" if registration.kind == "router" else "--eval-arg"


def given_options(registration: Registration, values: Mapping[str, Any] | None) -> dict[str, Any]:
    """The user's options converted by the declaration (UsageError if one is wrong or missing;
    PluginError naming the plugin when its declaration cannot be read or raises)."""
    owner = registration.obj
    if registration.kind == "evaluator" and not declares_options(owner):
        return dict(values or {})
    with bugs_reported(registration, "reading its options"):
        return parse_options(
            owner,
            dict(values or {}),
            label=plugin_label(registration),
            via=option_via(registration),
        )


def recorded(value: Any) -> Any:
    """``value`` as JSON would carry it (tuples as lists, paths as text)."""
    return json.loads(json.dumps(value, default=str))


def failure(exc: BaseException) -> str:
    if isinstance(exc, XelmError):
        return f"{type(exc).__name__}: {exception_line(exc)}"
    return f"raised {exception_line(exc, with_type=True)}"


def check_options(
    registration: Registration, values: Mapping[str, Any] | None, report: Report
) -> dict[str, Any] | None:
    """Declaration readable, defaults round-trip as text, unknown options refused. Returns the
    user's ``values`` converted by the declaration; None (a failed check) when it cannot be
    read."""
    owner, label, via = registration.obj, plugin_label(registration), option_via(registration)
    try:
        specs = declared_options(owner)
        given = given_options(registration, values)
    except PluginError as exc:
        report.add("options declaration", FAIL, exception_line(exc))
        return None
    where = "an Options dataclass" if options_class(owner) is not None else "its constructor"
    names = ", ".join(s.name for s in specs) or "none"
    report.add("options declaration", PASS, f"declared by {where}; options: {names}")
    bad = []
    for spec in specs:
        if spec.required or not spec.cli:
            continue
        # none as JSON null (how an ensemble file records it; a text "none" is a str option's
        # own value), anything else as the text a user would type
        given_as = None if spec.default is None else as_text(spec.default)
        try:
            values = {**given, spec.name: given_as}
            back = parse_options(owner, values, label=label, via=via)[spec.name]
        except Exception as exc:
            why = exc if isinstance(exc, UsageError) else failure(exc)
            bad.append(f"{spec.name}={as_text(spec.default)} is refused ({why})")
            continue
        if recorded(back) != recorded(spec.default):
            bad.append(f"{spec.name}={as_text(spec.default)} reads back as {back!r}")
    if bad:
        report.add("defaults round-trip", FAIL, "; ".join(bad))
    else:
        report.add("defaults round-trip", PASS, "every default, typed as text, parses to itself")
    try:
        parse_options(owner, {**given, UNKNOWN_OPTION: "1"}, label=label, via=via)
    except UsageError:
        refused = True
    else:
        refused = False
    if registration.kind == "router":
        try:
            owner(**given, **{UNKNOWN_OPTION: 1})
        except Exception:
            built = False
        else:
            built = True
        if refused and not built:
            report.add("unknown option refused", PASS, f"{UNKNOWN_OPTION}=1 is refused")
        else:
            how = "by the declaration" if not refused else "by its constructor (Python calls)"
            report.add("unknown option refused", FAIL, f"{UNKNOWN_OPTION}=1 is accepted {how}")
    return given
