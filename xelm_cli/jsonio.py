"""JSON helpers: canonical bytes for digests, readable files for people."""

import json
from pathlib import Path
from typing import Any

from .errors import FormatError


def canonical_json(value: Any) -> bytes:
    """Deterministic serialisation (sorted keys, no whitespace, UTF-8) used for fingerprints."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def pretty_json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode()


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """Read a JSON object, turning every failure into one FormatError line naming the file."""
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise FormatError(f"{what} not found: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{what} {path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise FormatError(f"{what} {path} is nested too deeply") from None
    if not isinstance(value, dict):
        raise FormatError(f"{what} {path} must hold a JSON object, not {type(value).__name__}")
    return value
