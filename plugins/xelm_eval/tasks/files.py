"""Reading task files: headed TSV and JSON-lines records, their text fields, and language codes
spelled by file and folder names."""

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xelm_cli.api import FormatError, UsageError, normalize_language


def file_language(code: str, where: str) -> str:
    """``code`` (as a file, folder or column spells it) normalised; FormatError naming
    ``where`` when it is not a language code."""
    try:
        return normalize_language(code.replace("_", "-"))
    except UsageError:
        raise FormatError(f"{where}: {code!r} is not a language code") from None


def require_file(path: Path, task: str) -> None:
    if not path.is_file():
        raise UsageError(f"{task}: missing file {path}")


def read_tsv(
    path: Path, columns: Sequence[str], *, quoted: bool
) -> list[tuple[int, dict[str, str]]]:
    """The rows of a headed TSV file as (line number, {column: value}); blank lines skipped.
    ``quoted``: fields may be CSV-quoted (SIB-200); else quote characters are plain text (the
    XNLI and XStoryCloze releases)."""
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            if quoted:
                reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_MINIMAL)
            else:
                reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if header is None:
                raise FormatError(f"{path}: empty file; expected a header row")
            missing = [c for c in columns if c not in header]
            if missing:
                raise FormatError(
                    f"{path}:1: the header lacks column(s) {', '.join(missing)} "
                    f"(found: {', '.join(header)})"
                )
            for row in reader:
                if not row or row == [""]:
                    continue
                if len(row) != len(header):
                    raise FormatError(
                        f"{path}:{reader.line_num}: {len(row)} tab-separated fields, "
                        f"the header has {len(header)}"
                    )
                rows.append((reader.line_num, dict(zip(header, row, strict=True))))
    except UnicodeDecodeError:
        raise FormatError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise FormatError(f"{path}: {exc}") from None
    return rows


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """The objects of a JSON-lines file as (line number, object); blank lines skipped."""
    records: list[tuple[int, dict[str, Any]]] = []
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise FormatError(f"{path}:{number}: not valid JSON: {exc.msg}") from None
                if not isinstance(record, dict):
                    raise FormatError(f"{path}:{number}: expected a JSON object")
                if "\\u" in line and not _is_unicode(record):  # only escapes make surrogates
                    raise FormatError(
                        f"{path}:{number}: a string holds a lone surrogate (a \\ud800-\\udfff "
                        "escape alone): not valid Unicode text"
                    )
                records.append((number, record))
    except UnicodeDecodeError:
        raise FormatError(f"{path}: not UTF-8 text") from None
    return records


def _is_unicode(record: dict[str, Any]) -> bool:
    try:
        json.dumps(record, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


def text_field(fields: dict[str, Any], key: str, where: str) -> str:
    """``fields[key]`` stripped; FormatError naming ``where`` unless it is a non-empty string."""
    value = fields.get(key)
    if not isinstance(value, str) or not value.strip():
        raise FormatError(f"{where}: {key!r} must be a non-empty string")
    return value.strip()
