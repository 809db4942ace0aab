"""Option types shared by the command groups."""

from pathlib import Path
from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]
OutDirOpt = Annotated[
    Path, typer.Option("--output", "-o", help="Output directory (must not exist).")
]
BundleArg = Annotated[Path, typer.Argument(help="Bundle directory.", show_default=False)]
