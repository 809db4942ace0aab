"""The reading flags (``--split``, ``--lang``, ``--config``...) of the commands that read a
source: ``xelm data prepare``, ``xelm data tokenizer`` and ``xelm cluster NAME``. They are
derived from ``SourceOptions``' fields, which declare each flag and its help once, and shown
in a help panel of their own."""

import inspect
from collections.abc import Mapping
from dataclasses import fields
from typing import Annotated, Any

import typer

from xelm_cli.data.source_plan import SourceOptions

PANEL = "Reading the source"


def reading_parameters(*, hidden: bool = False) -> list[inspect.Parameter]:
    """One keyword-only text parameter per field of ``SourceOptions`` (named as
    ``SourceOptions.parameters`` says), for a Typer command: ``with_parameters`` of
    ``xelm_cli.plugin.options`` adds them to its signature. ``hidden``: left out of ``--help``
    (a command that refuses them, with a line better than "No such option")."""
    names = SourceOptions.parameters()
    return [
        inspect.Parameter(
            names[option.name],
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                str | None,
                typer.Option(
                    option.metadata["flag"],
                    help=option.metadata["help"],
                    rich_help_panel=PANEL,
                    show_default=False,
                    hidden=hidden,
                ),
            ],
        )
        for option in fields(SourceOptions)
    ]


def reading_from_flags(flags: Mapping[str, Any]) -> SourceOptions | None:
    """The ``SourceOptions`` that a command's reading flags give (among its keyword arguments;
    the others are ignored), each parsed as its field declares; None when none was given."""
    names = SourceOptions.parameters()
    values: dict[str, Any] = {}
    for option in fields(SourceOptions):
        text = flags.get(names[option.name])
        if text:
            parse = option.metadata["parse"]
            values[option.name] = parse(text) if parse else text
    return SourceOptions(**values) if values else None


__all__ = ["PANEL", "reading_from_flags", "reading_parameters"]
