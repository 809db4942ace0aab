"""The language labels of documents: each code normalised once (a corpus repeats a few codes
many times), and the one-line error for documents left without one."""

import functools
from collections.abc import Sequence

from xelm_cli.common.errors import UsageError
from xelm_cli.lang.codes import normalize_language, parse_language_list


@functools.lru_cache(maxsize=4096)
def language_code(code: str) -> str:
    return normalize_language(code)


def unlabelled(where: str) -> UsageError:
    return UsageError(f"{where}: documents have no language: add a 'lang' field or pass --lang")


def language_list(langs: Sequence[str] | str | None) -> list[str] | None:
    """A ``langs`` argument of the Python API, a list or text such as ``"en,tr"``, as
    normalised codes in order; None (or blank text): no choice of languages."""
    if isinstance(langs, str):
        return parse_language_list(langs) if langs.strip() else None
    return list(dict.fromkeys(normalize_language(code) for code in langs)) if langs else None
