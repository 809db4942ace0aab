"""``xelm plugins``: what the installed plugins register, what each registration takes, and a
conformance check for plugin authors."""

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from xelm_cli.common.cli_options import JsonOpt, print_json
from xelm_cli.common.errors import PluginError, UsageError
from xelm_cli.plugin import host
from xelm_cli.plugin.options import (
    PAIRS_METAVAR,
    OptionSpec,
    as_text,
    declared_options,
    declares_options,
    parse_pairs,
)
from xelm_cli.plugin.registry import KINDS, PluginInfo, Registration, Registry

app = typer.Typer(
    help="Plugins: list what is installed, show what one registration takes, check a router "
    "or evaluator against the spec.\n\n"
    "Example: xelm plugins show tfidf",
    no_args_is_help=True,
)


def add_plugin_commands(root: typer.Typer, argv: list[str]) -> None:
    """Add the plugins' commands to ``root`` (see :func:`host.add_plugin_commands`); their
    problems go to stderr, except for ``xelm plugins list``'s table, which lists them itself
    (its ``--json`` holds them as data, so they still go to stderr as warnings)."""
    table = argv[:2] == ["plugins", "list"] and "--json" not in argv[2:]
    host.add_plugin_commands(root, warn=not table)


def _registered_text(info: PluginInfo) -> str:
    lines = [f"{kind}: {', '.join(names)}" for kind, names in info.registered.items() if names]
    return "\n".join(lines) or "(nothing)"


def _registrations(registry: Registry) -> list[dict[str, Any]]:
    return [
        {
            "kind": r.kind,
            "name": r.name,
            "qualified_name": r.qualified_name,
            "plugin": r.plugin,
            "description": r.description,
        }
        for r in registry.entries
    ]


@app.command("list")
def list_plugins(as_json: JsonOpt = False) -> None:
    """List the installed plugins, what each registers (with its description), and the plugins
    that failed to load.

    Set XELM_PLUGINS=name,name to load only those plugins (XELM_PLUGINS= loads none).

    Example: xelm plugins list --json
    """
    registry = host.get_registry()
    if as_json:
        print_json({**registry.as_dict(), "registrations": _registrations(registry)})
        return
    console = Console(soft_wrap=True)
    if registry.plugins:
        table = Table("Plugin", "Distribution", "Version", "Registers")
        for info in registry.plugins:
            table.add_row(
                Text(info.name),
                Text(info.distribution or "-"),
                Text(info.version or "-"),
                Text(_registered_text(info)),
            )
        console.print(table)
        described = Table("Kind", "Name", "Plugin", "Description")
        for registration in registry.entries:
            described.add_row(
                Text(registration.kind),
                Text(registration.name),
                Text(registration.plugin),
                Text(registration.description or "-"),
            )
        console.print(described)
    else:
        console.print("No plugins loaded.")
    # each problem once in all: those the start-up already printed on stderr are not repeated
    lines = [
        *(("failed", "bold red", f.plugin, f.reason, f.warning()) for f in registry.failures),
        *(("problem", "yellow", p.plugin, p.message, p.warning()) for p in registry.problems),
    ]
    for label, style, plugin, text, warning in dict.fromkeys(lines):
        if not host.was_printed(warning):
            console.print(Text.assemble((label, style), f": {plugin}: {text}"))


# ---------------------------------------------------------------------------- show


VIA = {
    "router": "--router-arg",
    "evaluator": "--eval-arg",
    "clusterer": "--cluster-arg",
    "trainer": "--train-arg",
}


def _where(obj: Any) -> str:
    """``module:qualname`` of a registered object."""
    module = getattr(obj, "__module__", None) or type(obj).__module__
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}:{name}"


def _options_of(registration: Registration) -> tuple[list[OptionSpec], str]:
    """The options a registration declares, and where they come from."""
    obj = registration.obj
    if registration.kind == "command":
        return [], "a command: see xelm " + registration.name + " --help"
    if registration.kind == "evaluator" and not declares_options(obj):
        return [], "no Options declared (plugin API 1.0): it reads --eval-arg values itself"
    if registration.kind != "router" and not declares_options(obj):
        return [], "no Options declared"
    specs = list(declared_options(obj))
    if not specs:
        return [], "it takes no options"
    declared = declares_options(obj)
    source = "Options dataclass" if declared else "constructor (plugin API 1.0)"
    return specs, source


def _shown_default(spec: OptionSpec) -> str:
    return "(required)" if spec.required else as_text(spec.default)


def _show_record(registration: Registration) -> dict[str, Any]:
    specs, source = _options_of(registration)
    return {
        "kind": registration.kind,
        "name": registration.name,
        "qualified_name": registration.qualified_name,
        "class": _where(registration.obj),
        "description": registration.description,
        "plugin": registration.plugin,
        "distribution": registration.distribution,
        "version": registration.version,
        "options_from": source,
        "options": [spec.describe() for spec in specs if spec.cli],
    }


def _selected(name: str) -> list[Registration]:
    """Every registration (of any kind) that ``name`` or ``DIST:NAME`` selects."""
    registry = host.get_registry()
    found: list[Registration] = []
    refusals: list[UsageError] = []  # of a name that is a KIND, but not here
    for kind in KINDS:
        try:
            found.append(registry.get(kind, name))
        except UsageError as exc:
            if registry.knows(kind, name):
                refusals.append(exc)
    if refusals and not found:  # shared, misqualified, left out by XELM_PLUGINS
        raise refusals[0]
    if not found:
        installed = sorted({r.name for r in registry.entries})
        raise UsageError(
            f"nothing named {name!r} is installed (installed: {', '.join(installed) or 'none'}); "
            "see xelm plugins list"
        )
    return found


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="A registered name, or DIST:NAME.")],
    as_json: JsonOpt = False,
) -> None:
    """Show what NAME is, for each kind it is registered as: class, description, plugin,
    distribution, version and its options (type, default, help).

    Example: xelm plugins show tfidf
    """
    registrations = _selected(name)
    records = [_show_record(r) for r in registrations]
    if as_json:
        print_json(records)
        return
    console = Console(soft_wrap=True)
    for index, (registration, record) in enumerate(zip(registrations, records, strict=True)):
        if index:
            console.print()
        console.print(Text.assemble((f"{record['kind']} {record['name']}", "bold")))
        where = record["distribution"] or "in-process"
        version = f" {record['version']}" if record["version"] else ""
        for label, value in (
            ("class", record["class"]),
            ("description", record["description"] or "-"),
            ("plugin", f"{record['plugin']} ({where}{version})"),
            ("select as", record["qualified_name"]),
        ):
            console.print(Text(f"  {label + ':':13}{value}"))
        specs, source = _options_of(registration)
        shown = [spec for spec in specs if spec.cli]
        if not shown:
            console.print(Text(f"  {'options:':13}none: {source}"))
            continue
        via = VIA.get(record["kind"], "KEY=VALUE")
        console.print(Text(f"  {'options:':13}{via} KEY=VALUE (from its {source})"))
        width = max(len(spec.name) for spec in shown)
        for spec in shown:
            default = "required" if spec.required else f"default {_shown_default(spec)}"
            console.print(Text(f"    {spec.name:{width}}  {spec.type_name}; {default}"))
            if spec.help:
                console.print(Text(f"    {'':{width}}  {spec.help}"))


# ---------------------------------------------------------------------------- check


@app.command("check")
def check(
    name: Annotated[str, typer.Argument(help="A router or evaluator name, or DIST:NAME.")],
    router_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--router-arg",
            metavar=PAIRS_METAVAR,
            help="Router option KEY=VALUE to build it with (repeatable).",
        ),
    ] = None,
    eval_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--eval-arg", metavar=PAIRS_METAVAR, help="Evaluator option KEY=VALUE (repeatable)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a router (or evaluator) against spec/plugin-api.md on three tiny generated experts:
    weight shapes, normalisation, determinism, untouched arguments, causality of an output
    router, options round-trip, stride/fallback, a run in an ensemble; an evaluator's attributes,
    options and evaluate(). One line per check; exit code 6 when one fails.

    Example: xelm plugins check posterior
    """
    from xelm_cli.plugin import conformance

    reports = conformance.check(
        name,
        router_args=parse_pairs(router_arg or [], "--router-arg"),
        eval_args=parse_pairs(eval_arg or [], "--eval-arg"),
    )
    if as_json:
        print_json([report.as_dict() for report in reports])
    else:
        console = Console(soft_wrap=True, highlight=False)
        for report in reports:
            console.print(Text(f"{report.kind} {report.name} (plugin {report.plugin})"))
            for result in report.results:
                console.print(Text("  " + result.line()), markup=False)
    failed = [(report, result) for report in reports for result in report.failed]
    if failed:
        report, first = failed[0]
        raise PluginError(
            f"{report.kind} {report.name!r} failed {len(failed)} check"
            f"{'s' if len(failed) > 1 else ''} ({', '.join(r.check for _, r in failed)}); "
            f"first: {first.check}: {first.reason}"
        )
