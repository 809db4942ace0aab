"""Declared plugin options: conversion from text and JSON, one-line errors, derived flags."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from conftest import SHARED_DATA
from typer.testing import CliRunner
from xelm_trainer.options import TrainOptions

from xelm_cli import cli
from xelm_cli.api import (
    Clusterer,
    NoOptions,
    PreRouter,
    UsageError,
    build_options,
    declared_options,
    hookimpl,
    option,
    options_record,
    parse_options,
)
from xelm_cli.common.units import parse_token_count
from xelm_cli.plugin import host
from xelm_cli.plugin.options import (
    as_flags,
    given,
    parse_pairs,
    typer_parameters,
    with_flags,
    with_parameters,
)
from xelm_cli.training.planning import planned_options


@dataclass(frozen=True, kw_only=True)
class Declared:
    allocation: Path = option(help="Allocation directory.")
    weights: list[float] = option([1.0, 1.0], help="One weight per expert.")
    top_k: int | None = option(None, help="Keep the K largest.", minimum=1)
    distance: str = option("squared", help="Distance.", choices=("squared", "squared-twice"))
    calibrated: bool = option(False, help="Calibrated.")
    tokens: int = option(4096, help="Tokens.", parse=parse_token_count)
    table: dict[str, str] = option({}, help="Language -> expert id.")
    internal: int = option(1, help="Set by xelm.", cli=False)


LABEL = "router 'demo'"


def parse(values: dict[str, Any]) -> dict[str, Any]:
    return parse_options(Declared, values, label=LABEL, via="--router-arg")


def test_text_values_are_converted_by_the_declared_type() -> None:
    parsed = parse(
        {
            "allocation": "alloc/",
            "weights": "[1, 3]",
            "top_k": "2",
            "distance": "squared-twice",
            "calibrated": "yes",
            "tokens": "20M",
            "table": '{"ar": "e0"}',
        }
    )
    assert parsed == {
        "allocation": Path("alloc"),
        "weights": [1.0, 3.0],
        "top_k": 2,
        "distance": "squared-twice",
        "calibrated": True,
        "tokens": 20_000_000,
        "table": {"ar": "e0"},
    }
    assert isinstance(parsed["weights"][0], float)


def test_comma_lists_none_and_json_values() -> None:
    assert parse({"allocation": "a", "weights": "1,3", "top_k": "none"}) == {
        "allocation": Path("a"),
        "weights": [1.0, 3.0],
        "top_k": None,
    }
    # values from an ensemble file or a Python call are checked, not re-parsed
    assert parse({"allocation": "a", "weights": [2, 5], "top_k": 3})["weights"] == [2.0, 5.0]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"weights": "[1,3]"},
            "router 'demo' needs option 'allocation' (Allocation directory.); "
            "pass --router-arg allocation=VALUE",
        ),
        (
            {"allocation": "a", "weight": "1"},
            "router 'demo' has no option 'weight' (its options: "
            "allocation, weights, top_k, distance, calibrated, tokens, table)",
        ),
        (
            {"allocation": "a", "top_k": "two"},
            "router 'demo': option 'top_k' expects int or none, not 'two'",
        ),
        (
            {"allocation": "a", "top_k": "0"},
            "router 'demo': option 'top_k' must be at least 1, not 0",
        ),
        (
            {"allocation": "a", "distance": "l1"},
            "router 'demo': option 'distance' must be one of squared, squared-twice, not 'l1'",
        ),
        (
            {"allocation": "a", "weights": "[1, x]"},
            "router 'demo': option 'weights' expects list of float, not '[1, x]'",
        ),
        (
            {"allocation": "a", "calibrated": "maybe"},
            "router 'demo': option 'calibrated' expects bool, not 'maybe'",
        ),
        (
            {"allocation": "a", "top_k": True},
            "router 'demo': option 'top_k' expects int or none, not 'true'",
        ),
        ({"allocation": "a", "internal": "2"}, "router 'demo' has no option 'internal'"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_option(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(UsageError) as caught:
        parse(values)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_token_counts_go_through_the_declared_parser() -> None:
    with pytest.raises(UsageError, match=r"option 'tokens' expects int, not '20Q'"):
        parse({"allocation": "a", "tokens": "20Q"})


def test_build_options_fills_defaults_and_records_as_json() -> None:
    built = build_options(Declared, {"allocation": "a", "top_k": "2"}, label=LABEL)
    assert built == Declared(allocation=Path("a"), top_k=2)
    record = options_record(built)
    assert record["allocation"] == "a" and record["weights"] == [1.0, 1.0]
    assert record["internal"] == 1


def test_api_1_routers_are_described_by_their_constructor() -> None:
    class Legacy(PreRouter):
        name = "legacy"

        def __init__(self, weights: list[float] | None = None, scale: float = 1.0) -> None:
            self.weights, self.scale = weights, scale

        def route(self, documents: Any, experts: Any) -> Any:
            raise NotImplementedError

    assert [(s.name, s.type_name, s.default) for s in declared_options(Legacy)] == [
        ("weights", "list of float or none", None),
        ("scale", "float", 1.0),
    ]
    assert parse_options(Legacy, {"weights": "[1,2]", "scale": "2"}, label="r") == {
        "weights": [1.0, 2.0],
        "scale": 2.0,
    }

    class Bare(PreRouter):
        name = "bare"

        def route(self, documents: Any, experts: Any) -> Any:
            raise NotImplementedError

    assert Bare.Options is NoOptions and declared_options(Bare) == ()
    with pytest.raises(
        UsageError, match=r"router 'bare' has no option 'x' \(it takes no options\)"
    ):
        parse_options(Bare, {"x": "1"}, label="router 'bare'")


def test_pairs_must_be_key_value() -> None:
    assert parse_pairs(["top-k=2", "a=b=c"], "--router-arg") == {"top_k": "2", "a": "b=c"}
    with pytest.raises(UsageError, match=r"--router-arg must look like KEY=VALUE, got 'top_k'"):
        parse_pairs(["top_k"], "--router-arg")


def test_flags_and_help_are_derived_from_the_declaration() -> None:
    seen: dict[str, Any] = {}

    def command(name: Annotated[str, typer.Argument(help="A name.")], **options: Any) -> None:
        """Run it.

        Example: demo NAME --top-k 2
        """
        seen.update(parse_options(Declared, given(options, Declared), label=LABEL))

    app = typer.Typer()
    app.command("run")(with_parameters(command, typer_parameters(Declared)))
    app.command("other")(lambda: None)
    runner = CliRunner()
    result = runner.invoke(
        app, ["run", "n", "--allocation", "a", "--top-k", "2", "--calibrated", "--weights", "1,2"]
    )
    assert result.exit_code == 0, result.output
    assert seen == {
        "allocation": Path("a"),
        "top_k": 2,
        "calibrated": True,
        "weights": [1.0, 2.0],
    }
    values = {"allocation": Path("b"), "top_k": 3, "calibrated": False, "weights": [0.5, 2.0],
              "distance": "squared-twice", "tokens": 8192}  # fmt: skip
    flags = as_flags(Declared, values)  # what `xelm demo` passes to the runs it launches
    assert "--no-calibrated" in flags and "--top-k=3" in flags
    seen.clear()
    assert runner.invoke(app, ["run", "n", *flags]).exit_code == 0
    assert seen == values
    with pytest.raises(UsageError, match="'internal' is not an option with a flag of 'Declared'"):
        as_flags(Declared, {"internal": 2})
    help_text = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    assert "Keep the K largest. [default: none]" in help_text
    assert "Allocation directory. [required]" in help_text
    assert "--calibrated" in help_text and "--internal" not in help_text
    assert "Distance. [one of squared, squared-twice; default: squared]" in help_text
    assert re.search(r"--distance +<str> +Distance\.", help_text)  # not a column of choices


@dataclass(frozen=True)
class Switches:
    fast: bool = option(True, help="Go fast.")
    loud: bool = option(False, help="Speak up.")


def test_booleans_are_plain_flags_and_no_flags_turn_them_off() -> None:
    seen: dict[str, Any] = {}

    def command(**options: Any) -> None:
        seen.clear()
        seen.update(given(options, Switches))

    app = typer.Typer()
    app.command("run")(with_parameters(command, typer_parameters(Switches)))
    app.command("other")(lambda: None)
    runner = CliRunner()
    for args, expected in [
        ([], {}),
        (["--loud", "--no-fast"], {"loud": True, "fast": False}),
        (["--no-loud", "--fast"], {"loud": False, "fast": True}),
    ]:
        result = runner.invoke(app, ["run", *args])
        assert (result.exit_code, seen) == (0, expected), result.output
    both = runner.invoke(app, ["run", "--fast", "--no-fast"])
    assert str(both.exception) == "--fast and --no-fast contradict each other: give one of them"
    help_text = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    # off by default: a plain flag; on by default: the help names the flag that turns it off
    assert "--no-loud" not in help_text and "Speak up." in help_text
    assert "Speak up. [" not in help_text
    assert "Go fast. [default: true; --no-fast turns it off]" in help_text


def help_at_80_columns(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> str:
    monkeypatch.setenv("COLUMNS", "80")
    assert cli.run([*path, "--help"]) == 0
    return capsys.readouterr().out


def command_paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """``command`` (a Click command as Typer builds it) and every command under it."""
    subs = sorted(getattr(command, "commands", {}).items())
    return [path, *(p for name, sub in subs for p in command_paths(sub, (*path, name)))]


def test_every_help_fits_80_columns_uncut(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    help_at_80_columns((), capsys, monkeypatch)  # adds the plugins' commands and flags
    paths = command_paths(typer.main.get_command(cli.app))
    assert ("cluster", "tfidf") in paths and len(paths) > 30
    cut = {}
    for path in paths:
        lines = help_at_80_columns(path, capsys, monkeypatch).splitlines()
        cut[" ".join(path)] = [line for line in lines if "…" in line or len(line) > 80]
        # a flag shows no value type, -h/--help included; no flag shows its --no- twin
        cut[" ".join(path)] += [line for line in lines if "<bool>" in line]
        cut[" ".join(path)] += [
            line for line in lines if re.search(r"--([\w-]+)\s+--no-\1(?![\w-])", line)
        ]
        assert any(re.search(r"--help\s+-h\s", line) for line in lines), path
    assert {name: lines for name, lines in cut.items() if lines} == {}


def test_train_help_fits_80_columns_with_every_flag_whole(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = help_at_80_columns(("train",), capsys, monkeypatch)
    assert [line for line in text.splitlines() if "…" in line] == []
    for spec in declared_options(TrainOptions):
        if spec.cli:
            assert re.search(rf"(?<![\w-]){spec.flag_name}(?![\w-])", text), spec.flag_name
    assert "[default: true; --no-lean-loss turns it off]" in " ".join(text.replace("│", "").split())


def test_an_option_given_twice_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Twice as KEY=VALUE, or as a flag and as KEY=VALUE: which one was meant is not xelm's to
    guess (the last one used to win silently); nothing is written."""
    corpus = SHARED_DATA / "corpus" / "valid"
    out = tmp_path / "alloc"
    cluster = ["cluster", "tfidf", str(corpus), "-k", "2", "-o", str(out)]
    cases = [
        ([*cluster, "--cluster-arg", "max_docs_per_language=3",
          "--cluster-arg", "max-docs-per-language=5"],
         "--cluster-arg gives 'max_docs_per_language' twice (max_docs_per_language=3, "
         "max_docs_per_language=5); give it once"),
        ([*cluster, "--max-docs-per-language", "3", "--cluster-arg", "max_docs_per_language=5"],
         "option 'max_docs_per_language' is given twice (--max-docs-per-language 3 and "
         "--cluster-arg max_docs_per_language=5); give it once"),
    ]  # fmt: skip
    for args, message in cases:
        assert cli.run(args) == 2
        assert capsys.readouterr().err == f"xelm: error: {message}\n"
    assert not out.exists()
    with pytest.raises(UsageError, match=r"option 'lr' is given twice \(--lr 1e-3 and "
                       r"--train-arg lr=2e-3\); give it once"):  # fmt: skip
        planned_options("--lr 1e-3 --train-arg lr=2e-3")


def test_derived_flags_and_pair_flags_show_what_to_type_as_built_in_flags_do(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = typer.Typer()
    app.command("run")(with_parameters(lambda **options: None, typer_parameters(Declared)))
    app.command("other")(lambda: None)
    help_text = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    for flag, metavar in [
        ("--allocation", "<path>"),
        ("--top-k", "<int>"),
        ("--weights", "<list>"),
    ]:
        assert re.search(rf"{flag} +{metavar} ", help_text), flag

    tfidf = help_at_80_columns(("cluster", "tfidf"), capsys, monkeypatch)
    assert re.search(r"-k +<int> ", tfidf) and re.search(r"--max-features +<int> ", tfidf)
    assert re.search(r"--cluster-arg +KEY=VALUE ", tfidf)
    check = help_at_80_columns(("plugins", "check"), capsys, monkeypatch)
    assert re.search(r"--router-arg +KEY=VALUE ", check)
    assert re.search(r"--eval-arg +KEY=VALUE ", check)


@dataclass(frozen=True, kw_only=True)
class Collections:
    langs: list[str] = option(["en"], help="Languages.", choices=("en", "tr"))
    counts: list[int] = option([], help="Counts.", minimum=0)
    pair: tuple[int, str] = option((1, "a"), help="A number and a name.")
    tags: set[str] = option(set(), help="Tags.")


def test_collections_check_each_item_their_length_and_their_kind() -> None:
    """choices refused every list (a list is no choice), minimum let -1 in, a tuple[int, str]
    took any number of ints and a set came back a list."""
    parsed = parse_options(
        Collections,
        {"langs": "en,tr", "counts": "0,2", "pair": "3,b", "tags": "x,x,y"},
        label=LABEL,
    )
    assert parsed == {"langs": ["en", "tr"], "counts": [0, 2], "pair": (3, "b"), "tags": {"x", "y"}}
    for values, refusal in [
        ({"langs": "en,de"}, "each item of option 'langs' must be one of en, tr, not 'de'"),
        ({"counts": "1,-1"}, "each item of option 'counts' must be at least 0, not -1"),
        ({"pair": "1,b,c"}, "option 'pair' expects list of 2 (int, str), not '1,b,c'"),
        ({"pair": "x,b"}, "option 'pair' expects list of 2 (int, str), not 'x,b'"),
    ]:
        with pytest.raises(UsageError) as caught:
            parse_options(Collections, values, label=LABEL)
        assert str(caught.value) == f"{LABEL}: {refusal}"
    built = build_options(Collections, {"tags": "b,a"}, label=LABEL)
    assert options_record(built)["tags"] == ["a", "b"]


@dataclass(frozen=True, kw_only=True)
class Roles:
    role: str | None = option(None, help="Role.")
    minimal: bool = option(True, help="Minimal.")


def test_as_flags_leaves_out_none_and_a_boolean_given_twice_is_named_by_its_flag() -> None:
    """--role=none read back as the text 'none' (`xelm demo` built `xelm train` so); the
    refusal of an option given twice showed --minimal False, not --no-minimal."""
    assert as_flags(Roles, {"role": None, "minimal": False}) == ["--no-minimal"]
    with pytest.raises(UsageError) as caught:
        with_flags({"minimal": "true"}, {"minimal": False}, Roles, "--x-arg")
    assert str(caught.value) == (
        "option 'minimal' is given twice (--no-minimal and --x-arg minimal=true); give it once"
    )


@dataclass(frozen=True, kw_only=True)
class Colliding:
    json: bool = option(False, help="Named like the command's --json.")
    help: bool = option(False, help="Named like --help.")
    cache: bool = option(True, help="Cache.")
    no_cache: bool = option(False, help="Its --no-cache is cache's.")
    spaced: int = option(1, help="A malformed flag.", flag="bad flag")
    fine: int = option(1, help="Fine.")


class CollidingClusterer(Clusterer):
    """Shows the options it was given.

    Example: xelm cluster colliding --langs en,tr -k 1 -o alloc.json
    """

    name = "colliding"
    Options = Colliding

    def fit(self, request: Any) -> Any:
        raise UsageError(f"options={request.options!r}")

    @classmethod
    def assigner(cls, allocation: Any) -> Any:
        raise NotImplementedError


class CollidingPlugin:
    @hookimpl
    def register_clusterers(self, register: Any) -> None:
        register(CollidingClusterer.name, CollidingClusterer)


@pytest.mark.usefixtures("isolated_registry")
def test_derived_flags_never_shadow_the_commands_flags_or_each_other(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An option json took --json from the command, help --help, no_cache the --no-cache of
    cache, and flag="bad flag" made `xelm cluster colliding` an internal error: each gets no
    flag (a problem of its plugin) and is set as --cluster-arg KEY=VALUE."""
    host.reset_registry(host.load_registry(extra_plugins=[("colliding", CollidingPlugin())]))
    assert cli.run(["cluster", "colliding", "--help"]) == 0
    out, err = capsys.readouterr()
    assert "--fine" in out and "--spaced" not in out and "bad flag" not in out
    took = "the command's own flag"
    assert err.splitlines() == [
        f"xelm: warning: plugin 'colliding': clusterer 'colliding' option {name!r} gets no flag "
        f"({why}); set it as --cluster-arg {name}=VALUE"
        for name, why in [
            ("json", f"--json is {took}"),
            ("help", f"--help is {took}"),
            ("no_cache", "--no-cache is the flag of option 'cache'"),
            ("spaced", "'bad flag' is no flag: flags are --NAME, of letters, digits, - and _"),
        ]
    ]
    args = ["cluster", "colliding", "--langs", "en,tr", "-k", "1", "-o", str(tmp_path / "a.json")]
    for extra, given_options in [
        (["--json", "--no-cache", "--fine", "2"], "json=False, help=False, cache=False, "
         "no_cache=False, spaced=1, fine=2"),
        (["--cluster-arg", "json=true", "--cluster-arg", "no_cache=true", "--cluster-arg",
          "spaced=3"], "json=True, help=False, cache=True, no_cache=True, spaced=3, fine=1"),
    ]:  # fmt: skip
        assert cli.run([*args, *extra]) == 2
        assert capsys.readouterr().err == f"xelm: error: options=Colliding({given_options})\n"
