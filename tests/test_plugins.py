"""The plugin system: loading, registration rules, built-in routers, real installed plugins."""

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from conftest import xelm

from xelm_cli.api import (
    Clusterer,
    Document,
    Evaluator,
    ExpertInfo,
    NoOptions,
    PluginError,
    PreRouter,
    Register,
    ScoredDocument,
    UsageError,
    Weights,
    XelmError,
    check_weights,
    cluster,
    declared_options,
    get_registry,
    hookimpl,
    option,
    parse_options,
)
from xelm_cli.cli import run
from xelm_cli.ensemble.routing import build_router
from xelm_cli.plugin import host
from xelm_cli.plugin.registry import Registration, Registry

FIXTURES = Path(__file__).parent / "fixtures"
BROKEN_WARNING = (
    "xelm: warning: plugin 'broken' skipped: ModuleNotFoundError: "
    "No module named 'xelm_missing_dependency'"
)
EXPERTS = [
    ExpertInfo("e0", "romance", ("en", "es")),
    ExpertInfo("e1", "turkic", ("tr", "az")),
    ExpertInfo("e2", "turkish", ("tr",)),
]


pytestmark = pytest.mark.usefixtures("isolated_registry")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def docs(*languages: str | None) -> list[Document]:
    return [Document(text="...", language=language) for language in languages]


def router(name: str, *args: Any) -> PreRouter:
    instance = get_registry().get("router", name).obj(*args)
    assert isinstance(instance, PreRouter)
    return instance


# ---------------------------------------------------------------- built-in plugin, in process


def test_plugins_list_json_shows_the_builtin_routers(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "plugins", "list", "--json")
    assert code == 0
    listing = json.loads(out)
    assert listing["failures"] == [] and listing["problems"] == []
    (routers,) = [p for p in listing["plugins"] if p["name"] == "routers"]
    assert routers["distribution"] == "xelm"
    assert routers["registered"]["router"] == [
        "uniform", "fixed", "language", "oracle", "posterior", "posterior-last-token",
    ]  # fmt: skip
    assert routers["registered"]["command"] == []


def test_plugins_list_table_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "plugins", "list")
    assert code == 0
    assert (
        "routers" in out
        and "router: uniform, fixed, language," in out
        and "posterior-last-token" in out
    )
    code, out, _ = cli(capsys, "plugins", "list", "--help")
    assert code == 0 and "Example: xelm plugins list --json" in out


def test_uniform_router_spreads_weight_evenly() -> None:
    weights = router("uniform").route(docs("tr", None), EXPERTS[:2] + EXPERTS[:2])
    np.testing.assert_array_equal(weights, np.full((2, 4), 0.25))
    assert not router("uniform").needs_expert_outputs


def test_fixed_router_normalises_and_checks_its_weights() -> None:
    weights = router("fixed", [1, 3]).route(docs("tr", "en"), EXPERTS[:2])
    np.testing.assert_array_equal(weights, [[0.25, 0.75], [0.25, 0.75]])
    with pytest.raises(UsageError, match="has 2 weights but the ensemble has 3 experts"):
        router("fixed", [1, 3]).route(docs("tr"), EXPERTS)
    for bad in ([1, -1], [0, 0], [], ["x"], [float("nan")]):
        with pytest.raises(UsageError):
            router("fixed", bad)


def test_language_router_picks_the_first_expert_covering_the_language() -> None:
    weights = router("language").route(docs("tr", "en", "az", "es"), EXPERTS)
    np.testing.assert_array_equal(weights, [[0, 1, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0]])
    with pytest.raises(UsageError, match=r"'fr' \(covered: en, es, tr, az\)"):
        router("language").route(docs("tr", "fr"), EXPERTS)
    with pytest.raises(UsageError, match="document 0 has none"):
        router("language").route(docs(None), EXPERTS)


def test_builtin_routers_pass_check_weights() -> None:
    documents = docs("tr", "es", "az")
    for name, args in (("uniform", ()), ("fixed", ([2, 1, 1],)), ("language", ())):
        weights = router(name, *args).route(documents, EXPERTS)
        checked = check_weights(weights, len(documents), len(EXPERTS), router=name)
        assert checked.dtype == np.float64 and checked.shape == (3, 3)


def test_unknown_router_names_the_available_ones() -> None:
    with pytest.raises(
        UsageError,
        match=r"unknown router 'nope' \(available: fixed, language, oracle, posterior, "
        r"posterior-last-token, tfidf, uniform\)",
    ):
        get_registry().get("router", "nope")


@pytest.mark.parametrize(
    ("kind", "name", "guess"),
    [("router", "posteror", "'posterior'"), ("clusterer", "tfdf", "'tfidf'"),
     ("evaluator", "perplexty", "'perplexity'"), ("router", "xelm:langauge", "'language'")],
)  # fmt: skip
def test_a_mistyped_plugin_name_suggests_the_closest(kind: str, name: str, guess: str) -> None:
    with pytest.raises(UsageError, match=rf"^unknown {kind} '{name}' \(did you mean {guess}\? "):
        get_registry().get(kind, name)  # type: ignore[arg-type]


class UnnormalisedRouter(PreRouter):
    name = "unnormalised"

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        return np.ones((len(documents), len(experts)))


def test_check_weights_catches_bad_router_output() -> None:
    bad = UnnormalisedRouter().route(docs("tr"), EXPERTS)
    with pytest.raises(
        PluginError,
        match=r"router 'unnormalised' returned weights summing to 3 "
        r"for document 0",
    ):
        check_weights(bad, 1, 3, router="unnormalised")
    cases = [
        (np.full((2, 3), 1 / 3), 1, 3, r"shape \(2, 3\); expected \(1, 3\)"),
        ([[0.5, float("nan"), 0.5]], 1, 3, "NaN or infinite weights"),
        ([[1.5, -0.5, 0.0]], 1, 3, r"negative weight -0.5 \(document 0, expert 1\)"),
        ([[1.0], [0.9]], 2, 1, "summing to 0.9 for document 1"),
        ([["a", "b"]], 1, 2, "not a numeric array"),
    ]
    for weights, n_docs, n_experts, message in cases:
        with pytest.raises(XelmError, match=message):
            check_weights(weights, n_docs, n_experts)
    ok = check_weights([[0.5, 0.5 + 5e-7]], 1, 2)  # within the 1e-6 tolerance
    assert ok.dtype == np.float64


# ---------------------------------------------------------------- in-process plugins


class RouterPlugin:
    """A plugin object registering the given router classes."""

    def __init__(self, *routers: type[PreRouter]) -> None:
        self.routers = routers

    @hookimpl
    def register_routers(self, register: Register) -> None:
        for router_class in self.routers:
            register(router_class.name, router_class)


class NeverFitted(Clusterer):
    """A clusterer whose commands are built and shown, never run."""

    def fit(self, request: Any) -> Any:
        raise AssertionError("never fitted")

    @classmethod
    def assigner(cls, allocation: Any) -> Any:
        raise AssertionError("never asked")


class ClustererPlugin(RouterPlugin):
    """A plugin object registering the given clusterer classes (and router classes)."""

    def __init__(self, *clusterers: type[Clusterer], routers: Sequence[type[PreRouter]] = ()):
        super().__init__(*routers)
        self.clusterers = clusterers

    @hookimpl
    def register_clusterers(self, register: Register) -> None:
        for clusterer in self.clusterers:
            register(clusterer.name, clusterer)


class CommandPlugin:
    def __init__(self, **commands: Any) -> None:
        self.commands = commands

    @hookimpl
    def register_commands(self, register: Register) -> None:
        for name, obj in self.commands.items():
            register(name, obj)


def make_router(router_name: str) -> type[PreRouter]:
    class FirstExpert(PreRouter):
        name = router_name

        def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
            weights = np.zeros((len(documents), len(experts)))
            weights[:, 0] = 1.0
            return weights

    return FirstExpert


def test_two_third_parties_sharing_a_name_are_both_kept_and_the_bare_name_refused() -> None:
    first_alpha, second_alpha = make_router("alpha"), make_router("alpha")
    registry = host.load_registry(
        extra_plugins=[
            ("first", RouterPlugin(first_alpha)),
            ("second", RouterPlugin(second_alpha, make_router("beta"))),
        ],
        entry_points=False,
    )
    assert "alpha" not in registry.routers  # never silently resolved
    assert registry.routers["beta"].plugin == "second"
    assert [(p.name, p.registered["router"]) for p in registry.plugins] == [
        ("first", ["alpha"]),
        ("second", ["alpha", "beta"]),
    ]
    refusal = (
        "router 'alpha' is registered by two plugins: plugin first and plugin second; "
        "choose one as first:alpha or second:alpha"
    )
    assert registry.warnings() == [f"xelm: warning: plugin 'second': {refusal}"]
    with pytest.raises(UsageError) as caught:
        registry.get("router", "alpha")
    assert str(caught.value) == refusal
    assert registry.get("router", "first:alpha").obj is first_alpha
    assert registry.get("router", "second:alpha").obj is second_alpha
    assert registry.get("router", "second:beta").plugin == "second"
    with pytest.raises(UsageError) as caught:
        registry.get("router", "third:alpha")
    assert str(caught.value) == (
        "unknown router 'third:alpha': no plugin or distribution 'third' registers router "
        "'alpha' (registered by plugin first and plugin second; choose first:alpha or "
        "second:alpha)"
    )
    with pytest.raises(UsageError, match=r"^unknown router 'first:nope' \(available: "):
        registry.get("router", "first:nope")


def test_the_same_plugin_registering_a_name_twice_keeps_the_first() -> None:
    one, two = make_router("alpha"), make_router("alpha")
    registry = host.load_registry(
        extra_plugins=[("twice", RouterPlugin(one, two))], entry_points=False
    )
    assert registry.routers["alpha"].obj is one
    assert registry.warnings() == [
        "xelm: warning: plugin 'twice': router 'alpha' registered twice by plugin 'twice'; "
        "the second is skipped"
    ]


def test_a_builtin_router_name_stays_xelms_and_the_third_partys_is_qualified() -> None:
    shadow = make_router("uniform")
    registry = host.load_registry(extra_plugins=[("aaa", RouterPlugin(shadow))])
    assert registry.routers["uniform"].plugin == "routers"
    assert registry.get("router", "uniform").distribution == "xelm"
    assert registry.get("router", "xelm:uniform").plugin == "routers"
    assert registry.get("router", "routers:uniform").plugin == "routers"
    assert registry.get("router", "aaa:uniform").obj is shadow
    assert [p.message for p in registry.problems] == [
        "router 'uniform' is also xelm's own (plugin 'routers'), which the name 'uniform' "
        "selects; select this one as aaa:uniform"
    ]


def test_registrations_carry_their_provenance() -> None:
    registry = host.load_registry(extra_plugins=[("mine", RouterPlugin(make_router("mine")))])
    uniform = registry.get("router", "uniform")
    assert uniform.provenance == {
        "name": "uniform",
        "plugin": "routers",
        "distribution": "xelm",
        "version": uniform.version,
    }
    assert uniform.version and uniform.qualified_name == "xelm:uniform"
    assert registry.get("router", "mine").provenance == {
        "name": "mine",
        "plugin": "mine",
        "distribution": None,
        "version": None,
    }


def test_commands_cannot_be_qualified_so_the_first_keeps_the_name() -> None:
    registry = host.load_registry(
        extra_plugins=[("one", CommandPlugin(greet=greet)), ("two", CommandPlugin(greet=greet))],
        entry_points=False,
    )
    assert registry.commands["greet"].plugin == "one"
    assert [p.message for p in registry.problems] == [
        "command 'greet' is already registered by plugin 'one'; plugin 'two''s is skipped"
    ]


def test_invalid_names_and_objects_are_skipped_not_fatal() -> None:
    class Mixed:
        @hookimpl
        def register_routers(self, register: Register) -> None:
            register("Bad_Name", make_router("Bad_Name"))
            register("not-a-router", object)
            register("mismatch", make_router("other"))
            register("good", make_router("good"))

        @hookimpl
        def register_trainers(self, register: Register) -> None:
            register("x" * 65, object)

        @hookimpl
        def register_clusterers(self, register: Register) -> None:
            register("kmeans", object)

    registry = host.load_registry(extra_plugins=[("mixed", Mixed())], entry_points=False)
    assert list(registry.routers) == ["good"] and not registry.clusterers
    messages = [p.message for p in registry.problems]  # hooks run in KINDS order
    assert "a clusterer must be a subclass of xelm_cli.api.Clusterer" in messages[0]
    assert messages[1].startswith("invalid trainer name 'xxxx")
    assert messages[2].startswith("invalid router name 'Bad_Name': names must match")
    assert "must be a subclass of xelm_cli.api.Router" in messages[3]
    assert "class attribute name is 'other', not 'mismatch'" in messages[4]
    assert len(messages) == 5


def test_an_abstract_class_is_refused_naming_what_it_does_not_implement() -> None:
    """The README's first clusterer, written with fit alone: the problem says assigner is
    missing, not only that the class is abstract."""

    class HalfDone(Clusterer):
        name = "half-done"

        def fit(self, request: Any) -> Any:
            raise NotImplementedError

    class Registering:
        @hookimpl
        def register_clusterers(self, register: Register) -> None:
            register("half-done", HalfDone)

    registry = host.load_registry(extra_plugins=[("half", Registering())], entry_points=False)
    assert not registry.clusterers
    [problem] = registry.problems
    assert problem.message.endswith(
        "clusterer class HalfDone is abstract: it does not implement assigner"
    ), problem.message
    # asked for by name, it is that refusal, not an unknown name
    with pytest.raises(UsageError) as caught:
        registry.get("clusterer", "half-done")
    assert str(caught.value) == (
        "clusterer 'half-done' was refused when plugin 'half' loaded: clusterer class HalfDone is "
        "abstract: it does not implement assigner (available: none installed)"
    )
    with pytest.raises(UsageError, match=r"^clusterer 'half:half-done' was refused when"):
        registry.get("clusterer", "half:half-done")  # qualified by the plugin refused
    with pytest.raises(UsageError, match=r"^unknown clusterer 'other:half-done'"):
        registry.get("clusterer", "other:half-done")  # not the plugin that was refused


def test_an_evaluator_with_languages_set_in_init_is_told_to_make_it_a_property() -> None:
    """``self.languages = [...]`` is the natural reading of "languages lists the languages":
    the refusal says what the abstract property wants."""

    class AttrLanguages(Evaluator):
        name = "attr-languages"
        primary = "loss"
        higher_is_better = False

        def __init__(self, request: Any) -> None:
            self.languages = ["en"]

        def evaluate(self, model: Any) -> dict[str, Any]:
            return {"overall": {"loss": 1.0}, "languages": {}}

    class Registering:
        @hookimpl
        def register_evaluators(self, register: Register) -> None:
            register("attr-languages", AttrLanguages)

    registry = host.load_registry(extra_plugins=[("attr", Registering())], entry_points=False)
    assert not registry.evaluators
    [problem] = registry.problems
    assert problem.message.endswith(
        "evaluator class AttrLanguages is abstract: it does not implement languages (define "
        "languages as a @property: an attribute set in __init__ is not one)"
    ), problem.message


def test_a_registration_of_none_says_what_the_kind_needs() -> None:
    class Nones:
        @hookimpl
        def register_routers(self, register: Register) -> None:
            register("none-router", None)

        @hookimpl
        def register_commands(self, register: Register) -> None:
            register("none-command", None)

    registry = host.load_registry(extra_plugins=[("nones", Nones())], entry_points=False)
    messages = [p.message for p in registry.problems]
    assert messages == [
        "router 'none-router' refused: a router must be a subclass of xelm_cli.api.Router",
        "command 'none-command' refused: a command must be a typer.Typer or a function, not "
        "NoneType",
    ]


def test_a_raising_hook_drops_that_plugin_only() -> None:
    class Raising:
        @hookimpl
        def register_routers(self, register: Register) -> None:
            register("half-done", make_router("half-done"))
            raise RuntimeError("boom\nsecond line")

    registry = host.load_registry(
        extra_plugins=[("raising", Raising()), ("fine", RouterPlugin(make_router("fine")))],
        entry_points=False,
    )
    assert list(registry.routers) == ["fine"]
    assert [p.name for p in registry.plugins] == ["fine"]
    assert registry.warnings() == [
        "xelm: warning: plugin 'raising' skipped: register_routers raised RuntimeError: boom; "
        "second line"
    ]


def test_a_plugin_that_exits_or_is_unhashable_is_skipped_and_every_command_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A hook calling sys.exit made every command exit 1 silently; an unhashable plugin object
    (a dataclass instance) made each one an internal error, in pluggy's sets of plugins."""

    class Exits:
        @hookimpl
        def register_routers(self, register: Register) -> None:
            sys.exit("bye")

    class Unhashable(RouterPlugin):
        __hash__ = None  # type: ignore[assignment]  # as a dataclass instance's

    registry = host.load_registry(
        extra_plugins=[
            ("exits", Exits()),
            ("unhashable", Unhashable(make_router("never"))),
            ("fine", RouterPlugin(make_router("fine"))),
        ]
    )
    assert "fine" in registry.routers and "never" not in registry.routers
    assert [(f.plugin, f.reason) for f in registry.failures] == [
        ("exits", "register_routers raised SystemExit: bye"),
        ("unhashable", "the plugin object (Unhashable) is unhashable; make the entry point a "
         "module, or give its class __hash__"),
    ]  # fmt: skip
    host.reset_registry(registry)
    code, out, err = cli(capsys, "lang", "info", "en", "--json")
    assert code == 0 and json.loads(out)
    assert err.splitlines() == [failure.warning() for failure in registry.failures]


def test_a_declaration_xelm_cannot_read_is_its_plugins_bug_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An annotation that names nothing, or a parse= that raises, in a third party's options
    was xelm's internal error (exit 70) wherever the options were read: at startup for a
    clusterer (every command failed), when building a router, in plugins show and check."""

    @dataclass(frozen=True)
    class Unreadable:
        level: "Undefined" = option(1, help="Level.")  # type: ignore[name-defined]  # noqa: F821

    def bad_parse(text: str) -> int:
        raise KeyError(text)

    @dataclass(frozen=True)
    class BadParse:
        level: int = option(1, help="Level.", parse=bad_parse)

    class UnreadableRouter(make_router("unreadable")):  # type: ignore[misc]
        Options = Unreadable

    class BadParseRouter(make_router("bad-parse")):  # type: ignore[misc]
        Options = BadParse

    class UnreadableClusterer(NeverFitted):
        name = "unreadable-options"
        Options = Unreadable

    plugin = ClustererPlugin(UnreadableClusterer, routers=(UnreadableRouter, BadParseRouter))
    host.reset_registry(host.load_registry(extra_plugins=[("third", plugin)]))
    unreadable = (
        "the options declaration of {name!r} ({where}) cannot be read: NameError: name "
        "'Undefined' is not defined; this is a bug in its plugin"
    )
    for cls in (UnreadableRouter, UnreadableClusterer):
        with pytest.raises(PluginError) as caught:
            declared_options(cls)
        where = f"{cls.__module__}:{cls.__qualname__}"
        assert str(caught.value) == unreadable.format(name=cls.name, where=where)
    code, out, err = cli(capsys, "lang", "info", "en", "--json")
    assert code == 0 and json.loads(out)
    assert err == (
        "xelm: warning: plugin 'third': clusterer 'unreadable-options' is left out of xelm "
        f"cluster: {unreadable.format(name='unreadable-options', where=where)}\n"
    )
    assert cli(capsys, "plugins", "show", "unreadable")[:2] == (6, "")
    # the command it would have had refuses in one line saying why (not "No such command")
    reason = unreadable.format(name="unreadable-options", where=where)
    for name in ("unreadable-options", "third:unreadable-options"):
        code, out, err = cli(capsys, "cluster", name, "--k", "2")
        assert (code, out) == (6, "")
        assert err.endswith(f"xelm: error: clusterer 'unreadable-options' is left out: {reason}\n")
    with pytest.raises(PluginError, match=r"^router 'bad-parse' \(plugin 'third'\) failed while"):
        build_router("bad-parse", {"level": "2"})
    with pytest.raises(PluginError, match=r"'unreadable-options'.* cannot be read"):
        cluster("unreadable-options", k=1, output=tmp_path / "a.json", languages="en")


def test_an_option_whose_default_is_not_its_type_is_its_plugins_bug(
    capsys: pytest.CaptureFixture[str], isolated_registry: None
) -> None:
    """``bad: int = option("lots")`` was listed by plugins show and handed to the router as
    it was (results recorded ``"bad": "lots"``); only plugins check failed it."""

    @dataclass(frozen=True)
    class WrongDefault:
        share: float = option(1, help="An int where a float is declared: fine.")
        bad: int = option("lots", help="Not an int.")

    class WrongDefaultRouter(make_router("wrong-default")):  # type: ignore[misc]
        Options = WrongDefault

    host.reset_registry(
        host.load_registry(extra_plugins=[("third", RouterPlugin(WrongDefaultRouter))])
    )
    with pytest.raises(PluginError) as caught:
        declared_options(WrongDefaultRouter)
    assert str(caught.value).endswith(
        "cannot be read: ValueError: option 'bad' defaults to 'lots', which is no int; this "
        "is a bug in its plugin"
    )
    with pytest.raises(PluginError, match="defaults to 'lots', which is no int"):
        build_router("wrong-default", {})
    assert cli(capsys, "plugins", "show", "wrong-default")[:2] == (6, "")


def test_the_clusterer_commands_are_those_of_the_registry_now(
    capsys: pytest.CaptureFixture[str], isolated_registry: None
) -> None:
    """xelm cluster NAME was added once a process: after reset_registry a clusterer of the
    earlier registry kept its command, bound to its old registration."""

    class Groups(NeverFitted):
        name = "earlier-groups"

    host.reset_registry(host.load_registry(extra_plugins=[("third", ClustererPlugin(Groups))]))
    assert cli(capsys, "cluster", "earlier-groups", "--help")[0] == 0
    host.reset_registry()
    code, _, err = cli(capsys, "cluster", "earlier-groups", "--help")
    assert code == 2 and "No such command 'earlier-groups'" in err, err


def test_hook_typos_and_empty_plugins_are_reported() -> None:
    class Typo:
        @hookimpl
        def register_router(self, register: Register) -> None:
            register("never", make_router("never"))

    registry = host.load_registry(
        extra_plugins=[("typo", Typo()), ("empty", object())], entry_points=False
    )
    assert registry.routers == {}
    assert [p.plugin for p in registry.problems] == ["typo", "empty"]
    assert "unknown hook 'register_router'" in registry.problems[0].message
    assert "implements no xelm hook" in registry.problems[1].message


def test_plugins_pluggy_refuses_are_failures() -> None:
    class WrongArguments:
        @hookimpl
        def register_routers(self, register: Register, extra: int) -> None:
            raise AssertionError("never called")

    module = RouterPlugin(make_router("fine"))
    registry = host.load_registry(
        extra_plugins=[("wrong", WrongArguments()), ("one", module), ("two", module)],
        entry_points=False,
    )
    assert [p.name for p in registry.plugins] == ["one"]
    assert [f.plugin for f in registry.failures] == ["wrong", "two"]
    assert registry.failures[0].reason.startswith("PluginValidationError: ")
    assert "Argument(s) {'extra'} are declared in the hookimpl" in registry.failures[0].reason
    assert registry.failures[1].reason == "the same object is already registered as plugin 'one'"


def test_register_is_closed_after_the_hook_returns() -> None:
    kept: list[Register] = []

    class Sneaky:
        @hookimpl
        def register_evaluators(self, register: Register) -> None:
            kept.append(register)

    host.load_registry(extra_plugins=[("sneaky", Sneaky())], entry_points=False)
    with pytest.raises(RuntimeError, match="after the hook returned"):
        kept[0]("late", object)


def test_xelm_plugins_env_selects_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(host.PLUGINS_ENV, "")
    assert host.load_registry().plugins == []
    monkeypatch.setenv(host.PLUGINS_ENV, " routers , nosuch")
    registry = host.load_registry()
    assert [p.name for p in registry.plugins] == ["routers"]
    assert registry.problems[0].plugin == "nosuch"


def test_a_name_in_a_plugin_xelm_plugins_leaves_out_says_which_and_the_way_out(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv(host.PLUGINS_ENV, "eval")
    # no --router: the default, language, is xelm's plugin routers'
    code, _, err = cli(capsys, "ensemble", "eval", str(tmp_path), "--data", str(tmp_path))
    assert (code, err) == (
        2,
        "xelm: error: router 'language' is in plugin 'routers', which XELM_PLUGINS=eval does "
        "not load: add routers to XELM_PLUGINS, or choose one it loads (available: none "
        "installed)\n",
    )
    registry = host.load_registry()
    with pytest.raises(UsageError) as caught:
        registry.get("router", "nosuch")
    assert str(caught.value) == (
        "unknown router 'nosuch' (available: none installed; XELM_PLUGINS=eval leaves out the "
        "installed plugins lmeval, routers, tfidf, trainer, typology)"
    )
    monkeypatch.delenv(host.PLUGINS_ENV)
    with pytest.raises(UsageError, match=r"^unknown router 'nosuch' \(available: fixed, "):
        host.load_registry().get("router", "nosuch")


def greet(name: str = "world") -> None:
    """Say hello.

    Example: xelm greet --name you
    """
    typer.echo(f"hello, {name}")


def test_plugin_commands_join_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    greetings = typer.Typer(help="Greetings.")
    greetings.command("hi")(lambda: typer.echo("hi there"))
    host.reset_registry(
        host.load_registry(
            extra_plugins=[("greeter", CommandPlugin(greet=greet, greetings=greetings))]
        )
    )
    assert cli(capsys, "greet", "--name", "you") == (0, "hello, you\n", "")
    assert cli(capsys, "greetings", "hi") == (0, "hi there\n", "")
    code, out, _ = cli(capsys, "greet", "--help")
    assert code == 0 and "Example: xelm greet --name you" in out


def test_command_colliding_with_a_builtin_group_is_skipped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    host.reset_registry(
        host.load_registry(
            extra_plugins=[
                ("clash", CommandPlugin(plugins=greet, **{"train-all": greet}, greet=greet))
            ]
        )
    )
    code, out, err = cli(capsys, "plugins", "list", "--json")
    assert code == 0
    assert json.loads(out)["plugins"][-1]["registered"]["command"] == ["greet"]
    assert err.splitlines() == [
        "xelm: warning: plugin 'clash': command 'plugins' collides with the built-in command "
        "'plugins'; skipped",
        "xelm: warning: plugin 'clash': command 'train-all' collides with the built-in command "
        "'train-all'; skipped",
    ]
    # warnings are printed once per process; the built-in group still works
    assert cli(capsys, "greet") == (0, "hello, world\n", "")


def test_each_suggested_qualified_name_selects_its_registration() -> None:
    """Plugin foo of distribution bar and plugin p1 of distribution foo: 'foo:x' matches both
    (one by plugin, one by distribution), so it is never the way out a refusal offers."""
    registry = Registry()
    by_dist = Registration("x", "router", make_router("x"), "p1", "", "foo", "1")
    by_plugin = Registration("x", "router", make_router("x"), "foo", "", "bar", "1")
    registry.add(by_dist)
    registry.add(by_plugin)
    for name in ("x", "foo:x"):
        with pytest.raises(UsageError) as caught:
            registry.get("router", name)
        assert str(caught.value).endswith("; choose one as p1:x or bar:x"), str(caught.value)
    assert registry.get("router", "p1:x") is by_dist
    assert registry.get("router", "bar:x") is by_plugin


def test_add_plugin_commands_is_idempotent_and_respects_the_root() -> None:
    root = typer.Typer()
    root.command("status")(lambda: None)
    host.reset_registry(
        host.load_registry(
            extra_plugins=[("mine", CommandPlugin(status=greet, greet=greet))], entry_points=False
        )
    )
    host.add_plugin_commands(root)
    host.add_plugin_commands(root)
    names = [c.name for c in root.registered_commands]
    assert names == ["status", "greet"]
    registry = host.get_registry()
    assert [p.message for p in registry.problems] == [
        "command 'status' collides with the built-in command 'status'; skipped"
    ]
    host.reset_registry(host.load_registry(entry_points=False))
    host.add_plugin_commands(root)
    assert [c.name for c in root.registered_commands] == ["status"]


# ---------------------------------------------------------------- real installed plugins


def listed(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    listing: dict[str, Any] = json.loads(result.stdout)
    return listing


def test_installed_plugin_is_listed(hello_site: Path) -> None:
    listing = listed(xelm("plugins", "list", "--json", sites=[hello_site]))
    assert [p["name"] for p in listing["plugins"]] == [
        "eval",
        "lmeval",
        "routers",
        "tfidf",
        "trainer",
        "typology",
        "hello",
    ]
    (hello,) = [p for p in listing["plugins"] if p["name"] == "hello"]
    assert (hello["distribution"], hello["version"]) == ("xelm-hello-plugin", "0.2.0")
    assert hello["registered"]["router"] == ["shared-language"]
    assert hello["registered"]["command"] == ["hello"]
    assert listing["failures"] == [] and listing["problems"] == []


def test_installed_plugin_command_routes_through_the_public_api(hello_site: Path) -> None:
    result = xelm("hello", "--lang", "tr", "--experts", "en,es;tr,az", sites=[hello_site])
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "tr -> expert 1 (tr,az) weight 1.000\n",
        "",
    )
    result = xelm("hello", "--lang", "tr", "--experts", "en,es;tr,az;tr", sites=[hello_site])
    assert result.stdout.splitlines() == [
        "tr -> expert 1 (tr,az) weight 0.500",
        "tr -> expert 2 (tr) weight 0.500",
    ]
    # the third party's command can use xelm's built-in routers too
    result = xelm(
        "hello", "--lang", "tr", "--experts", "tr;tr,az", "--router", "language", sites=[hello_site]
    )
    assert result.stdout == "tr -> expert 0 (tr) weight 1.000\n"
    result = xelm("hello", "--lang", "fr", "--experts", "en;tr", sites=[hello_site])
    assert result.returncode == 2
    assert result.stderr == (
        "xelm: error: no expert covers language 'fr': choose a covered language or add an "
        "expert for it\n"
    )


def test_broken_plugin_is_reported_and_skipped(hello_site: Path, broken_site: Path) -> None:
    result = xelm("plugins", "list", sites=[broken_site])
    assert result.returncode == 0
    assert "failed: broken: ModuleNotFoundError: No module named 'xelm_missing_dependency'" in (
        result.stdout
    )
    assert result.stderr == ""  # the table lists the failure: not again as a warning
    listing = listed(xelm("plugins", "list", "--json", sites=[broken_site]))
    reason = "ModuleNotFoundError: No module named 'xelm_missing_dependency'"
    assert listing["failures"] == [{"plugin": "broken", "reason": reason}]
    result = xelm("--version", sites=[broken_site])
    assert (result.returncode, result.stderr.splitlines()) == (0, [BROKEN_WARNING])
    result = xelm("hello", "--lang", "az", "--experts", "tr,az", sites=[broken_site, hello_site])
    assert (result.returncode, result.stdout) == (0, "az -> expert 0 (tr,az) weight 1.000\n")
    assert result.stderr.splitlines() == [BROKEN_WARNING]


def test_xelm_plugins_restricts_what_loads(hello_site: Path, broken_site: Path) -> None:
    sites = [hello_site, broken_site]
    result = xelm("plugins", "list", "--json", sites=sites, plugins="routers")
    assert [p["name"] for p in listed(result)["plugins"]] == ["routers"]
    assert result.stderr == ""
    result = xelm("hello", "--lang", "tr", "--experts", "tr", sites=sites, plugins="routers")
    assert result.returncode != 0 and "No such command 'hello'" in result.stderr
    assert listed(xelm("plugins", "list", "--json", sites=sites, plugins=""))["plugins"] == []
    result = xelm(
        "hello",
        "--lang",
        "tr",
        "--experts",
        "tr",
        "--router",
        "language",
        sites=sites,
        plugins="hello",
    )
    assert result.returncode == 2
    assert result.stderr == (
        "xelm: error: router 'language' is in plugin 'routers', which XELM_PLUGINS=hello does "
        "not load: add routers to XELM_PLUGINS, or choose one it loads (available: "
        "shared-language)\n"
    )


def test_spec_example_is_the_tested_fixture() -> None:
    spec = (Path(__file__).parents[1] / "spec" / "plugin-api.md").read_text()
    hello = FIXTURES / "xelm-hello-plugin"
    for path in (hello / "pyproject.toml", hello / "xelm_hello" / "__init__.py"):
        assert path.read_text() in spec, f"spec/plugin-api.md section 8 is out of date: {path}"


def test_names_must_match_the_whole_pattern() -> None:
    registry = host.load_registry(
        extra_plugins=[("newline", CommandPlugin(**{"greet\n": greet, "a-1": greet}))],
        entry_points=False,
    )
    assert list(registry.commands) == ["a-1"]
    assert registry.problems[0].message.startswith("invalid command name 'greet\\n'")


def test_an_explicit_no_options_declares_none_for_every_kind() -> None:
    class Constructed(make_router("constructed")):  # type: ignore[misc]
        def __init__(self, pivot: int = 10) -> None:
            self.pivot = pivot

    class Explicit(Constructed):
        Options = NoOptions

    class Plain(Clusterer):
        name = "plain"

    class ExplicitClusterer(Plain):
        Options = NoOptions

    # an API 1.0 router: its constructor declares pivot; an explicit NoOptions declares none
    assert [spec.name for spec in declared_options(Constructed)] == ["pivot"]
    assert declared_options(Explicit) == ()
    for owner in (make_router("bare"), Explicit, Plain, ExplicitClusterer):
        with pytest.raises(UsageError, match=r"has no option 'nope' \(it takes no options\)$"):
            parse_options(owner, {"nope": "1"}, label="it")


def test_an_evaluator_without_its_headline_metric_is_refused_at_registration() -> None:
    def evaluator(evaluator_name: str, **attributes: Any) -> type[Evaluator]:
        class Scoring(Evaluator):
            name = evaluator_name

            @property
            def languages(self) -> list[str]:
                return []

            def evaluate(self, model: Any) -> dict[str, Any]:
                return {"overall": {"score": 1.0}, "languages": {}}

        for key, value in attributes.items():
            setattr(Scoring, key, value)
        return Scoring

    class Evaluators:
        @hookimpl
        def register_evaluators(self, register: Register) -> None:
            register("no-primary", evaluator("no-primary", higher_is_better=True))
            register("empty", evaluator("empty", primary="", higher_is_better=True))
            register("no-direction", evaluator("no-direction", primary="score"))
            register("yes", evaluator("yes", primary="score", higher_is_better="yes"))
            register("good", evaluator("good", primary="score", higher_is_better=False))
            register("no-class", object)

    registry = host.load_registry(extra_plugins=[("scores", Evaluators())], entry_points=False)
    assert list(registry.evaluators) == ["good"]
    assert registry.warnings() == [
        "xelm: warning: plugin 'scores': evaluator 'no-primary' refused: evaluator class "
        "attribute primary is None; set it to the name of the headline metric (a non-empty str)",
        "xelm: warning: plugin 'scores': evaluator 'empty' refused: evaluator class "
        "attribute primary is ''; set it to the name of the headline metric (a non-empty str)",
        "xelm: warning: plugin 'scores': evaluator 'no-direction' refused: evaluator class "
        "attribute higher_is_better must be True or False",
        "xelm: warning: plugin 'scores': evaluator 'yes' refused: evaluator class "
        "attribute higher_is_better must be True or False",
        "xelm: warning: plugin 'scores': evaluator 'no-class' refused: an evaluator must be a "
        "subclass of xelm_cli.api.Evaluator",
    ]


def test_a_router_whose_uncovered_languages_flag_is_not_a_bool_is_refused() -> None:
    vague = make_router("vague")
    vague.routes_uncovered_languages = "yes"  # type: ignore[assignment]
    plugin = RouterPlugin(vague, make_router("plain"))
    registry = host.load_registry(extra_plugins=[("mine", plugin)], entry_points=False)
    assert list(registry.routers) == ["plain"]
    assert registry.warnings() == [
        "xelm: warning: plugin 'mine': router 'vague' refused: router class attribute "
        "routes_uncovered_languages must be True or False"
    ]


def test_a_router_that_takes_no_calibration_names_those_that_do() -> None:
    class Fitted(make_router("fitted")):  # type: ignore[misc]
        def calibrate(
            self, scored: Sequence[ScoredDocument], experts: Sequence[ExpertInfo]
        ) -> dict[str, Any]:
            return {}

    plugin = RouterPlugin(make_router("plain"), Fitted)
    host.reset_registry(host.load_registry(extra_plugins=[("mine", plugin)]))
    with pytest.raises(UsageError) as caught:
        get_registry().get("router", "plain").obj().calibrate([], EXPERTS)
    assert str(caught.value) == (
        "router 'plain' takes no calibration data; drop --calibration, or use a router that "
        "calibrates: fitted, oracle, posterior, posterior-last-token"
    )


def test_plugins_check_and_show_say_why_a_name_they_cannot_select_is_not_selected(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], isolated_registry: None
) -> None:
    """A name two third parties share, a qualifier that names neither and a name XELM_PLUGINS
    leaves out were each 'not installed' (its list naming it): now the line --router says."""
    registry = host.load_registry(
        extra_plugins=[
            ("first", RouterPlugin(make_router("alpha"))),
            ("second", RouterPlugin(make_router("alpha"))),
        ]
    )
    host.reset_registry(registry)
    shared = (
        "xelm: error: router 'alpha' is registered by two plugins: plugin first and plugin "
        "second; choose one as first:alpha or second:alpha\n"
    )
    misqualified = (
        "xelm: error: unknown router 'third:alpha': no plugin or distribution 'third' registers "
        "router 'alpha' (registered by plugin first and plugin second; choose first:alpha or "
        "second:alpha)\n"
    )
    for command in ("check", "show"):  # (the first also prints the registry's warning)
        for name, refusal in (("alpha", shared), ("third:alpha", misqualified)):
            code, out, err = cli(capsys, "plugins", command, name)
            assert (code, out) == (2, "") and err.endswith(refusal), err
    monkeypatch.setenv(host.PLUGINS_ENV, "eval")
    host.reset_registry()
    for command in ("check", "show"):
        code, _, err = cli(capsys, "plugins", command, "language")
        assert code == 2 and err.startswith(
            "xelm: error: router 'language' is in plugin 'routers', which XELM_PLUGINS=eval does "
            "not load: add routers to XELM_PLUGINS"
        ), err
