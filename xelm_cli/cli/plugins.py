"""Placeholder replaced by the plugin system work (xelm plugins list)."""

import typer

app = typer.Typer(help="Plugins: list what is installed.", no_args_is_help=True)


def add_plugin_commands(root: typer.Typer) -> None:
    return None
