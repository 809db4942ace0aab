"""Token shards: tokenised documents per language, memory-mapped (normative: spec/shards-v1.md).

A shards directory holds, per language, ``LANG.tokens.bin`` (every document's token ids,
concatenated, little-endian uint16 or uint32) and ``LANG.offsets.bin`` (little-endian uint64
document boundaries, ``documents + 1`` of them, starting at 0), plus the manifest ``shards.json``.
Raw arrays rather than ``.npy`` so that any language can map them with no header parsing; the
dtype lives in the manifest.
"""

import functools
import itertools
import json
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from xelm_cli import __version__
from xelm_cli.bundle.manifest import first_of, schema_problems, spec_schema
from xelm_cli.common.digest import sha256_bytes, sha256_file, short
from xelm_cli.common.errors import FormatError, IntegrityError, UsageError
from xelm_cli.common.jsonio import parse_json_object, pretty_json, short_repr
from xelm_cli.common.recognise import SHARDS_FORMAT, SHARDS_MANIFEST, what_path_is
from xelm_cli.lang.codes import normalize_language

FORMAT = SHARDS_FORMAT
FORMAT_VERSION = "1.4.0"  # 1.2: the optional option `sizes`; 1.3: `allocation`; 1.4: `max_records`
MANIFEST_NAME = SHARDS_MANIFEST
OFFSETS_DTYPE = np.dtype("<u8")
TOKEN_DTYPES: dict[str, np.dtype[Any]] = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
MAKE_SHARDS = "make them with `xelm data prepare`"  # the way out of a path that is no shards
PREPARE_AGAIN = "prepare them again with `xelm data prepare --force`"  # of broken shards


def token_dtype_name(vocab_size: int) -> str:
    """``uint16`` when every id (``0 .. vocab_size - 1``) fits in 16 bits, else ``uint32``."""
    if vocab_size <= 0:
        raise ValueError(f"vocabulary size must be positive, not {vocab_size}")
    if vocab_size > 1 << 32:
        raise UsageError(f"a vocabulary of {vocab_size} tokens does not fit in uint32 shards")
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def tokens_file(language: str) -> str:
    return f"{language}.tokens.bin"


def offsets_file(language: str) -> str:
    return f"{language}.offsets.bin"


def write_array(path: Path, array: NDArray[Any]) -> None:
    """``array``'s bytes to a new file; unlike ``ndarray.tofile``, a failed write (a full disk)
    raises OSError with its errno and file name."""
    with open(path, "wb") as f:
        f.write(np.ascontiguousarray(array).data)


def _file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def write_manifest(directory: Path, fields: dict[str, Any]) -> bytes:
    """Write ``shards.json`` with every data file's digest and size; return its bytes.

    ``fields`` holds ``dtype``, ``tokenizer``, ``source``, ``options`` and ``languages``
    (``{lang: {"documents", "tokens", ...}}``); this adds format, files and ``created_by``.
    """
    files = {}
    for language in sorted(fields["languages"]):
        for name in (tokens_file(language), offsets_file(language)):
            files[name] = _file_entry(directory / name)
            (directory / name).chmod(0o444)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **fields,
        "files": files,
        "created_by": {"xelm": __version__},
    }
    for language, entry in manifest["languages"].items():
        entry["files"] = {"tokens": tokens_file(language), "offsets": offsets_file(language)}
    data = pretty_json(manifest)
    # checked as a reader will read it: never write shards that Shards.open would refuse
    if problems := manifest_problems(json.loads(data)):
        raise FormatError(f"refusing to write an invalid shards manifest: {first_of(problems)}")
    (directory / MANIFEST_NAME).write_bytes(data)
    return data


def shards_schema() -> dict[str, Any]:
    return spec_schema("shards-v1.schema.json")


def manifest_problems(manifest: dict[str, Any]) -> list[str]:
    """Every breach of spec/shards-v1.md that ``manifest`` alone shows (not its files): the
    schema's (spec/shards-v1.schema.json); when there are none, the rules it cannot express
    (:func:`rule_problems`). One line each, naming the member."""
    return schema_problems(manifest, shards_schema()) or rule_problems(manifest)


def rule_problems(manifest: dict[str, Any]) -> list[str]:
    """Breaches of the spec's MUST rules that the schema cannot express, in a manifest that is
    valid against the schema: every language key in its normal form, and ``files`` naming
    exactly each language's two files, as its ``files`` member does (spec 1.1, 3)."""
    problems = []
    expected: set[str] = set()
    for language, entry in sorted(manifest["languages"].items()):
        if problem := _tag_problem(language):
            problems.append(f"languages: {problem} (spec 1.1)")
        names = {"tokens": tokens_file(language), "offsets": offsets_file(language)}
        for role, name in names.items():
            if entry["files"][role] != name:
                problems.append(
                    f"languages/{language}/files/{role}: "
                    f"{short_repr(entry['files'][role])}, not {name!r} (spec 1.1)"
                )
        expected.update(names.values())
    listed = set(manifest["files"])
    problems += [f"files: {name} is not listed (spec 1.1)" for name in sorted(expected - listed)]
    problems += [
        f"files: {name} is no file of the manifest's languages (spec 1.1)"
        for name in sorted(listed - expected)
    ]
    return problems


@functools.cache
def _tag_problem(language: str) -> str | None:
    """Why the language key ``language`` is not a normalised tag (``normalize_language``'s
    form, which it must equal), or None."""
    try:
        normal = normalize_language(language)
    except UsageError:
        return f"{short_repr(language)} is no language code xelm knows"
    if normal != language:
        return f"{short_repr(language)} is not a normalised tag: write it {normal!r}"
    return None


@dataclass(frozen=True)
class LanguageStats:
    documents: int
    tokens: int


def _check_version(manifest: dict[str, Any], where: Path) -> None:
    if manifest.get("format") != FORMAT:
        raise FormatError(
            f"{where}: not an xelm shards manifest (format {manifest.get('format')!r})"
        )
    version = str(manifest.get("format_version", ""))
    if version.split(".")[0] != "1":
        raise FormatError(
            f"{where}: shards format version {version!r} is not supported by xelm {__version__}; "
            "upgrade xelm"
        )


def _not_shards(path: Path) -> str:
    """Why ``path``, which holds no shards manifest, is not shards."""
    if not path.exists():
        return f"{path} does not exist"
    what = what_path_is(path)
    if what is not None:
        return f"{path} is {what}"
    if not path.is_dir():
        return f"{path} is a file"
    return f"{path} has no {MANIFEST_NAME}"


def format_minor(manifest: dict[str, Any]) -> int:
    """The MINOR of a manifest's ``format_version`` (``1.MINOR.PATCH``); 0 when unreadable."""
    parts = str(manifest.get("format_version", "")).split(".")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def _map(path: Path, dtype: np.dtype[Any]) -> NDArray[Any]:
    if path.stat().st_size == 0:  # mmap refuses empty files
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class Shards:
    """An opened shards directory; ``digest`` (sha256 of ``shards.json``) is its identity."""

    def __init__(self, path: Path, manifest: dict[str, Any], digest: str) -> None:
        self.path = path
        self.manifest = manifest
        self.digest = digest
        self._maps: dict[str, tuple[NDArray[Any], NDArray[np.uint64]]] = {}

    def __fspath__(self) -> str:
        """Its directory: shards go wherever a path to them does (``train(..., data=shards)``)."""
        return os.fspath(self.path)

    @classmethod
    def open(cls, path: str | Path) -> "Shards":
        """Read and check the manifest, and that every data file has its recorded size."""
        path = Path(path)
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise UsageError(f"not a shards directory: {_not_shards(path)}; {MAKE_SHARDS}")
        raw = manifest_path.read_bytes()  # parsed as read: the digest names the bytes parsed
        try:
            manifest = parse_json_object(raw, f"shards manifest {manifest_path}", unique_keys=True)
        except FormatError as exc:
            if not raw.strip():  # its message has its own way out
                raise
            raise FormatError(f"{exc}; {PREPARE_AGAIN}") from None
        _check_version(manifest, manifest_path)
        # before any file is looked at: a language key or file name may point anywhere
        if problems := manifest_problems(manifest):
            raise FormatError(f"{manifest_path}: {first_of(problems)}; {PREPARE_AGAIN}")
        shards = cls(path, manifest, sha256_bytes(raw))
        if problems := shards.size_problems():
            raise IntegrityError(
                f"{path}: {problems[0]} (rebuild with `xelm data prepare --force`)"
            )
        return shards

    @property
    def languages(self) -> list[str]:
        return sorted(self.manifest["languages"])

    @property
    def stats(self) -> dict[str, LanguageStats]:
        return {
            lang: LanguageStats(int(entry["documents"]), int(entry["tokens"]))
            for lang, entry in sorted(self.manifest["languages"].items())
        }

    def tokens_in(self, languages: Sequence[str]) -> int:
        """The tokens these shards hold in ``languages`` (one pass over them)."""
        return sum(int(self.manifest["languages"][lang]["tokens"]) for lang in languages)

    @property
    def dtype(self) -> np.dtype[Any]:
        return TOKEN_DTYPES[self.manifest["dtype"]]

    @property
    def tokenizer_fingerprint(self) -> str:
        return str(self.manifest["tokenizer"]["fingerprint"])

    @property
    def special_tokens(self) -> dict[str, int | None]:
        """``bos``, ``eos`` and ``pad`` ids of the tokenizer (documents hold none of them)."""
        return dict(self.manifest["tokenizer"].get("special_tokens", {}))

    def require_languages(self, languages: Iterable[str]) -> None:
        """Refuse, in one line, languages these shards have no documents for."""
        missing = [lang for lang in languages if lang not in self.manifest["languages"]]
        if missing:
            raise UsageError(
                f"{self.path} has no documents in {', '.join(missing)} "
                f"(it has {', '.join(self.languages)}); prepare them with `xelm data prepare`"
            )

    def require_tokenizer(self, fingerprint: str, what: str) -> None:
        """Refuse, in one line, ``what`` (a bundle, say) whose tokenizer is not the shards' one."""
        if fingerprint != self.tokenizer_fingerprint:
            raise UsageError(
                f"{what} has tokenizer {fingerprint}, but {self.path} was prepared with "
                f"{self.tokenizer_fingerprint}; prepare the data with its tokenizer "
                "(`xelm data prepare --tokenizer`)"
            )

    @property
    def expert(self) -> dict[str, Any] | None:
        """The allocation expert whose documents alone these shards hold (``options.allocation``:
        ``clusterer``, ``expert``, ``k``, ``digest``, ``path``, as a bundle's manifest records
        it); None: every document of their languages."""
        found = self.manifest.get("options", {}).get("allocation")
        return dict(found) if isinstance(found, dict) else None

    def require_expert(
        self, reference: dict[str, Any] | None, what: str, *, assigns_documents: bool
    ) -> None:
        """Refuse, in one line, to train ``what`` (a bundle that is ``reference``'s expert, None:
        no allocation's) on these shards when they hold the documents of another allocation's
        expert, or when ``what`` is an expert of an allocation that ``assigns_documents`` and
        these shards hold every document of their languages."""
        held = self.expert
        if (
            held is not None
            and reference is not None
            and _expert_key(held) != _expert_key(reference)
        ):
            mine = f"expert {reference.get('expert')}"
            if held.get("digest") != reference.get("digest"):
                mine += f" of {reference.get('path')} ({short(str(reference.get('digest')))})"
            raise UsageError(
                f"{self.path} holds the documents of expert {held.get('expert')} of allocation "
                f"{held.get('path')} ({short(str(held.get('digest')))}), but {what} is {mine}: "
                "give the shards prepared for it (xelm data prepare --allocation --expert)"
            )
        if held is None and reference is not None and assigns_documents:
            name, index = reference.get("path"), reference.get("expert")
            raise UsageError(
                f"{what} is expert {index} of {name}, whose {reference.get('clusterer')} "
                f"clusterer assigns documents, not languages, and {self.path} holds every "
                f"document of its languages: prepare its own with `xelm data prepare CORPUS "
                f"--allocation {name} --expert {index} -o DIR`"
            )

    def _arrays(self, language: str) -> tuple[NDArray[Any], NDArray[np.uint64]]:
        if language not in self._maps:
            self.require_languages([language])
            tokens = _map(self.path / tokens_file(language), self.dtype)
            offsets = _map(self.path / offsets_file(language), OFFSETS_DTYPE)
            self._maps[language] = (tokens, offsets)
        return self._maps[language]

    def tokens(self, language: str) -> NDArray[Any]:
        """All token ids of ``language``, concatenated, memory-mapped read-only."""
        return self._arrays(language)[0]

    def offsets(self, language: str) -> NDArray[np.uint64]:
        """Document boundaries: document ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``."""
        return self._arrays(language)[1]

    def document(self, language: str, index: int) -> NDArray[Any]:
        tokens, offsets = self._arrays(language)
        if not 0 <= index < len(offsets) - 1:
            raise IndexError(f"{language} has {len(offsets) - 1} documents, not {index + 1}")
        return tokens[int(offsets[index]) : int(offsets[index + 1])]

    def iter_documents(self, languages: Iterable[str] | None = None) -> Iterator[NDArray[Any]]:
        """Every document of ``languages`` (default: all), language by language, in order."""
        languages = list(languages) if languages is not None else self.languages
        self.require_languages(languages)
        for language in languages:
            tokens, offsets = self._arrays(language)
            bounds = offsets.tolist()
            for start, end in itertools.pairwise(bounds):
                yield tokens[start:end]

    def size_problems(self) -> list[str]:
        """Missing files and sizes that disagree with the manifest or with the counts."""
        problems = []
        for name, entry in sorted(self.manifest.get("files", {}).items()):
            file = self.path / name
            if not file.is_file():
                problems.append(f"{name}: missing")
            elif file.stat().st_size != entry["size"]:
                problems.append(
                    f"{name}: size {file.stat().st_size}, manifest says {entry['size']}"
                )
        for language, entry in sorted(self.manifest["languages"].items()):
            expected = {
                tokens_file(language): int(entry["tokens"]) * self.dtype.itemsize,
                offsets_file(language): (int(entry["documents"]) + 1) * OFFSETS_DTYPE.itemsize,
            }
            for name, size in expected.items():
                recorded = self.manifest.get("files", {}).get(name, {}).get("size")
                if recorded != size:
                    problems.append(f"{name}: size {recorded}, the counts need {size}")
        return problems

    def verify(self) -> list[str]:
        """Every problem found (empty when the shards verify): sizes, digests, boundaries."""
        problems = self.size_problems()
        if problems:
            return problems
        for name, entry in sorted(self.manifest["files"].items()):
            if sha256_file(self.path / name) != entry["sha256"]:
                problems.append(f"{name}: sha256 does not match the manifest (content changed)")
        listed = {*self.manifest["files"], MANIFEST_NAME}
        for child in sorted(self.path.iterdir()):
            if child.name not in listed or not stat.S_ISREG(os.lstat(child).st_mode):
                problems.append(f"{child.name}: not listed in the manifest")
        if not problems:
            problems += self._boundary_problems()
        return problems

    def _boundary_problems(self) -> list[str]:
        problems = []
        for language, entry in sorted(self.manifest["languages"].items()):
            offsets = self.offsets(language)
            if offsets[0] != 0 or offsets[-1] != int(entry["tokens"]):
                problems.append(f"{offsets_file(language)}: must run from 0 to the token count")
            elif np.any(np.diff(offsets.astype(np.int64)) < 0):
                problems.append(f"{offsets_file(language)}: offsets decrease")
        return problems


def _expert_key(reference: dict[str, Any]) -> tuple[Any, Any]:
    return reference.get("digest"), reference.get("expert")
