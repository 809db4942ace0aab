"""Option types and output helpers shared by the command groups."""

import json
from pathlib import Path
from typing import Annotated, Any

import typer

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
