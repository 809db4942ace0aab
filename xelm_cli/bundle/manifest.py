"""The bundle manifest ``xelm.json``: reading, version checks and schema validation.

Normative text: spec/bundle-v1.md. Readers ignore unknown fields and refuse an unknown major
version before looking at anything else, so a v2 bundle fails with one clear line.
"""

import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import jsonschema

from xelm_cli.common.digest import sha256_bytes
from xelm_cli.common.errors import FormatError, one_line
from xelm_cli.common.jsonio import canonical_json, short_repr, value_problem
from xelm_cli.common.outputs import BUNDLE_MANIFEST
from xelm_cli.common.recognise import BUNDLE_FORMAT

FORMAT_NAME = BUNDLE_FORMAT
FORMAT_VERSION = "1.3.0"  # 1.1: `framing`; 1.2: `allocation.provenance`; 1.3: `gate_allocation`
MANIFEST_NAME = BUNDLE_MANIFEST
CARD_NAME = "README.md"
ROLES = ("seed", "expert", "dense")
_MAJOR = re.compile(r"[0-9]{1,9}(\.|\Z)")  # ASCII digits only, and few enough for int()


@functools.cache
def spec_schema(name: str) -> dict[str, Any]:
    """The JSON Schema ``spec/NAME`` that ships with xelm."""
    text = resources.files("xelm_cli").joinpath(f"spec/{name}").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def bundle_schema() -> dict[str, Any]:
    return spec_schema("bundle-v1.schema.json")


def check_format_version(data: dict[str, Any], what: str = "bundle") -> None:
    """Refuse a manifest whose format or major version this reader does not know."""
    fmt = data.get("format")
    if fmt != FORMAT_NAME:
        raise FormatError(f"{what}: not an xelm bundle manifest (format is {short_repr(fmt)})")
    version = data.get("format_version")
    if not isinstance(version, str) or not _MAJOR.match(version):
        raise FormatError(f"{what}: format_version {short_repr(version)} is not a semantic version")
    major = int(version.split(".")[0])
    supported = int(FORMAT_VERSION.split(".")[0])
    if major != supported:
        raise FormatError(
            f"{what}: bundle format version {one_line(version, 40)} is not supported by this xelm "
            f"(reads {supported}.x); upgrade xelm to read it"
        )


def first_of(problems: list[str]) -> str:
    """The first of ``problems`` for a one-line message, saying how many more there are."""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more


def schema_problems(
    data: dict[str, Any], schema: dict[str, Any] | None = None, what: str = "manifest"
) -> list[str]:
    """Every violation of ``schema`` (default: the bundle manifest's) as a line with its path."""
    problem = value_problem(data)
    if problem:
        return [f"{what} (top level): {problem}"]
    validator = _Validator(schema or bundle_schema())
    problems = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        problems.append(f"{what} {one_line(where, 100)}: {one_line(error.message, 200)}")
    return problems


def _json_identity(value: Any) -> Any:
    """A hashable stand-in equal for equal JSON values (as JSON Schema compares them: 1 equals
    1.0 but true is no number)."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, list):
        return ("array", tuple(_json_identity(item) for item in value))
    if isinstance(value, dict):
        return ("object", frozenset((k, _json_identity(v)) for k, v in value.items()))
    return ("number" if isinstance(value, int | float) else "scalar", value)


def _unique_items(
    validator: Any, unique: bool, instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    """``uniqueItems`` in linear time: jsonschema's own check is quadratic in unhashable
    items, so an array of 10,000 objects took minutes."""
    if not unique or not validator.is_type(instance, "array"):
        return
    if len({_json_identity(item) for item in instance}) < len(instance):
        yield jsonschema.ValidationError(f"{short_repr(instance)} has non-unique elements")


@functools.cache
def _ecma_regex(pattern: str) -> re.Pattern[str]:
    """A schema ``pattern`` read as JSON Schema reads it (ECMA-262): its ``$`` matches only at
    the end of the text, where Python's also matches before a final newline (``"a.json\\n"``)."""
    return re.compile(re.sub(r"(?<!\\)((?:\\\\)*)\$", r"\1\\Z", pattern))


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    if validator.is_type(instance, "string") and not _ecma_regex(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"uniqueItems": _unique_items, "pattern": _pattern}
)


def content_digest(data: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its own ``content_digest`` field."""
    return sha256_bytes(canonical_json({k: v for k, v in data.items() if k != "content_digest"}))


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass
class Manifest:
    """Typed view of ``xelm.json``; ``raw`` keeps the fields this version does not know."""

    id: str
    role: str
    languages: list[str]
    lineage: list[dict[str, Any]]
    files: dict[str, FileEntry]
    fingerprints: dict[str, str]
    name: str = ""
    allocation: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    framing: dict[str, Any] | None = None  # None: written before 1.1 (see xelm_cli.bundle.framing)
    format_version: str = FORMAT_VERSION
    created_by: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], what: str = "bundle") -> "Manifest":
        check_format_version(data, what)
        problems = schema_problems(data)
        if problems:
            raise FormatError(f"{what}: {first_of(problems)}")
        return cls(
            id=data["id"],
            role=data["role"],
            languages=list(data["languages"]),
            lineage=list(data["lineage"]),
            files={k: FileEntry(v["sha256"], v["size"]) for k, v in data["files"].items()},
            fingerprints=dict(data["fingerprints"]),
            name=data.get("name", ""),
            allocation=data.get("allocation"),
            training=data.get("training"),
            framing=data.get("framing"),
            format_version=data["format_version"],
            created_by=dict(data["created_by"]),
            created_at=data.get("created_at", ""),
            raw=data,
        )

    def to_dict(self) -> dict[str, Any]:
        data = self._fields()
        data["content_digest"] = content_digest(data)
        return data

    def _fields(self) -> dict[str, Any]:
        fields = {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "languages": self.languages,
            "allocation": self.allocation,
            "lineage": self.lineage,
            "training": self.training,
            "files": {
                k: {"sha256": v.sha256, "size": v.size} for k, v in sorted(self.files.items())
            },
            "fingerprints": self.fingerprints,
            "created_by": self.created_by,
            "created_at": self.created_at,
        }
        if self.framing is not None:
            fields["framing"] = self.framing
        return fields

    @property
    def edited(self) -> bool:
        """True when the manifest changed after it was written (its content digest is stale)."""
        return self.raw.get("content_digest") != content_digest(self.raw)

    @property
    def relation(self) -> str:
        """How this bundle was made from its parent(s): the last lineage step."""
        return str(self.lineage[-1]["relation"])

    @property
    def parents(self) -> list[dict[str, str]]:
        return list(self.lineage[-1]["parents"])

    @property
    def origin(self) -> dict[str, Any]:
        """Where the first bundle of this line came from (a named config or a HF model)."""
        return dict(self.lineage[0].get("source", {}))


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
