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
