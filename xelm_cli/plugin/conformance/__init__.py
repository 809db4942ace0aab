"""``xelm plugins check NAME``: run a router or an evaluator against tiny generated experts and
report, one line per check, what spec/plugin-api.md requires of it.

The experts are real: three tiny randomly initialised bundles (one per language of a small
generated corpus, sharing a byte-level BPE tokenizer trained on it), built in a temporary
directory in a few seconds on a CPU. A router is checked on documents of those languages: the
shape and normalisation of its weights, determinism, that it leaves its arguments alone,
causality (an output router), its options round-trip, its ``stride``/``fallback`` attributes,
and that the ensemble runner runs it. An evaluator is checked for its declared attributes and
options and, when it can build its data from a generated corpus or multiple-choice task without
the network, for what ``evaluate()`` returns on the tiny experts.

Normative text: spec/plugin-api.md section 5.2.
"""

import contextlib
from collections.abc import Mapping
from typing import Any

from xelm_cli.common.errors import PluginError, UsageError
from xelm_cli.plugin.conformance.evaluators import check_evaluator
from xelm_cli.plugin.conformance.report import (
    FAIL,
    PASS,
    SKIP,
    Report,
    given_options,
    option_via,
)
from xelm_cli.plugin.conformance.routers import check_router
from xelm_cli.plugin.conformance.tiny import TinyExperts, build_tiny_experts, tiny_experts
from xelm_cli.plugin.host import get_registry
from xelm_cli.plugin.registry import Registration

__all__ = [
    "FAIL",
    "PASS",
    "SKIP",
    "Report",
    "TinyExperts",
    "build_tiny_experts",
    "check",
    "tiny_experts",
]


def check(
    name: str,
    *,
    router_args: Mapping[str, Any] | None = None,
    eval_args: Mapping[str, Any] | None = None,
    experts: TinyExperts | None = None,
) -> list[Report]:
    """Check every router and evaluator that ``name`` (or ``DIST:NAME``) selects.

    ``router_args``/``eval_args``: options for the check to build them with (text, as
    ``--router-arg``/``--eval-arg`` give them, or JSON values); needed for options without a
    default. Anything the plugin gets wrong is a failed check in the report, not an exception;
    an option the user must give and did not, or options for a kind ``name`` is not
    (``eval_args`` for a router), is a one-line :class:`UsageError`.
    """
    registry = get_registry()
    registrations: list[Registration] = []
    refusals: list[UsageError] = []  # of a name that is a router or evaluator, but not here
    for kind in ("router", "evaluator"):
        try:
            registrations.append(registry.get(kind, name))
        except UsageError as exc:
            if registry.knows(kind, name):
                refusals.append(exc)
    if refusals and not registrations:  # shared, misqualified, left out by XELM_PLUGINS
        raise refusals[0]
    if not registrations:
        other = [
            kind
            for kind in ("clusterer", "trainer", "command")
            if registry.all_of(kind, name.rpartition(":")[2])
        ]
        if other:
            raise UsageError(
                f"xelm plugins check runs routers and evaluators; {name!r} is a "
                f"{' and a '.join(other)} (see xelm plugins show {name})"
            )
        routers = sorted({r.name for r in registry.all_of("router")})
        evaluators = sorted({r.name for r in registry.all_of("evaluator")})
        raise UsageError(
            f"no router or evaluator {name!r} is installed (routers: "
            f"{', '.join(routers) or 'none'}; evaluators: {', '.join(evaluators) or 'none'})"
        )
    _refuse_options_of_other_kind(name, registrations, router_args, eval_args)
    for registration in registrations:  # missing required options: before any model is built
        values = router_args if registration.kind == "router" else eval_args
        with contextlib.suppress(PluginError):  # the plugin's bug: a failed check in its report
            given_options(registration, values)
    if experts is None:
        with tiny_experts() as built:
            return check(name, router_args=router_args, eval_args=eval_args, experts=built)
    reports = []
    for registration in registrations:
        if registration.kind == "router":
            reports.append(check_router(registration, router_args or {}, experts))
        else:
            reports.append(check_evaluator(registration, eval_args or {}, experts))
    return reports


def _refuse_options_of_other_kind(
    name: str,
    registrations: list[Registration],
    router_args: Mapping[str, Any] | None,
    eval_args: Mapping[str, Any] | None,
) -> None:
    """Options for a kind that ``name`` is not (``--eval-arg`` for a router) would be ignored:
    refused in one line naming what ``name`` is."""
    kinds = {registration.kind for registration in registrations}
    for kind, values, via in (
        ("router", router_args, "--router-arg"),
        ("evaluator", eval_args, "--eval-arg"),
    ):
        if values and kind not in kinds:
            other = registrations[0]
            raise UsageError(
                f"{via} is for {kind}s, and {other.object_label()} is no {kind}: "
                f"give its options as {option_via(other)}"
            )
