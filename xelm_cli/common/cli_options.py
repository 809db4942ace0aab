"""Option types and output helpers shared by the command groups."""

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.measure import Measurement

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="cpu, cuda or cuda:N (default: CUDA if present).")
]
OutDirOpt = Annotated[
    Path, typer.Option("--output", "-o", help="Output directory (must not exist).")
]
BundleArg = Annotated[Path, typer.Argument(help="Bundle directory.", show_default=False)]


def print_json(value: Any) -> None:
    """What ``--json`` prints: indented, non-ASCII kept readable."""
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


PROSE_WIDTH = 88  # a table's column of sentences wraps at this width (``print_whole``)


def print_whole(console: Console, renderable: Any) -> None:
    """Print a table or tree on ``console``; into a pipe or file at its own width, since a file
    has no columns to fit and a line cut at the terminal's width loses its end (a column of
    prose given ``max_width=PROSE_WIDTH`` still wraps)."""
    if console.is_terminal:
        console.print(renderable, soft_wrap=False)  # wrapped at the terminal's width, not cut
        return
    wide = console.options.update_width(1_000_000)
    width = Measurement.get(console, wide, renderable).maximum
    Console(file=console.file, soft_wrap=True, width=max(width, 1)).print(renderable)
