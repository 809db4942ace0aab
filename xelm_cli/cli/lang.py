"""``xelm lang``: being written."""

import typer

app = typer.Typer(help="lang commands.", no_args_is_help=True)
