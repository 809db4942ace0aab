"""Allocation files: which expert learns which languages (normative text: spec/allocation-v1.md).

This module reads the part every allocation has (format, clusterer, experts and their
languages); clusterers add their own fields (tree, distances, fitted state), which readers
that do not need them ignore.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .digest import sha256_bytes
from .errors import FormatError, UsageError
from .jsonio import read_json_object
from .languages import normalize_language

FORMAT_NAME = "xelm-allocation"
SUPPORTED_MAJOR = 1


@dataclass(frozen=True)
class Allocation:
    clusterer: str
    experts: list[list[str]]  # expert index -> its languages
    digest: str
    path: Path
    raw: dict[str, Any]

    @property
    def k(self) -> int:
        return len(self.experts)

    def reference(self, expert: int) -> dict[str, Any]:
        """How a bundle's manifest records that it is ``expert`` of this allocation."""
        if not 0 <= expert < self.k:
            raise UsageError(
                f"expert {expert} does not exist: {self.path} has experts 0..{self.k - 1}"
            )
        return {
            "clusterer": self.clusterer,
            "expert": expert,
            "k": self.k,
            "digest": self.digest,
            "path": self.path.name,
        }


def read_allocation(path: Path) -> Allocation:
    if not path.is_file():
        raise UsageError(f"allocation file not found: {path}")
    data = read_json_object(path, "allocation")
    if data.get("format") != FORMAT_NAME:
        raise FormatError(f"{path}: not an xelm allocation (format is {data.get('format')!r})")
    version = str(data.get("format_version", ""))
    if version.split(".")[0] != str(SUPPORTED_MAJOR):
        raise FormatError(
            f"{path}: allocation format version {version!r} is not supported "
            f"(reads {SUPPORTED_MAJOR}.x); upgrade xelm"
        )
    experts = data.get("experts")
    clusterer = data.get("clusterer")
    if not isinstance(clusterer, str) or not clusterer:
        raise FormatError(f"{path}: 'clusterer' must be a non-empty string")
    if not isinstance(experts, list) or not experts:
        raise FormatError(f"{path}: 'experts' must be a non-empty list")
    languages: list[list[str]] = []
    for i, expert in enumerate(experts):
        langs = expert.get("languages") if isinstance(expert, dict) else None
        if not isinstance(langs, list) or not all(isinstance(x, str) for x in langs):
            raise FormatError(f"{path}: experts[{i}].languages must be a list of language codes")
        try:
            languages.append([normalize_language(x) for x in langs])
        except UsageError as exc:
            raise FormatError(f"{path}: experts[{i}]: {exc}") from None
    return Allocation(clusterer, languages, sha256_bytes(path.read_bytes()), path, data)
