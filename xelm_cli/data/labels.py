"""The language labels of documents: each code normalised once (a corpus repeats a few codes
many times), and the one-line error for documents left without one."""

import functools

from xelm_cli.common.errors import UsageError
from xelm_cli.lang.codes import normalize_language


@functools.lru_cache(maxsize=4096)
def language_code(code: str) -> str:
    return normalize_language(code)


def unlabelled(where: str) -> UsageError:
    return UsageError(f"{where}: documents have no language: add a 'lang' field or pass --lang")
