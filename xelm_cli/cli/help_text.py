"""Help texts reflowed for the terminal: docstrings wrap at the source's width, and Typer keeps
their line breaks, so a terminal of another width would show them ragged. Prose paragraphs
become one line each (the terminal wraps them); lines that are indented or start a list item
(examples, option lists) keep their breaks."""

import re
from typing import Any

_KEEPS_ITS_LINE = re.compile("\\s|[-*] |\\d+[.)] |\x08")


def reflow(text: str) -> str:
    """``text`` with the line breaks inside prose paragraphs removed."""
    paragraphs = []
    for paragraph in text.split("\n\n"):
        lines: list[str] = []
        for line in paragraph.split("\n"):
            if lines and not _KEEPS_ITS_LINE.match(line) and not _KEEPS_ITS_LINE.match(lines[-1]):
                lines[-1] = f"{lines[-1].rstrip()} {line.strip()}"
            else:
                lines.append(line)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def reflow_commands(command: Any) -> None:
    """Reflow the help of ``command`` (a Click command as Typer builds it: Typer vendors its
    own Click) and of every command under it, in place."""
    if command.help:
        command.help = reflow(command.help)
    for sub in getattr(command, "commands", {}).values():
        reflow_commands(sub)
