"""Counts written the way people write them: ``20M`` tokens, ``1.5B``, ``300K``."""

import re

from xelm_cli.common.errors import UsageError

_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "B": 10**9, "T": 10**12}
_COUNT = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([kKmMgGbBtT]?)\s*")


def parse_token_count(text: str, option: str | None = None, what: str = "a token count") -> int:
    """``20M`` -> 20_000_000; also ``1.5B``, ``300K``, ``4096``, ``2e6``. ``option`` names the
    flag (or item) the text was given with in the error (``--tokens``, ``--cap en=0``), and
    ``what`` what it counts (``a record count``)."""
    where = f"{option}: " if option else ""
    examples = "4096, 300K, 20M, 1.5B" if what == "a token count" else "500, 300K, 2M"
    match = _COUNT.fullmatch(text)
    if not match:
        raise UsageError(f"{where}not {what}: {text!r} (examples: {examples})")
    value = float(match[1]) * _SUFFIXES[match[2].upper()]
    if value < 1 or value != int(value):
        raise UsageError(f"{where}{what} must be a positive whole number, not {text!r}")
    return int(value)


def token_count(tokens: int | str, option: str = "tokens", what: str = "a token count") -> int:
    """A token count (or another ``what``) as a Python caller gives it: a positive int, or text
    such as ``20M``; ``option`` names it in the error."""
    if isinstance(tokens, str):
        return parse_token_count(tokens, option, what)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise UsageError(
            f"{option} must be a positive whole number or text such as 20M, not {tokens!r}"
        )
    return tokens


_BYTES = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?)[bB]?\s*")


def parse_byte_size(text: str, option: str = "a size") -> int:
    """A size in bytes: ``80GB`` or ``80G`` -> 80e9, ``141GiB`` -> 141 x 2^30, ``512M``, ``2T``,
    ``4096``. ``B`` means bytes here (unlike a token count, where ``1B`` is a billion).
    ``option`` names what is parsed in the error (``--size``)."""
    match = _BYTES.fullmatch(text)
    if not match:
        raise UsageError(
            f"{option} takes a number of bytes such as 500K or 2M (also 2GB, 141GiB), not {text!r}"
        )
    power = " KMGT".index(match[2].upper() or " ")
    return int(float(match[1]) * (1024 if match[3] else 1000) ** power)


def duration(seconds: float) -> str:
    """A time as people read it: ``45 s`` under 90 s, ``12.5 min`` under 90 min, else ``3.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
