"""`xelm plugins check` (xelm_cli/plugin/conformance/) and `xelm plugins show`: every
first-party router and evaluator passes the conformance check on three tiny real experts;
deliberately broken routers fail it with the right lines."""

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from xelm_cli.api import (
    Document,
    ExpertInfo,
    OutputRouter,
    PluginError,
    PreRouter,
    Register,
    ScoredDocument,
    UsageError,
    Weights,
    hookimpl,
    option,
)
from xelm_cli.cli import app, run
from xelm_cli.ensemble.routing import build_router
from xelm_cli.plugin import conformance, host
from xelm_cli.plugin.conformance import FAIL, PASS, SKIP, Report, TinyExperts, tiny
from xelm_cli.plugin.registry import FIRST_PARTY_DISTRIBUTION, Registration, Registry

pytestmark = pytest.mark.usefixtures("isolated_registry")


def statuses(report: Report) -> dict[str, str]:
    return {result.check: result.status for result in report.results}


def failures(report: Report) -> dict[str, str]:
    return {result.check: result.reason for result in report.results if result.status == FAIL}


def only(reports: list[Report]) -> Report:
    assert len(reports) == 1, reports
    return reports[0]


# ---------------------------------------------------------------------------- first party


ROUTER_CHECKS = {
    "options declaration",
    "defaults round-trip",
    "unknown option refused",
    "builds",
    "arguments not mutated",
    "deterministic",
    "weights shape",
    "non-negative",
    "normalised",
    "runs in an ensemble",
}


@pytest.mark.parametrize(
    ("name", "options", "extra"),
    [
        ("uniform", {}, {"stride", "fallback"}),
        ("fixed", {"weights": "1,2,3"}, {"stride", "fallback"}),
        ("language", {}, {"stride", "fallback"}),
        ("language", {"fallback": "posterior"}, {"stride", "fallback"}),
        ("oracle", {}, {"stride", "fallback", "calibration round-trip"}),
        ("posterior", {"top_k": "2"}, {"causal", "calibration round-trip"}),
        ("posterior-last-token", {}, {"causal", "calibration round-trip"}),
    ],
)
def test_every_first_party_router_passes(
    tiny_experts: TinyExperts, name: str, options: dict[str, str], extra: set[str]
) -> None:
    report = only(conformance.check(name, router_args=options, experts=tiny_experts))
    assert (report.kind, report.name, report.plugin) == ("router", name, "routers")
    assert failures(report) == {}
    assert statuses(report) == dict.fromkeys(ROUTER_CHECKS | extra, PASS)


def test_the_tfidf_router_needs_an_allocation_and_passes_with_one(
    tiny_experts: TinyExperts,
) -> None:
    with pytest.raises(UsageError) as caught:
        conformance.check("tfidf", experts=tiny_experts)
    assert str(caught.value).startswith("router 'tfidf' needs option 'allocation'")
    assert str(caught.value).endswith("pass --router-arg allocation=VALUE")

    from xelm_tfidf.embedder import TfidfSettings
    from xelm_tfidf.fitting import fit_sample
    from xelm_tfidf.kmeans import KMeansSettings
    from xelm_tfidf.state import save_model

    texts = [
        Document(text, language)
        for language in tiny.LANGUAGES
        for text in tiny.sentences(language, 60)
    ]
    result = fit_sample(
        texts,
        kmeans=KMeansSettings(k=3),
        tfidf=TfidfSettings(max_features=1000, n_components=8),
        max_per_language=None,
        assignment="nearest",
    )
    allocation = save_model(
        tiny_experts.root / "tfidf", result.model, shares=result.shares, training={}
    )
    options = {"allocation": str(allocation.path), "experts_in_order": "true", "stride": "4"}
    report = only(conformance.check("tfidf", router_args=options, experts=tiny_experts))
    assert failures(report) == {}
    assert statuses(report) == dict.fromkeys(ROUTER_CHECKS | {"stride", "fallback"}, PASS)
    stride = next(r for r in report.results if r.check == "stride")
    assert stride.reason == "4: routes the text before target tokens 0, 4, 8, ..."


def test_first_party_evaluators(tiny_experts: TinyExperts) -> None:
    perplexity = only(conformance.check("perplexity", experts=tiny_experts))
    assert failures(perplexity) == {}
    lines = {r.check: r.reason for r in perplexity.results}
    assert lines["builds"] == "on a generated corpus"
    assert lines["evaluate()"].startswith("overall perplexity = ")
    assert lines["evaluate()"].endswith(" over 3 languages")
    assert lines["options declaration"] == (
        "declared by an Options dataclass; options: config, split, text_column, lang_map"
    )

    icl = only(conformance.check("icl", experts=tiny_experts))
    assert failures(icl) == {}
    assert {r.check: r.reason for r in icl.results}["builds"] == (
        "on a generated jsonl multiple-choice task"
    )

    # lm-eval cannot build its tasks from generated data: said plainly, not a failure
    lmeval = only(conformance.check("lm-eval", experts=tiny_experts))
    assert failures(lmeval) == {}
    skipped = [r for r in lmeval.results if r.status == SKIP]
    assert [r.check for r in skipped] == ["evaluate()"]
    assert skipped[0].reason.startswith("not run: it needs data that cannot be generated here")
    assert skipped[0].reason.endswith("checked its attributes and options only")


def test_a_name_that_is_no_router_or_evaluator_is_one_line() -> None:
    with pytest.raises(UsageError) as caught:
        conformance.check("causal-lm")
    assert str(caught.value) == (
        "xelm plugins check runs routers and evaluators; 'causal-lm' is a trainer "
        "(see xelm plugins show causal-lm)"
    )
    with pytest.raises(
        UsageError, match=r"^no router or evaluator 'nope' is installed \(routers: "
    ):
        conformance.check("nope")


def test_options_that_do_not_fit_the_checks_experts_are_the_users_to_fix(
    capsys: pytest.CaptureFixture[str], tiny_experts: TinyExperts
) -> None:
    """--router-arg weights=1,2 for the check's three experts: the fixed router refuses them
    (a UsageError), which is the options' fault, not a failed check of the router (was: FAIL
    routes, exit 6, and the checks after it not run)."""
    refusal = (
        "the --router-arg given do not fit the check's 3 tiny experts (en / tr / es): router "
        "'fixed' refused them: the fixed router has 2 weights but the ensemble has 3 experts: "
        "give one weight per expert"
    )
    with pytest.raises(UsageError) as caught:
        conformance.check("fixed", router_args={"weights": "1,2"}, experts=tiny_experts)
    assert str(caught.value) == refusal
    (report,) = conformance.check("fixed", router_args={"weights": "1,1,2"}, experts=tiny_experts)
    assert not report.failed and "runs in an ensemble" in [r.check for r in report.results]
    # a router refusing them when the ensemble is built (check_experts): the same
    with pytest.raises(UsageError) as caught:
        conformance.check("posterior", router_args={"prior": "1,2"}, experts=tiny_experts)
    assert str(caught.value).startswith(
        "the --router-arg given do not fit the check's 3 tiny experts (en / tr / es): router "
        "'posterior' refused them: the posterior prior has 2 values but the ensemble has 3"
    ), str(caught.value)


def test_options_for_the_other_kind_are_refused_not_ignored(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(["plugins", "check", "uniform", "--eval-arg", "x=1"]) == UsageError.exit_code
    assert capsys.readouterr().err == (
        "xelm: error: --eval-arg is for evaluators, and router 'uniform' (plugin 'routers') is "
        "no evaluator: give its options as --router-arg\n"
    )
    with pytest.raises(UsageError) as caught:
        conformance.check("perplexity", router_args={"x": "1"})
    assert str(caught.value) == (
        "--router-arg is for routers, and evaluator 'perplexity' (plugin 'eval') is no router: "
        "give its options as --eval-arg"
    )


# ---------------------------------------------------------------------------- broken routers


class NotNormalised(PreRouter):
    """Rows summing to 2."""

    name = "not-normalised"

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        return np.full((len(documents), len(experts)), 2.0 / len(experts))


class Peeking(OutputRouter):
    """Weighs token t by its own likelihood: leaks the answer."""

    name = "peeking"

    def route_tokens(
        self, scored: ScoredDocument, experts: Sequence[ExpertInfo]
    ) -> NDArray[np.float64]:
        shifted = np.exp(scored.logprobs - scored.logprobs.max(axis=0, keepdims=True))
        return np.asarray(shifted / shifted.sum(axis=0, keepdims=True), dtype=np.float64)


class Mutating(PreRouter):
    """Sorts the caller's list of experts in place."""

    name = "mutating"

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        assert isinstance(experts, list)
        experts.sort(key=lambda e: e.name, reverse=True)
        return np.full((len(documents), len(experts)), 1.0 / len(experts))


class Random(PreRouter):
    """Different weights on every call."""

    name = "random"

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        weights = np.random.default_rng().uniform(0.1, 1.0, (len(documents), len(experts)))
        return np.asarray(weights / weights.sum(axis=1, keepdims=True), dtype=np.float64)


class Sloppy(PreRouter):
    """Takes any keyword silently and sets a stride of 0."""

    name = "sloppy"

    def __init__(self, **anything: Any) -> None:
        self.stride = 0

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        return np.full((len(documents), len(experts)), 1.0 / len(experts))


class Buggy(PreRouter):
    """A bug in its constructor: a TypeError unrelated to the options."""

    name = "buggy"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = len(scale)  # type: ignore[arg-type]

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        raise NotImplementedError


class NoInit(PreRouter):
    """Declares an option but has no constructor that takes it: it builds only without
    options, and `--router-arg expert=0`, the default, would fail at use."""

    name = "no-init"

    @dataclass(frozen=True, kw_only=True)
    class Options:
        expert: int = option(0, help="The expert.", minimum=0)

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        return np.full((len(documents), len(experts)), 1.0 / len(experts))


@dataclass(frozen=True)
class UnreadableOptions:
    level: "Undefined" = option(1, help="An annotation that names nothing.")  # type: ignore[name-defined]  # noqa: F821


class Unreadable(NotNormalised):
    """Options xelm cannot read."""

    name = "unreadable"
    Options = UnreadableOptions


class BrokenRouters:
    @hookimpl
    def register_routers(self, register: Register) -> None:
        for router in (NotNormalised, Peeking, Mutating, Random, Sloppy, Buggy, NoInit, Unreadable):
            register(router.name, router)


@pytest.fixture
def broken(isolated_registry: None) -> None:
    host.reset_registry(host.load_registry(extra_plugins=[("broken-routers", BrokenRouters())]))


@pytest.mark.usefixtures("broken")
@pytest.mark.parametrize(
    ("name", "failed"),
    [
        (
            "not-normalised",
            {"normalised": "row 0 sums to 2; each row must sum to 1 within 1e-6"},
        ),
        (
            "peeking",
            {
                "causal": "changing the log-probabilities of tokens >= 0 moved the weights of "
                "token 0 by "
            },
        ),
        ("mutating", {"arguments not mutated": "the router modified its experts"}),
        ("random", {"deterministic": "the same input twice gives different weights"}),
        (
            "sloppy",
            {
                "unknown option refused": "xelm_check_no_such_option=1 is accepted by its "
                "constructor (Python calls)",
                "stride": "stride is 0; it must be None or an int >= 1",
            },
        ),
        ("buggy", {"builds": "Buggy(**options) raised TypeError: object of type 'float' has no"}),
        (
            "no-init",
            {
                "builds": "NoInit(**options) with its defaults given explicitly (expert=0) raised "
                "TypeError: NoInit() takes no arguments; its constructor must take every "
                "declared option as a keyword"
            },
        ),
    ],
)
def test_broken_routers_fail_with_the_right_lines(
    tiny_experts: TinyExperts, name: str, failed: dict[str, str]
) -> None:
    report = only(conformance.check(name, experts=tiny_experts))
    found = failures(report)
    assert set(found) == set(failed), report.results
    for check, reason in failed.items():
        assert found[check].startswith(reason), (check, found[check])
        assert "\n" not in found[check]
    assert statuses(report)["options declaration"] == PASS


@pytest.mark.usefixtures("broken")
def test_options_it_cannot_read_are_a_failed_check_not_an_internal_error(
    tiny_experts: TinyExperts,
) -> None:
    """The declaration was read before any check ran, so NameError ended `xelm plugins check`
    as xelm's internal error (exit 70); it is the check that fails, and nothing runs after."""
    report = only(conformance.check("unreadable", experts=tiny_experts))
    assert [(r.check, r.status) for r in report.results] == [("options declaration", FAIL)]
    assert report.results[0].reason == (
        f"the options declaration of 'unreadable' ({__name__}:Unreadable) cannot be read: "
        "NameError: name 'Undefined' is not defined; this is a bug in its plugin"
    )


@pytest.mark.usefixtures("broken")
def test_a_bug_in_a_constructor_is_a_plugin_error_not_an_options_error() -> None:
    with pytest.raises(PluginError) as caught:
        build_router("buggy")
    assert str(caught.value) == (
        "router 'buggy' (plugin 'broken-routers') failed while being built: TypeError: object "
        "of type 'float' has no len(); this is a bug in the router (XELM_DEBUG=1 shows the "
        "traceback)"
    )
    with pytest.raises(UsageError, match=r"^router 'buggy': option 'scale' expects float"):
        build_router("buggy", {"scale": "big"})


def test_a_bug_in_xelms_own_router_constructor_stays_an_internal_error() -> None:
    own = Registration("buggy", "router", Buggy, "routers", "", FIRST_PARTY_DISTRIBUTION, "0")
    registry = Registry()
    registry.add(own)
    host.reset_registry(registry)
    with pytest.raises(TypeError, match="object of type 'float' has no len"):
        build_router("buggy")


@pytest.mark.usefixtures("broken")
def test_check_command_exit_codes_and_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["plugins", "check", "peeking"]) == PluginError.exit_code
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "router peeking (plugin broken-routers)"
    assert "  PASS  normalised: every column sums to 1 within 1e-6" in lines
    (causal,) = [line for line in lines if "causal" in line]
    assert causal.startswith("  FAIL  causal: changing the log-probabilities of tokens >= 0")
    assert captured.err.startswith(
        "xelm: error: router 'peeking' failed 1 check (causal); first: causal: changing"
    )
    assert captured.err.count("\n") == 1

    assert run(["plugins", "check", "posterior", "--json"]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert report["passed"] is True and report["kind"] == "router"
    assert {c["check"]: c["status"] for c in report["checks"]}["causal"] == PASS

    assert run(["plugins", "check", "tfidf"]) == UsageError.exit_code
    assert capsys.readouterr().err.endswith("; pass --router-arg allocation=VALUE\n")


# ---------------------------------------------------------------------------- show / list


def test_show_prints_each_kind_with_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["plugins", "show", "tfidf", "--json"]) == 0
    clusterer, router = json.loads(capsys.readouterr().out)
    assert (clusterer["kind"], router["kind"]) == ("clusterer", "router")
    assert router["class"] == "xelm_tfidf.router:TfidfRouter"
    assert (router["plugin"], router["distribution"], router["qualified_name"]) == (
        "tfidf",
        "xelm",
        "xelm:tfidf",
    )
    assert router["version"]
    assert router["description"].startswith("c-BTM routing: softmax of the distances")
    options = {o["name"]: o for o in router["options"]}
    assert list(options) == [
        "allocation", "temperature", "top_k", "stride", "distance", "experts_in_order",
        "offsets",
    ]  # fmt: skip
    assert options["allocation"]["required"] is True and options["allocation"]["type"] == "path"
    assert (options["temperature"]["type"], options["temperature"]["default"]) == ("float", 0.1)
    assert options["distance"]["type"] == "one of squared, squared-twice"

    assert run(["plugins", "show", "posterior"]) == 0
    out = capsys.readouterr().out
    assert "router posterior\n  class:       xelm_routers.posterior:PosteriorRouter\n" in out
    assert "  options:     --router-arg KEY=VALUE (from its Options dataclass)\n" in out
    assert "    top_k  int or none; default none\n" in out
    assert "           Keep the K largest weights of each token and renormalise.\n" in out

    assert run(["plugins", "show", "uniform"]) == 0
    assert "  options:     none: it takes no options\n" in capsys.readouterr().out


def test_show_unknown_name_lists_what_is_installed(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["plugins", "show", "nope"]) == UsageError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("xelm: error: nothing named 'nope' is installed (installed: causal-lm, ")
    assert "posterior-last-token" in err and err.count("\n") == 1


def test_list_describes_every_registration(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["plugins", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    described = {(r["kind"], r["name"]): r for r in listing["registrations"]}
    assert described[("router", "language")]["description"] == (
        "Top-1 by language: each document goes to the first expert covering its language."
    )
    assert described[("router", "tfidf")]["qualified_name"] == "xelm:tfidf"
    assert all(r["description"] for r in listing["registrations"])
    assert run(["plugins", "list"]) == 0
    out = capsys.readouterr().out
    assert "Description" in out and "Equal weight on every expert" in out


def test_generated_sentences_are_deterministic() -> None:
    assert tiny.sentences("tr", 3) == tiny.sentences("tr", 3)
    assert tiny.sentences("tr", 3) != tiny.sentences("tr", 3, seed=1)
    assert all(s.endswith(".") for s in tiny.sentences("en", 5))
    random.seed(0)  # the generator does not use the global random state
    first = tiny.sentences("es", 2)
    random.seed(1)
    assert tiny.sentences("es", 2) == first


# ---------------------------------------------------------------------------- reserved names


def test_reserved_command_names_are_the_root_apps_and_the_specs() -> None:

    builtin = {
        group.name or (group.typer_instance and group.typer_instance.info.name)
        for group in app.registered_groups
        if group.rich_help_panel != host.PLUGIN_HELP_PANEL
    } | {
        command.name
        for command in app.registered_commands
        if command.rich_help_panel != host.PLUGIN_HELP_PANEL
    }
    assert builtin == set(host.BUILTIN_COMMANDS)
    spec = (Path(__file__).parents[1] / "spec" / "plugin-api.md").read_text()
    found = re.search(r"name of a built-in command group: (.*?) \(reserved", spec, re.DOTALL)
    assert found is not None
    assert set(re.findall(r"`([a-z-]+)`", found.group(1))) == set(host.BUILTIN_COMMANDS)
