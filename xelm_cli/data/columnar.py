"""JSON lines parsed a block at a time by Arrow's JSON reader, with no Python object per line;
a block it does not take is read line by line (``xelm_cli.data.blocks``). pyarrow is imported
when first used."""

import functools
from typing import Any

import numpy as np

from xelm_cli.common.errors import UsageError
from xelm_cli.data.labels import LANGUAGE_FIELDS, language_code

NEWLINE, OPEN_BRACE, OPEN_BRACKET = ord("\n"), ord("{"), ord("[")
# Deep nesting is an error of Python's JSON reader (RecursionError), not of Arrow's: a line with
# more brackets than this is read line by line, where Python's reader decides.
NESTING = 500
Parsed = tuple[list[str], list[str | None], int]  # texts, languages, lines read


@functools.cache
def _arrow() -> Any:
    """pyarrow with its JSON reader and compute functions (imported when first used)."""
    import pyarrow
    import pyarrow.compute
    import pyarrow.json

    return pyarrow


@functools.cache
def _json_options() -> Any:
    """Arrow's JSON parsing of records: the fields documents are made of, as text."""
    pa = _arrow()
    fields = [(name, pa.string()) for name in ("text", *LANGUAGE_FIELDS)]
    schema = pa.schema(fields)
    return pa.json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")


def columnar_records(data: bytes, default: str | None) -> Parsed | None:
    """The documents of JSON lines ``data`` read by Arrow's JSON reader, or None unless every
    line is one JSON object with a string ``text``, valid UTF-8 and ``\\n`` line ends and
    every language code is known: the line-by-line reading decides (and words) the rest."""
    pa = _arrow()
    view = np.frombuffer(data, dtype=np.uint8)
    starts = np.flatnonzero(view[:-1] == NEWLINE) + 1
    # A line that is not an object (Arrow's reader crashes on a bare `null`), a byte-order
    # mark, a blank line or a "\r" (a line break when read as text) is read line by line.
    if b"\r" in data or view[0] != OPEN_BRACE or np.any(view[starts] != OPEN_BRACE):
        return None
    brackets = (view == OPEN_BRACE) | (view == OPEN_BRACKET)
    if np.add.reduceat(brackets, np.concatenate([[0], starts]), dtype=np.int64).max() > NESTING:
        return None
    try:
        data.decode("utf-8")  # Arrow checks only the fields it keeps
        table = pa.json.read_json(
            pa.BufferReader(data),
            read_options=pa.json.ReadOptions(use_threads=False),
            parse_options=_json_options(),
        )
    except (UnicodeDecodeError, pa.ArrowInvalid):
        return None
    rows = len(starts) + 1
    text, *labels = (table.column(name) for name in ("text", *LANGUAGE_FIELDS))
    if table.num_rows != rows or text.null_count:  # more rows than lines: a line held several
        return None
    # the first label that is neither null nor empty (labels.record_label)
    present = [pa.compute.if_else(pa.compute.equal(c, ""), pa.scalar(None, pa.string()), c)
               for c in labels]  # fmt: skip
    languages = _languages(pa.compute.coalesce(*present, pa.scalar("")), default)
    return None if languages is None else (text.to_pylist(), languages, rows)


def _languages(codes: Any, default: str | None) -> list[str | None] | None:
    """Each row's normalised language (``default`` where its code is empty); None if a code is
    unknown (the line-by-line reading names the line)."""
    compute = _arrow().compute
    found = compute.unique(codes)
    try:
        names = [language_code(code) if code else default for code in found.to_pylist()]
    except UsageError:
        return None
    if len(names) == 1:
        return names * len(codes)
    indices = compute.index_in(codes, value_set=found).to_numpy()
    languages: list[str | None] = np.array(names, dtype=object)[indices].tolist()
    return languages
