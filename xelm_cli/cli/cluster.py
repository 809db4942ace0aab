"""``xelm cluster``: one command per registered clusterer, plus ``show``."""

import typer

from ..plugins import get_registry

app = typer.Typer(
    help="Allocate languages or documents to experts. Each clusterer plugin adds a command.\n\n"
    "Example: xelm cluster typology --langs ar,bg,de,el,en,es,fr,hi -k 4 -o alloc.json",
    no_args_is_help=True,
)
_added: set[str] = set()


def add_clusterer_commands() -> None:
    """Add ``xelm cluster NAME`` for every registered clusterer (once per name)."""
    for name, registration in get_registry().clusterers.items():
        if name not in _added and name != "show":
            app.command(name, help=None)(registration.obj.command())
            _added.add(name)
