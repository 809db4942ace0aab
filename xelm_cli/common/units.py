"""Counts written the way people write them: ``20M`` tokens, ``1.5B``, ``300K``."""

import re

from xelm_cli.common.errors import UsageError

_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "B": 10**9, "T": 10**12}
_COUNT = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([kKmMgGbBtT]?)\s*")


def parse_token_count(text: str) -> int:
    """``20M`` -> 20_000_000; also ``1.5B``, ``300K``, ``4096``, ``2e6``."""
    match = _COUNT.fullmatch(text)
    if not match:
        raise UsageError(f"not a token count: {text!r} (examples: 4096, 300K, 20M, 1.5B)")
    value = float(match[1]) * _SUFFIXES[match[2].upper()]
    if value < 1 or value != int(value):
        raise UsageError(f"a token count must be a positive whole number, not {text!r}")
    return int(value)
