"""``xelm plugins``: what the installed plugins register, and which ones failed."""

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from xelm_cli.common.cli_options import JsonOpt, print_json
from xelm_cli.plugin import host

app = typer.Typer(
    help="Plugins: list what is installed and what each one registers.\n\n"
    "Example: xelm plugins list --json",
    no_args_is_help=True,
)


def add_plugin_commands(root: typer.Typer) -> None:
    """Add the plugins' commands to ``root`` (see :func:`host.add_plugin_commands`)."""
    host.add_plugin_commands(root)


def _registered_text(info: host.PluginInfo) -> str:
    lines = [f"{kind}: {', '.join(names)}" for kind, names in info.registered.items() if names]
    return "\n".join(lines) or "(nothing)"


@app.command("list")
def list_plugins(as_json: JsonOpt = False) -> None:
    """List the installed plugins, what each registers, and the plugins that failed to load.

    Set XELM_PLUGINS=name,name to load only those plugins (XELM_PLUGINS= loads none).

    Example: xelm plugins list --json
    """
    registry = host.get_registry()
    if as_json:
        print_json(registry.as_dict())
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
    else:
        console.print("No plugins loaded.")
    for label, style, plugin, text in (
        *(("failed", "bold red", f.plugin, f.reason) for f in registry.failures),
        *(("problem", "yellow", p.plugin, p.message) for p in registry.problems),
    ):
        console.print(Text.assemble((label, style), f": {plugin}: {text}"))
