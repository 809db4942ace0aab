"""Allocation files: which expert learns which languages (normative text: spec/allocation-v1.md).

An allocation is a JSON file, or, when a clusterer has fitted arrays (TF-IDF centroids, SVD
components), a directory holding ``allocation.json`` and ``arrays.safetensors``. This module
reads and writes the members every allocation has (format, clusterer, experts and their
languages, optional per-language shares) and the arrays; clusterers add their own members
(the typology tree, distances, fitted settings), which readers that do not need them ignore.
"""

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xelm_cli import __version__
from xelm_cli.bundle.fingerprint import reading_safetensors
from xelm_cli.bundle.manifest import first_of, schema_problems, spec_schema
from xelm_cli.common.atomic import atomic_directory, write_bytes_atomic
from xelm_cli.common.digest import sha256_bytes, sha256_file
from xelm_cli.common.errors import FormatError, IntegrityError, UsageError
from xelm_cli.common.jsonio import parse_json_object, pretty_json, short_repr
from xelm_cli.common.outputs import check_replaceable, json_format
from xelm_cli.common.recognise import ALLOCATION_FORMAT, ALLOCATION_MANIFEST, what_path_is
from xelm_cli.lang.codes import distinct_languages

FORMAT_NAME = ALLOCATION_FORMAT
FORMAT_VERSION = "1.1.0"  # 1.1.0 added the optional member `provenance`
SUPPORTED_MAJOR = 1
DIR_MANIFEST = ALLOCATION_MANIFEST
ARRAYS_FILE = "arrays.safetensors"


_provenance: ContextVar[dict[str, Any] | None] = ContextVar("allocation_provenance", default=None)


@contextmanager
def recording_provenance(clusterer: dict[str, Any] | None) -> Iterator[None]:
    """Within this block, :func:`write_allocation` records ``clusterer`` (a registration's
    ``provenance``: name, plugin, distribution, version) as the allocation's
    ``provenance.clusterer``. xelm wraps every ``Clusterer.fit`` in it, so a clusterer's
    allocation names the code that fitted it without the clusterer doing anything."""
    token = _provenance.set(clusterer)
    try:
        yield
    finally:
        _provenance.reset(token)


def allocation_schema() -> dict[str, Any]:
    return spec_schema("allocation-v1.schema.json")


@dataclass(frozen=True)
class Allocation:
    """An allocation read from disk (:func:`read_allocation`; spec/allocation-v1.md): which
    languages each expert trains on, by the clusterer that fitted it, and its JSON (``raw``:
    the tree, the document shares, the assigner's settings)."""

    clusterer: str
    experts: list[list[str]]  # expert index -> its languages
    digest: str  # sha256 of the allocation JSON bytes (which record the arrays' digest)
    path: Path  # the file, or the directory for allocations with arrays
    raw: dict[str, Any]

    def __fspath__(self) -> str:
        """Its file (or directory): an allocation goes wherever a path to one does."""
        return os.fspath(self.path)

    @property
    def provenance(self) -> dict[str, Any] | None:
        """The clusterer's ``{name, plugin, distribution, version}``, None when not recorded
        (allocations written before format 1.1.0, or outside a clusterer's fit)."""
        record = self.raw.get("provenance")
        clusterer = record.get("clusterer") if isinstance(record, dict) else None
        return clusterer if isinstance(clusterer, dict) else None

    @property
    def k(self) -> int:
        return len(self.experts)

    @property
    def language_shares(self) -> dict[str, list[float]] | None:
        """``language_shares`` by normalised language code (None: the allocation has none)."""
        return _language_shares(self.raw)

    @property
    def languages(self) -> list[str]:
        return list(dict.fromkeys(lang for langs in self.experts for lang in langs))

    def expert_of(self, language: str) -> int | None:
        """The first expert whose languages include ``language``."""
        return next((i for i, langs in enumerate(self.experts) if language in langs), None)

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
            **({"provenance": self.provenance} if self.provenance else {}),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted arrays (digest-checked); empty for an allocation without any."""
        file = self.check_arrays()
        if file is None:
            return {}
        from safetensors.numpy import load_file

        with reading_safetensors(file):
            return dict(load_file(str(file)))

    def check_arrays(self) -> Path | None:
        """The arrays file, once its digest matches the manifest's (None: the allocation has
        no arrays); a missing one is a UsageError, a changed one an IntegrityError."""
        entry = self.raw.get("arrays")
        if entry is None:
            return None
        file = self.path / ARRAYS_FILE
        if not file.is_file():
            raise UsageError(
                f"{self.path}: missing {ARRAYS_FILE}: restore the allocation folder from a "
                "copy, or run `xelm cluster` again"
            )
        if sha256_file(file) != entry.get("sha256"):
            raise IntegrityError(
                f"{file}: sha256 does not match {DIR_MANIFEST} (changed or damaged since it was "
                "written): restore the allocation folder from a copy, or run `xelm cluster` again"
            )
        return file


def _manifest_path(path: Path) -> Path:
    return path / DIR_MANIFEST if path.is_dir() else path


def _not_an_allocation(path: Path) -> str:
    """Why ``path``, which has no allocation.json, is no allocation, with the way out."""
    if not (path.exists() or path.is_symlink()):
        return f"allocation not found: {path}"
    what = what_path_is(path)
    held = f"is {what}, not an allocation" if what else f"is not an allocation (no {DIR_MANIFEST})"
    return f"{path} {held}: make one with `xelm cluster`"


def _expert_without_languages(experts: Any) -> str | None:
    """The problem of the first expert with no languages, or None. Such an expert has nothing
    to learn (and a plan would divide by its share of no data)."""
    for index, expert in enumerate(experts if isinstance(experts, list) else []):
        if isinstance(expert, dict) and expert.get("languages") == []:
            return f"expert {index} has no languages; give every expert at least one"
    return None


def as_allocation(allocation: "Allocation | str | Path") -> Allocation:
    """``allocation`` itself, or the allocation at that path (:func:`read_allocation`)."""
    return allocation if isinstance(allocation, Allocation) else read_allocation(allocation)


def read_allocation(path: str | Path) -> Allocation:
    """The allocation at ``path`` (its allocation.json, or the directory holding it with its
    arrays), checked against spec/allocation-v1.md: format, version, schema; a one-line
    :class:`UsageError` when it is missing, :class:`FormatError` when it is not one."""
    path = Path(path)
    json_path = _manifest_path(path)
    if not json_path.is_file():
        raise UsageError(_not_an_allocation(path))
    raw = json_path.read_bytes()  # parsed as read: the digest names the bytes parsed
    data = parse_json_object(raw, f"allocation {json_path}", unique_keys=True)
    try:
        languages = _expert_languages(data)
    except FormatError as exc:
        raise FormatError(f"{path}: {exc}") from None
    if "arrays" in data and not path.is_dir():  # named by its JSON file: the arrays lie beside
        path = path.parent
    return Allocation(data["clusterer"], languages, sha256_bytes(raw), path, data)


def _expert_languages(data: dict[str, Any]) -> list[list[str]]:
    """Each expert's normalised languages, once ``data`` is checked against
    spec/allocation-v1.md (format, version, schema, k); a :class:`FormatError` naming the
    first problem otherwise. Readers and writers both check with it."""
    if data.get("format") != FORMAT_NAME:
        raise FormatError(f"not an xelm allocation (format is {short_repr(data.get('format'))})")
    version = data.get("format_version", "")
    if not isinstance(version, str) or version.split(".")[0] != str(SUPPORTED_MAJOR):
        raise FormatError(
            f"allocation format version {short_repr(version)} is not supported "
            f"(reads {SUPPORTED_MAJOR}.x); upgrade xelm"
        )
    empty = _expert_without_languages(data.get("experts"))
    if empty is not None:
        raise FormatError(empty)
    problems = schema_problems(data, allocation_schema(), what="allocation")
    if problems:
        raise FormatError(first_of(problems))
    experts = data["experts"]
    if data.get("k", len(experts)) != len(experts):
        raise FormatError(f"'k' is {data['k']} but there are {len(experts)} experts")
    for i, expert in enumerate(experts):
        if "index" in expert and expert["index"] != i:
            raise FormatError(
                f"experts[{i}] has index {short_repr(expert['index'])} but is expert {i} (its "
                "position in the array); put each expert at the position of its index, or "
                "remove 'index'"
            )
    languages: list[list[str]] = []
    for i, expert in enumerate(experts):
        try:
            languages.append(distinct_languages(expert["languages"]))
        except UsageError as exc:
            raise FormatError(f"experts[{i}]: {exc}") from None
    _language_shares(data)
    return languages


def _language_shares(data: dict[str, Any]) -> dict[str, list[float]] | None:
    """``data``'s ``language_shares`` (schema-checked) by normalised language code; a
    FormatError for an unknown code, a language under two codes, or a row of other than k
    values."""
    shares = data.get("language_shares")
    if shares is None:
        return None
    try:
        codes = distinct_languages(shares)
    except UsageError as exc:
        raise FormatError(f"language_shares: {exc}") from None
    for raw, row in shares.items():
        if len(row) != len(data["experts"]):
            raise FormatError(
                f"language_shares[{short_repr(raw)}] has {len(row)} values for "
                f"{len(data['experts'])} experts: give one share per expert"
            )
    return {code: [float(x) for x in row] for code, row in zip(codes, shares.values(), strict=True)}


def is_allocation(path: Path) -> bool:
    """Whether ``path`` is an allocation (a file, or a directory with arrays) that an
    allocation writer may replace with ``overwrite``."""
    directory = path.is_dir() and not path.is_symlink()
    return json_format(path / DIR_MANIFEST if directory else path) == FORMAT_NAME


def check_allocation_output(
    out: str | Path, *, overwrite: bool, inputs: Iterable[str | Path | None] = ()
) -> None:
    """Refuse, before any input is read, an allocation output that would lose data: inside a
    bundle, an input (``inputs``: the data it reads) or a folder holding one, and anything
    there but an allocation or an empty folder (an existing one without ``overwrite``)."""
    check_replaceable(
        out, overwrite=overwrite, inputs=inputs, own=is_allocation, kind="an allocation"
    )


def write_allocation(
    out: str | Path,
    *,
    clusterer: str,
    experts: list[list[str]],
    members: dict[str, Any] | None = None,
    language_shares: dict[str, list[float]] | None = None,
    arrays: dict[str, np.ndarray] | None = None,
    overwrite: bool = False,
    provenance: dict[str, Any] | None = None,
) -> Allocation:
    """Write an allocation atomically: a JSON file, or a directory when there are ``arrays``.

    ``members`` are the clusterer's own JSON members (tree, distances, settings);
    ``language_shares[lang][i]`` is the fraction of ``lang``'s documents that expert ``i`` gets;
    ``provenance`` is the clusterer's registration provenance (by default the one
    :func:`recording_provenance` set, which xelm sets around ``Clusterer.fit``). An
    allocation :func:`read_allocation` would refuse (an unknown language code, one listed
    twice in an expert or in ``language_shares``, also under two codes such as ``iw`` and
    ``he``, a share row of other than k values) is a one-line :class:`UsageError`, and nothing
    is written. The experts' and the shares' codes are written normalised
    (``normalize_language``: ``EN`` is ``en``, ``iw`` ``he``).
    """
    out = Path(out)
    provenance = provenance if provenance is not None else _provenance.get()
    data: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "clusterer": clusterer,
        "k": len(experts),
        "experts": [{"index": i, "languages": langs} for i, langs in enumerate(experts)],
        "created_by": {"xelm": __version__},
    }
    if language_shares is not None:
        data["language_shares"] = language_shares
    data.update(members or {})
    if provenance is not None:
        data["provenance"] = {"clusterer": dict(provenance)}
    try:  # before writing: a refused allocation must not replace the one at ``out``
        normalised = _expert_languages(data)
    except FormatError as exc:
        raise UsageError(str(exc)) from None
    data["experts"] = [{"index": i, "languages": langs} for i, langs in enumerate(normalised)]
    if language_shares is not None:
        data["language_shares"] = _language_shares(data)
    check_allocation_output(out, overwrite=overwrite)  # a bundle, a folder of other things
    if not arrays:
        write_bytes_atomic(out, pretty_json(data), overwrite=overwrite)
        return read_allocation(out)
    from safetensors.numpy import save_file

    with atomic_directory(out, overwrite=overwrite) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp / ARRAYS_FILE))
        (tmp / ARRAYS_FILE).chmod(0o644)
        data["arrays"] = {"file": ARRAYS_FILE, "sha256": sha256_file(tmp / ARRAYS_FILE)}
        (tmp / DIR_MANIFEST).write_bytes(pretty_json(data))
    return read_allocation(out)
