"""JSON helpers: canonical bytes for digests, readable files for people, hostile files refused."""

import itertools
import json
import math
import reprlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from xelm_cli.common.errors import FormatError

# Far deeper than any xelm file; what is deeper exhausts the recursion of the schema validator.
MAX_DEPTH = 100

_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlevel = 3


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to a few dozen characters, for a value quoted in a one-line error."""
    return _SHORT.repr(value)


def canonical_json(value: Any) -> bytes:
    """Deterministic serialisation (sorted keys, no whitespace, UTF-8) used for fingerprints."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def pretty_json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode()


class _RepeatedKey(ValueError):
    pass


def _without_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _RepeatedKey(key)
        found[key] = value
    return found


def parse_json_object(raw: bytes, where: str, *, unique_keys: bool = False) -> dict[str, Any]:
    """Parse a JSON object, turning every failure into one FormatError line ``where: why``;
    with ``unique_keys`` (xelm's own formats) a key given twice in one object is one too: JSON
    readers disagree on which of the two counts."""
    if not raw.strip():  # json.loads says "Expecting value: line 1 column 1 (char 0)"
        raise FormatError(
            f"{where} is empty (an interrupted write?): write it again with the xelm command "
            "that made it"
        )
    try:
        value = json.loads(raw, object_pairs_hook=_without_repeats if unique_keys else None)
    except _RepeatedKey as repeated:
        raise FormatError(f"{where}: key {str(repeated)!r} appears twice in one object") from None
    except RecursionError:
        raise FormatError(f"{where}: nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{where}: not valid JSON: {str(exc)[:200]}") from None
    except ValueError:  # Python reads integers of at most 4,300 digits
        raise FormatError(f"{where}: not valid JSON: a number is too long to read") from None
    if not isinstance(value, dict):
        raise FormatError(f"{where}: must hold a JSON object, not {type(value).__name__}")
    return value


def read_json_object(
    path: Path, what: str | None = None, *, unique_keys: bool = False
) -> dict[str, Any]:
    """Read a JSON object, turning every failure into one FormatError line naming the file
    (and, given, what it is: ``allocation not found: PATH``); ``unique_keys`` as
    :func:`parse_json_object`."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FormatError(f"{what} not found: {path}" if what else f"{path} not found") from None
    where = f"{what} {path}" if what else str(path)
    return parse_json_object(raw, where, unique_keys=unique_keys)


def value_problem(value: Any) -> str | None:
    """What makes a parsed JSON value unusable although ``json.loads`` accepts it, or None:
    nesting deeper than ``MAX_DEPTH``, a string with a lone surrogate (a ``\\ud800``
    escape), which has no UTF-8 form and so no canonical form, or a number that is not finite
    (``NaN``, ``Infinity``: Python writes and reads them, JSON has none)."""
    if not isinstance(value, dict | list):
        return _scalar_problem(value)
    containers = [(value, 1)]
    while containers:
        container, depth = containers.pop()
        if depth > MAX_DEPTH:
            return f"nested more than {MAX_DEPTH} levels deep"
        children: Iterable[Any] = container
        if isinstance(container, dict):  # its keys are strings to check too
            children = itertools.chain(container, container.values())
        for child in children:
            if isinstance(child, dict | list):
                containers.append((child, depth + 1))
            elif problem := _scalar_problem(child):
                return problem
    return None


def _scalar_problem(value: Any) -> str | None:
    if isinstance(value, str):
        return _string_problem(value)
    if isinstance(value, float) and not math.isfinite(value):
        return f"number {value} is not finite: JSON has no NaN or Infinity"
    return None


def _string_problem(text: str) -> str | None:
    if is_unicode(text):
        return None
    return f"string {short_repr(text)} holds a lone surrogate: not valid Unicode"


def is_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
