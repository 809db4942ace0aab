"""Domain errors. The CLI turns each into one line on stderr and a non-zero exit code."""


class XelmError(Exception):
    """Base class of every error xelm reports to a user without a traceback."""

    exit_code = 1


class UsageError(XelmError):
    """Bad input from the user: wrong option, unknown name, missing file."""

    exit_code = 2


class FormatError(XelmError):
    """A file does not follow its xelm format (schema, version, JSON)."""

    exit_code = 3


class IntegrityError(XelmError):
    """Content does not match its recorded digest or size."""

    exit_code = 4


class ArchiveError(XelmError):
    """An archive is unsafe or malformed."""

    exit_code = 5


class PluginError(XelmError):
    """A plugin failed to load or registered something invalid."""

    exit_code = 6


def one_line(text: str, limit: int) -> str:
    """``text`` shortened to ``limit`` characters, on one line (control characters escaped)."""
    cut = text if len(text) <= limit else text[:limit] + "..."
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in cut)


def exception_line(
    exc: BaseException, limit: int = 300, *, with_type: bool = False, all_lines: bool = False
) -> str:
    """What went wrong in one line: the first non-blank line of ``exc``'s message (with
    ``all_lines``, every non-blank line joined by ``; ``), or its type's name when it has none,
    shortened to ``limit``; ``with_type`` prefixes ``TypeName: ``."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    name = type(exc).__name__
    if not lines:
        return name
    text = one_line("; ".join(lines) if all_lines else lines[0], limit)
    return f"{name}: {text}" if with_type else text
