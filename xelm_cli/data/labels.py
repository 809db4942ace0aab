"""The language labels of documents: each code normalised once (a corpus repeats a few codes
many times), and the one-line error for documents left without one."""

import functools
from collections.abc import Mapping
from typing import Any

from xelm_cli.common.errors import UsageError
from xelm_cli.lang.codes import normalize_language

# A record's language: its first of these fields that is present and not empty (null or "").
# Every reader (JSON lines, Arrow, streamed and saved datasets) applies this one rule.
LANGUAGE_FIELDS = ("lang", "language")


def record_label(record: Mapping[str, Any]) -> tuple[str, Any] | None:
    """The field and value of ``record``'s language label (:data:`LANGUAGE_FIELDS`); None
    when it has none. The value is the caller's to check: it may not be text."""
    for field in LANGUAGE_FIELDS:
        value = record.get(field)
        if value is not None and value != "":
            return field, value
    return None


@functools.lru_cache(maxsize=4096)
def language_code(code: str) -> str:
    return normalize_language(code)


def unlabelled(where: str) -> UsageError:
    return UsageError(f"{where}: documents have no language: add a 'lang' field or pass --lang")
