"""Hostile inputs, fuzzed: manifests, allocation files, safetensors headers, JSON lines corpora
and language codes each end in a clean one-line error (or are accepted when valid), never a
traceback, a hang or unbounded memory. Archives are fuzzed in tests/test_archive.py.

Each generated case is logged with ``record("fuzz", "<target>: <kind of input>", outcome)``;
``XELM_RELIABILITY_SCALE`` multiplies the case counts (``nox -s reliability``).
"""

import copy
import hashlib
import json
import os
import re
import shutil
import struct
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st
from reliability import fuzz_settings, record

from xelm_cli.bundle.fingerprint import architecture_fingerprint
from xelm_cli.bundle.manifest import MANIFEST_NAME, bundle_schema, content_digest
from xelm_cli.bundle.store import Bundle, verify_bundle, write_bundle
from xelm_cli.cli import INTERNAL_ERROR_EXIT, run
from xelm_cli.cluster.allocation import ARRAYS_FILE, DIR_MANIFEST, read_allocation, write_allocation
from xelm_cli.common.errors import FormatError, XelmError
from xelm_cli.data import blocks
from xelm_cli.data.corpus import Document, iter_documents, read_documents
from xelm_cli.lang.codes import normalize_language, parse_language_list, suggest_languages

MAX_MESSAGE = 500  # characters: an error is one readable line, not a dump of the input
LANGUAGE_TAG = re.compile(bundle_schema()["$defs"]["language"]["pattern"])


def assert_clean(message: str) -> None:
    assert "\n" not in message and "\r" not in message, message[:MAX_MESSAGE]
    assert 0 < len(message) < MAX_MESSAGE, message[:MAX_MESSAGE]


@contextmanager
def clean_errors(outcome: list[str]) -> Iterator[None]:
    """Run a target: a XelmError must be one clean line; anything else fails the test."""
    try:
        yield
    except XelmError as exc:
        assert_clean(str(exc))
        outcome.append(f"clean one-line {type(exc).__name__}")
    else:
        outcome.append("accepted (valid)")


def link_files(source: Path, target: Path, skip: tuple[str, ...] = ()) -> Path:
    """``target`` holding hard links to ``source``'s files (cheap copies; never written to)."""
    target.mkdir(parents=True)
    for file in source.iterdir():
        if file.name not in skip:
            os.link(file, target / file.name)
    return target


def replace_file(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)  # never write through a hard link into a shared file
    path.write_bytes(data)


# ---------------------------------------------------------------------------------------------
# Hostile JSON documents: a valid document with values replaced, keys dropped or added, and
# the serialised bytes broken. Values JSON cannot hold as Python objects (nesting 10,000 deep,
# 5,000-digit numbers, NaN literals) are spliced into the text in place of a marker string.


@dataclass(frozen=True)
class Literal:
    text: str


WRONG_TYPES = [None, True, False, 0, -1, 3.5, "", "x", [], {}, [1, "a"], {"a": None}]
HUGE_NUMBERS = [10**400, -(10**400), 2**63, 2**64 + 1, 1e308, -1e308, 5e-324, -0.0]
HUGE_LITERALS = ["9" * 5000, "-" + "9" * 5000, "1e999", "-1e999", "0." + "0" * 5000 + "1"]
NON_FINITE = ["NaN", "Infinity", "-Infinity"]
TRICKS = [
    "\x00",
    "a\x00b",
    "\ud800",
    "\udfff",
    "x\udbffy",
    "\ud83d\ude00",
    "\U0001f600",
    "\u202eevil",
    "\ufeff",
    "\u200b",
    "e\u0301",
    "\u0131",
    "\u0130",
    "\uff45\uff4e",
    "\u00b2",
    "\uff11.0.0",
    "\n",
    "\r\n",
    "\\",
    '"',
    "\uffff",
    "\U0010ffff",
    "../etc/passwd",
    "/abs",
    "C:\\x",
]
PREFIXES = ["", "en", "1.0.0", "sha256:" + "0" * 64, "xelm-bundle", "config.json", "typology"]


def deep_literals() -> st.SearchStrategy[Literal]:
    depth = st.sampled_from([50, 99, 100, 101, 990, 10_000])
    return st.one_of(
        depth.map(lambda n: Literal("[" * n + "]" * n)),
        depth.map(lambda n: Literal('{"a":' * n + "1" + "}" * n)),
        depth.map(lambda n: Literal("[" * n)),  # unbalanced
    )


def hostile_values() -> st.SearchStrategy[tuple[str, Any]]:
    """(kind, value) pairs; a Literal value is spliced into the JSON text as it is."""
    return st.one_of(
        plain_hostile_values(),
        st.tuples(st.just("huge number"), st.sampled_from(HUGE_LITERALS).map(Literal)),
        st.tuples(st.just("NaN or Infinity"), st.sampled_from(NON_FINITE).map(Literal)),
        st.tuples(st.just("deep nesting"), deep_literals()),
    )


def plain_hostile_values() -> st.SearchStrategy[tuple[str, Any]]:
    """Hostile values that Python's json module can write (each drawn afresh: cases mutate
    what they put in a document)."""
    return st.one_of(
        st.tuples(st.just("wrong type"), st.sampled_from(WRONG_TYPES).map(copy.deepcopy)),
        st.tuples(st.just("huge number"), st.sampled_from(HUGE_NUMBERS)),
        st.tuples(st.just("unicode trick"), unicode_tricks()),
        st.tuples(st.just("very long string"), long_strings()),
        st.tuples(st.just("random text"), st.text(max_size=30)),
    )


def unicode_tricks() -> st.SearchStrategy[str]:
    parts = st.tuples(st.sampled_from(PREFIXES), st.sampled_from(TRICKS), st.text(max_size=3))
    return parts.map("".join)


def long_strings() -> st.SearchStrategy[str]:
    char = st.sampled_from(["a", "\u00e9", "\u202e"])
    return st.tuples(char, st.sampled_from([201, 10**4, 10**5])).map(lambda p: p[0] * p[1])


JsonPath = tuple[str | int, ...]


def json_paths(value: Any, prefix: JsonPath = ()) -> Iterator[JsonPath]:
    """Where a value can go: every member, and the first few items of each array."""
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from json_paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value[:3]):
            yield from json_paths(child, (*prefix, index))


def at(doc: Any, path: JsonPath) -> Any:
    for step in path:
        doc = doc[step]
    return doc


@dataclass
class HostileDoc:
    """A mutated document, the kinds of mutation, and the literals to splice into its text."""

    doc: Any
    kinds: list[str] = field(default_factory=list)
    literals: dict[str, str] = field(default_factory=dict)

    def put(self, path: JsonPath, value: Any) -> None:
        if isinstance(value, Literal):
            marker = f"\ue000literal{len(self.literals)}\ue000"
            self.literals[marker] = value.text
            value = marker
        if not path:
            self.doc = value
        else:
            at(self.doc, path[:-1])[path[-1]] = value

    def live_literals(self) -> bool:
        """Whether a literal is still in the document (a later mutation may have deleted it)."""
        text = json.dumps(self.doc, ensure_ascii=False)
        return any(marker in text for marker in self.literals)

    def text(self, *, ascii_only: bool, indent: int | None) -> bytes:
        text = json.dumps(self.doc, ensure_ascii=ascii_only, indent=indent)
        for marker, literal in self.literals.items():
            text = text.replace(json.dumps(marker, ensure_ascii=ascii_only), literal)
        return text.encode("utf-8", "surrogatepass")  # lone surrogates become invalid UTF-8


def canonical_text(value: Any) -> str:
    """What a digest of ``value`` sees (surrogates and NaN allowed: this is for comparing)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def mutate_doc(data: st.DataObject, original: dict[str, Any]) -> HostileDoc:
    hostile = HostileDoc(json.loads(json.dumps(original)))
    for _ in range(data.draw(st.integers(0, 3), label="mutations")):
        paths = list(json_paths(hostile.doc))
        op = data.draw(st.sampled_from(["replace", "delete", "add"]), label="op")
        if op == "delete" and len(paths) > 1:
            path = data.draw(st.sampled_from(paths[1:]), label="path")
            del at(hostile.doc, path[:-1])[path[-1]]
            hostile.kinds.append("missing field")
            continue
        if op == "add":
            objects = [p for p in paths if isinstance(at(hostile.doc, p), dict)]
            if objects:
                path = data.draw(st.sampled_from(objects), label="object")
                key = data.draw(st.one_of(st.text(max_size=8), st.sampled_from(TRICKS)))
                kind, value = data.draw(hostile_values(), label="value")
                hostile.put((*path, key), value)
                hostile.kinds.append(f"unknown field ({kind})")
                continue
        path = data.draw(st.sampled_from(paths), label="path")
        kind, value = data.draw(hostile_values(), label="value")
        hostile.put(path, value)
        hostile.kinds.append(kind)
    return hostile


BROKEN_BYTES = [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82", b"\x00"]


def break_bytes(data: st.DataObject, raw: bytes) -> tuple[str, bytes, bool]:
    """Byte-level damage: (kind, bytes, whether a reader must refuse them)."""
    op = data.draw(
        st.sampled_from(["none", "BOM", "whitespace", "truncated", "bad bytes", "trailing"]),
        label="bytes op",
    )
    if op == "BOM":
        return "BOM", b"\xef\xbb\xbf" + raw, False
    if op == "whitespace":
        return "whitespace", b" \n\t" + raw + b"\r\n", False
    if op == "truncated":
        return "truncated JSON", raw[: data.draw(st.integers(0, len(raw) - 1))], True
    if op == "bad bytes":
        pos = data.draw(st.integers(0, len(raw)))
        bad = data.draw(st.sampled_from(BROKEN_BYTES))
        return "non-UTF-8 bytes", raw[:pos] + bad + raw[pos:], True
    if op == "trailing":
        return "trailing garbage", raw + data.draw(st.sampled_from([b"x", b"{}", b"]"])), True
    return "", raw, False


def duplicate_key(data: st.DataObject, raw: bytes, original: dict[str, Any]) -> bytes:
    """The object with one top-level key repeated at its end (readers keep the last)."""
    key = data.draw(st.sampled_from(sorted(original)), label="duplicate key")
    _, value = data.draw(plain_hostile_values(), label="value")
    extra = f", {json.dumps(key)}: {json.dumps(value)}}}".encode("utf-8", "surrogatepass")
    return raw.rstrip()[:-1] + extra


@dataclass
class Generated:
    raw: bytes
    kind: str
    changed: bool  # the bytes do not hold the original content (nor a re-sealed one)
    sealed: bool = False  # the content changed, and was re-sealed


def hostile_json(
    data: st.DataObject,
    original: dict[str, Any],
    seal: Callable[[Any], None] | None = None,
    *,
    unique_keys: bool = False,
) -> Generated:
    """Bytes of a hostile version of ``original``; ``seal`` may re-seal a mutated document
    (a manifest's content digest), so that checks behind the seal are reached too. With
    ``unique_keys`` (a format that refuses a key given twice) a repeated key is a change even
    where both values are equal."""
    if data.draw(st.integers(0, 9), label="dup") == 0:
        raw = duplicate_key(data, json.dumps(original).encode(), original)
        changed = unique_keys or canonical_text(json.loads(raw)) != canonical_text(original)
        return Generated(raw, "duplicate key", changed)
    hostile = mutate_doc(data, original)
    literals = hostile.live_literals()
    changed = literals or canonical_text(hostile.doc) != canonical_text(original)
    sealed = bool(seal and changed and not literals and data.draw(st.booleans()))
    if seal and sealed:
        seal(hostile.doc)
        changed = False
    raw = hostile.text(
        ascii_only=data.draw(st.booleans()), indent=data.draw(st.sampled_from([None, 2]))
    )
    broken, raw, refuse = break_bytes(data, raw)
    kind = broken if refuse else (hostile.kinds or [broken or "unchanged"])[0]
    return Generated(raw, kind, changed or refuse, sealed)


def seal_manifest(doc: Any) -> None:
    if isinstance(doc, dict):
        body = {k: v for k, v in doc.items() if k != "content_digest"}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        doc["content_digest"] = (
            "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        )


# ---------------------------------------------------------------------------------------------
# 1. Manifests


@pytest.fixture(scope="module")
def seed_manifest(seed_bundle: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((seed_bundle / MANIFEST_NAME).read_bytes())
    return manifest


@pytest.fixture(scope="module")
def manifest_bundle(seed_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed's files, and a manifest of its own that each case replaces."""
    bundle = link_files(seed_bundle, tmp_path_factory.mktemp("fuzz") / "b", skip=(MANIFEST_NAME,))
    (bundle / MANIFEST_NAME).write_bytes((seed_bundle / MANIFEST_NAME).read_bytes())
    return bundle


@fuzz_settings(1000)
@given(data=st.data())
def test_hostile_manifests(
    manifest_bundle: Path, seed_manifest: dict[str, Any], data: st.DataObject
) -> None:
    case = hostile_json(data, seed_manifest, seal_manifest, unique_keys=True)
    replace_file(manifest_bundle / MANIFEST_NAME, case.raw)
    outcome: list[str] = []
    with clean_errors(outcome):
        Bundle.read(manifest_bundle)
    problems = verify_bundle(manifest_bundle)
    for problem in problems:
        assert_clean(problem)
    if outcome[0] != "accepted (valid)":
        assert problems, "verify accepts a manifest that Bundle.read refuses"
    if case.changed:
        assert problems, "a changed and unsealed, or broken, manifest verifies"
    if not case.changed and not case.sealed:
        assert problems == [], "the original manifest does not verify"
    if outcome[0] == "accepted (valid)" and problems:
        outcome[0] = "read, but verify reports a problem"
    record("fuzz", f"manifest: {case.kind}", outcome[0])


def test_many_unhashable_items_are_checked_in_linear_time(
    manifest_bundle: Path, seed_manifest: dict[str, Any]
) -> None:
    # jsonschema's own uniqueItems compares unhashable items pairwise: this took ten minutes.
    manifest = {**seed_manifest, "languages": [{"i": i} for i in range(20_000)]}
    replace_file(manifest_bundle / MANIFEST_NAME, json.dumps(manifest).encode())
    started = time.monotonic()
    problems = verify_bundle(manifest_bundle)
    assert time.monotonic() - started < 10
    assert problems[0].startswith("manifest languages: ")


# ---------------------------------------------------------------------------------------------
# 2. Allocation files


@pytest.fixture(scope="module")
def valid_allocation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory allocation: allocation.json with clusterer members, and fitted arrays."""
    out = tmp_path_factory.mktemp("alloc") / "alloc"
    write_allocation(
        out,
        clusterer="typology",
        experts=[["en", "tr"], ["ar", "ru"]],
        members={"tree": {"leaves": ["en", "tr", "ar", "ru"], "linkage": [[0, 1, 0.5, 2]]}},
        language_shares={"en": [1.0, 0.0], "tr": [1.0, 0.0], "ar": [0.0, 1.0], "ru": [0.0, 1.0]},
        arrays={"centroids": np.arange(8, dtype=np.float32).reshape(2, 4)},
    )
    return out


@pytest.fixture(scope="module")
def allocation_case(valid_allocation: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The valid allocation's arrays, and an allocation.json of its own that each case replaces."""
    return link_files(
        valid_allocation, tmp_path_factory.mktemp("fuzz") / "alloc", skip=(DIR_MANIFEST,)
    )


@fuzz_settings(1000)
@given(data=st.data())
def test_hostile_allocations(
    valid_allocation: Path, allocation_case: Path, data: st.DataObject
) -> None:
    original = json.loads((valid_allocation / DIR_MANIFEST).read_bytes())
    case = hostile_json(data, original)
    replace_file(allocation_case / DIR_MANIFEST, case.raw)
    outcome: list[str] = []
    with clean_errors(outcome):
        allocation = read_allocation(allocation_case)
        assert allocation.k == len(allocation.experts) >= 1
        for languages in allocation.experts:
            assert all(normalize_language(code) == code for code in languages)
        allocation.arrays()
    if not case.changed:
        assert outcome[0] == "accepted (valid)", "the original allocation is refused"
    record("fuzz", f"allocation: {case.kind}", outcome[0])


# ---------------------------------------------------------------------------------------------
# 3. safetensors headers: every xelm path that opens weights or arrays


DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1}
BAD_DTYPES = ["F99", "", "f32", "float32", "BF16 ", 5, None, ["F32"]]
BAD_DIMS = [-1, -(2**63), 2**32, 2**63, 2**64, 2**70, 1.5, "2", None]
BAD_SHAPES: list[Any] = [[2**40, 2**40, 2**40], [2**63, 2], [-2], "3", None, {}, [[2]]]
HEADER_LENGTHS = [0, 1, 7, 8, 2**31, 2**32, 2**63, 2**64 - 1]


def safetensors_file(header: Any, data: bytes, length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def split_safetensors(blob: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + length]), blob[8 + length :]


@st.composite
def consistent_tensors(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    """A well-formed header (contiguous offsets) and its data."""
    names = draw(st.lists(st.text(min_size=1, max_size=8), max_size=4, unique=True))
    header: dict[str, Any] = {}
    offset = 0
    for name in names:
        dtype = draw(st.sampled_from(sorted(DTYPE_SIZES)))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        size = int(np.prod(shape, dtype=np.int64)) * DTYPE_SIZES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5)))
    return header, draw(st.binary(min_size=offset, max_size=offset))


def tensor_mutations(draw: st.DrawFn, header: dict[str, Any], size: int) -> str:
    """Damage one tensor entry of ``header`` in place; returns the kind of damage."""
    tensors = sorted(k for k in header if k != "__metadata__")
    if not tensors:
        header["__metadata__"] = draw(st.sampled_from([{"a": 1}, [], "x", {"a": {"b": "c"}}]))
        return "bad metadata"
    entry = header[draw(st.sampled_from(tensors))]
    kind = draw(st.sampled_from(["dtype", "shape", "dim", "offsets", "missing field", "drop"]))
    if kind == "dtype":
        entry["dtype"] = draw(st.sampled_from([*BAD_DTYPES, *DTYPE_SIZES]))
    elif kind == "shape":
        entry["shape"] = copy.deepcopy(draw(st.sampled_from(BAD_SHAPES)))
    elif kind == "dim":
        entry["shape"] = [*entry["shape"], draw(st.sampled_from(BAD_DIMS))]
    elif kind == "offsets":
        bound = st.one_of(st.integers(0, size + 8), st.sampled_from([-1, 2**63, 2**64, 1.5]))
        entry["data_offsets"] = draw(st.lists(bound, min_size=0, max_size=3))
    elif kind == "missing field":
        del entry[draw(st.sampled_from(sorted(entry)))]
    else:
        header.pop(next(k for k, v in header.items() if v is entry))
    return f"bad {kind}" if kind not in ("missing field", "drop") else kind


@st.composite
def hostile_safetensors(draw: st.DrawFn, seed_weights: bytes) -> tuple[str, bytes]:
    """(kind, file bytes): damaged headers of the seed's weights or of generated tensors."""
    if draw(st.integers(0, 4)) == 0:
        header, data = split_safetensors(seed_weights)
    else:
        header, data = draw(consistent_tensors())
    kind = draw(st.sampled_from(["valid", "tensor", "length", "not JSON", "truncated", "padding"]))
    if kind == "tensor":
        return tensor_mutations(draw, header, len(data)), safetensors_file(header, data)
    if kind == "length":
        length = draw(st.one_of(st.sampled_from(HEADER_LENGTHS), st.integers(0, 2**64 - 1)))
        return "header length lies", safetensors_file(header, data, length)
    if kind == "not JSON":
        text = draw(
            st.one_of(
                st.binary(max_size=40),
                st.sampled_from([b"[]", b"null", b'{"a":' * 10_000, b'{"\xff": 1}', b"{}}"]),
            )
        )
        return "header not JSON", safetensors_file(text, data)
    blob = safetensors_file(header, data)
    if kind == "truncated":
        return "truncated file", blob[: draw(st.integers(0, len(blob) - 1))]
    if kind == "padding":  # the format allows trailing spaces in the header; not other bytes
        pad = draw(st.sampled_from([b" " * 7, b"\x00" * 7, b"\n"]))
        return "padded header", safetensors_file(json.dumps(header).encode() + pad, data)
    return "valid tensors", blob


@pytest.fixture(scope="module")
def weights_case(seed_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed's files; each case replaces model.safetensors and re-seals the manifest."""
    skip = (MANIFEST_NAME, "model.safetensors")
    return link_files(seed_bundle, tmp_path_factory.mktemp("fuzz") / "weights", skip=skip)


def reseal_with_weights(bundle: Path, seed_manifest: dict[str, Any], weights: bytes) -> None:
    """A bundle whose manifest lists ``weights`` with their true digest: every check of the
    files passes, so the readers of the weights themselves are reached."""
    replace_file(bundle / "model.safetensors", weights)
    manifest = copy.deepcopy(seed_manifest)
    digest = "sha256:" + hashlib.sha256(weights).hexdigest()
    manifest["files"]["model.safetensors"] = {"sha256": digest, "size": len(weights)}
    manifest["content_digest"] = content_digest(manifest)
    replace_file(bundle / MANIFEST_NAME, json.dumps(manifest).encode())


def arrays_allocation(directory: Path, original: dict[str, Any], arrays: bytes) -> Path:
    """An allocation that records ``arrays``' true digest."""
    replace_file(directory / ARRAYS_FILE, arrays)
    manifest = {
        **original,
        "arrays": {"file": ARRAYS_FILE, "sha256": "sha256:" + hashlib.sha256(arrays).hexdigest()},
    }
    replace_file(directory / DIR_MANIFEST, json.dumps(manifest).encode())
    return directory


@pytest.fixture(scope="module")
def arrays_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that each case fills with an allocation and its arrays."""
    return tmp_path_factory.mktemp("fuzz-arrays")


@pytest.fixture(scope="module")
def seed_model(seed_bundle: Path) -> Any:
    import torch

    from xelm_cli.ensemble.scoring import LoadedModel

    return LoadedModel.load(Bundle.open(seed_bundle), torch.device("cpu"))


@fuzz_settings(400)
@given(data=st.data())
def test_hostile_safetensors(
    seed_bundle: Path,
    seed_manifest: dict[str, Any],
    weights_case: Path,
    valid_allocation: Path,
    arrays_case: Path,
    seed_model: Any,
    tmp_path_factory: pytest.TempPathFactory,
    data: st.DataObject,
) -> None:
    seed_weights = (seed_bundle / "model.safetensors").read_bytes()
    kind, blob = data.draw(hostile_safetensors(seed_weights), label="safetensors")
    outcomes: list[str] = []

    reseal_with_weights(weights_case, seed_manifest, blob)
    with clean_errors(outcomes):
        architecture_fingerprint(weights_case)
    problems = verify_bundle(weights_case)
    for problem in problems:
        assert_clean(problem)
    assert problems or outcomes[0] == "accepted (valid)", "unreadable weights verify"
    with clean_errors(outcomes):
        seed_model.swap(Bundle.read(weights_case))

    original = json.loads((valid_allocation / DIR_MANIFEST).read_bytes())
    with clean_errors(outcomes):
        read_allocation(arrays_allocation(arrays_case, original, blob)).arrays()

    out = tmp_path_factory.getbasetemp() / "fuzz-written" / "bundle"
    with (
        clean_errors(outcomes),
        write_bundle(
            out,
            role="seed",
            languages=["en"],
            step={"relation": "train", "parents": [Bundle.read(seed_bundle).ref]},
            parent=Bundle.read(seed_bundle),
        ) as writer,
    ):
        writer.write_bytes("model.safetensors", blob)
    assert outcomes[-1] == outcomes[0], "a bundle is written with weights verify refuses"
    if outcomes[-1] == "accepted (valid)":
        assert verify_bundle(out) == []
        shutil.rmtree(out)
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".bundle.")]
    assert not out.exists() and leftovers == []
    refusals = [outcome for outcome in outcomes if outcome != "accepted (valid)"]
    record("fuzz", f"safetensors: {kind}", refusals[0] if refusals else outcomes[0])


def _seed_weights_with(seed_weights: bytes, change: Callable[[dict[str, Any]], Any]) -> bytes:
    header, data = split_safetensors(seed_weights)
    change(header)
    return safetensors_file(header, data)


def _swap_first_shape(header: dict[str, Any]) -> None:
    header["model.embed_tokens.weight"]["shape"].reverse()


@pytest.mark.parametrize("damage", ["not safetensors", "wrong shape", "no tensors"])
def test_load_model_refuses_hostile_weights(
    seed_bundle: Path, seed_manifest: dict[str, Any], weights_case: Path, damage: str
) -> None:
    seed_weights = (seed_bundle / "model.safetensors").read_bytes()
    weights = {
        "not safetensors": b"garbage",
        "no tensors": safetensors_file({}, b""),
        "wrong shape": _seed_weights_with(seed_weights, _swap_first_shape),
    }[damage]
    reseal_with_weights(weights_case, seed_manifest, weights)
    with pytest.raises(XelmError) as info:
        Bundle.open(weights_case).load_model()
    assert_clean(str(info.value))


# ---------------------------------------------------------------------------------------------
# 4. JSON lines corpora with broken records

CORPUS_LINE_LIMIT = 4096  # MAX_LINE_CHARS for these tests: an over-long line stays cheap
LANGUAGE_CODES = ["en", "EN", "tr", "ara", "en-us", "zh-Hant", "arb", "tur"]


@dataclass(frozen=True)
class Line:
    data: bytes
    kind: str
    document: Document | None = None  # what a reader yields for it (None: nothing, or bad)
    bad: bool = False
    numbered: bool = True  # a reader names its line number when it refuses it


def json_line(record: Any, ascii_only: bool = True) -> bytes:
    return json.dumps(record, ensure_ascii=ascii_only).encode()


@st.composite
def good_lines(draw: st.DrawFn, default: str | None) -> Line:
    text = draw(st.text(max_size=40))
    kind = draw(st.sampled_from(["valid record", "no language", "blank line"]))
    if kind == "blank line":
        return Line(draw(st.sampled_from([b"", b"   ", b"\t", "\u3000".encode()])), kind)
    record: dict[str, Any] = {
        "text": text,
        **draw(st.dictionaries(st.sampled_from(["id", "url", "meta"]), st.integers())),
    }
    language = default
    if kind == "valid record":
        code = draw(st.sampled_from(LANGUAGE_CODES))
        record[draw(st.sampled_from(["lang", "language"]))] = code
        language = normalize_language(code)
    return Line(json_line(record, draw(st.booleans())), kind, Document(text, language))


WRONG_FIELD_TYPES: list[Any] = [5, 0, None, False, True, [], {}, ["en"]]
BROKEN_RECORDS: dict[str, list[bytes]] = {
    "not JSON": [b"{not json", b"{'text': 'x'}", b'{"text": "x"', b"NaN]", b"\x00"],
    "JSON not an object": [b"[]", b"1", b'"text"', b"null", b"NaN", b"[{}]"],
    "missing text": [b'{"lang": "en"}', b'{"Text": "x"}', b"{}"],
    "text wrong type": [json_line({"text": v}) for v in WRONG_FIELD_TYPES],
    "lang wrong type": [
        json_line({"text": "x", "lang": v}) for v in WRONG_FIELD_TYPES if v is not None
    ],
    "unknown language": [
        json_line({"text": "x", "lang": v}) for v in ("xx-nowhere!", "e n", "a" * 300)
    ],
    "raw NUL byte": [b'{"text": "a\x00b"}'],
    "lone surrogate": [b'{"text": "\\ud800x"}', b'{"text": "x\\udfff", "lang": "en"}'],
    "deep nesting": [b'{"text": "x", "m": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"],
    "huge number": [b'{"text": "x", "n": ' + b"9" * 5000 + b"}"],
    "over-long line": [json_line({"text": "x" * CORPUS_LINE_LIMIT})],
}


@st.composite
def broken_lines(draw: st.DrawFn) -> Line:
    if draw(st.integers(0, 11)) == 0:  # decoding may fail before earlier lines are read
        return Line(b'{"text": "caf\xe9"}', "invalid UTF-8", bad=True, numbered=False)
    kind = draw(st.sampled_from(sorted(BROKEN_RECORDS)))
    return Line(draw(st.sampled_from(BROKEN_RECORDS[kind])), kind, bad=True)


def zstd_frames(data: st.DataObject, raw: bytes) -> tuple[bytes, str]:
    """``raw`` as 1-3 zstd frames, perhaps cut inside a frame or followed by garbage."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=2), label="frames"))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    frames = [zstandard.ZstdCompressor(level=1).compress(piece) for piece in pieces]
    damage = data.draw(st.sampled_from(["none", "none", "truncated", "garbage"]), label="damage")
    if damage == "truncated":
        which = data.draw(st.integers(0, len(frames) - 1))
        frames[which] = frames[which][: data.draw(st.integers(1, len(frames[which]) - 1))]
        return b"".join(frames[: which + 1]), "truncated zstd"
    if damage == "garbage":
        return b"".join(frames) + data.draw(st.binary(min_size=1, max_size=16)), "zstd garbage"
    return b"".join(frames), ""


@fuzz_settings(1000)
@given(data=st.data())
def test_hostile_jsonl_corpora(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, data: st.DataObject
) -> None:
    monkeypatch.setattr(blocks, "MAX_LINE_CHARS", CORPUS_LINE_LIMIT)
    name = data.draw(st.sampled_from(["tr.jsonl", "corpus.jsonl", "tr.jsonl.zst", "c.json.zst"]))
    default = "tr" if name.startswith("tr.") else None
    good = good_lines(default)
    lines = data.draw(st.lists(st.one_of(good, good, broken_lines()), max_size=8), label="lines")
    newline = data.draw(st.sampled_from([b"\n", b"\r\n"]))
    raw = b"".join(line.data + newline for line in lines)
    damage = ""
    if name.endswith(".zst"):
        raw, damage = zstd_frames(data, raw)
    path = tmp_path_factory.getbasetemp() / "fuzz-corpus" / name
    path.parent.mkdir(exist_ok=True)
    replace_file(path, raw)

    first_bad = next((n for n, line in enumerate(lines, 1) if line.bad), None)
    outcome: list[str] = []
    with clean_errors(outcome):
        documents = list(iter_documents(path))
    if first_bad is None and not damage:
        assert outcome == ["accepted (valid)"], "a well-formed corpus is refused"
        assert documents == [line.document for line in lines if line.document]
    else:
        assert outcome != ["accepted (valid)"], "a broken corpus is read"
        with pytest.raises(XelmError) as info:
            list(iter_documents(path))
        assert str(path) in str(info.value)
        if not damage and all(line.numbered for line in lines):
            assert f"{path}:{first_bad}: " in str(info.value)
    with clean_errors([]):
        read_documents(path)
    kind = damage or (lines[first_bad - 1].kind if first_bad else "valid records")
    record("fuzz", f"jsonl corpus: {kind}", outcome[0])


def _peak_memory(action: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        action()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("name", ["tr.txt", "tr.jsonl", "tr.txt.zst", "tr.jsonl.zst"])
def test_over_long_line_is_refused_not_split(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blocks, "MAX_LINE_CHARS", 1 << 20)
    raw = b'{"text": "first"}\n' + b"a" * (3 << 20) + b"\nlast line\n"
    if name.endswith(".zst"):
        raw = zstandard.ZstdCompressor().compress(raw)
    (tmp_path / name).write_bytes(raw)
    with pytest.raises(FormatError, match=rf"{name}:2: line longer than 1048576 characters"):
        list(iter_documents(tmp_path / name))


def test_zstd_bomb_in_a_corpus_is_read_in_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 256 MiB of NUL bytes (no newline) from 256 one-MiB frames of a few dozen bytes each.
    monkeypatch.setattr(blocks, "MAX_LINE_CHARS", 1 << 20)
    frame = zstandard.ZstdCompressor().compress(b"\0" * (1 << 20))
    path = tmp_path / "tr.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "x"}\n') + frame * 256)

    def read() -> None:
        with pytest.raises(FormatError, match=r"tr\.jsonl\.zst:2: line longer than"):
            list(iter_documents(path))

    assert _peak_memory(read) < 64 << 20


# ---------------------------------------------------------------------------------------------
# 5. Language codes

SUBTAGS = ["en", "zh", "Hant", "x", "u", "ca", "gregory", "419", "i", "klingon", "sgn", "und"]
SUBTAGS += ["root", "qaa", "tlh", "arb", "TR", "1234", "abcdefghi", "\u0130", "\u0131", "\uff45"]


def language_inputs() -> st.SearchStrategy[tuple[str, str]]:
    """(kind, text): arbitrary text, tag-shaped text, and very long text."""
    subtag = st.one_of(
        st.sampled_from(SUBTAGS), st.text("abcdefghijklmnopqrstuvwxyzAZ0189", max_size=9)
    )
    separator = st.sampled_from(["-", "_", " ", "--", ","])
    tags = st.tuples(st.lists(subtag, max_size=10), separator).map(lambda p: p[1].join(p[0]))
    long = st.tuples(st.text(min_size=1, max_size=3), st.integers(1000, 100_000)).map(
        lambda p: (p[0] * p[1])[: p[1]]
    )
    return st.one_of(
        st.tuples(st.just("arbitrary text"), st.text(max_size=30)),
        st.tuples(st.just("tag-shaped text"), tags),
        st.tuples(st.just("very long text"), long),
    )


@fuzz_settings(3000)
@given(case=language_inputs())
def test_hostile_language_codes(case: tuple[str, str]) -> None:
    kind, text = case
    outcome: list[str] = []
    with clean_errors(outcome):
        tag = normalize_language(text)
        assert LANGUAGE_TAG.fullmatch(tag), f"{text!r} -> {tag!r}, which manifests refuse"
        assert normalize_language(tag) == tag
    with clean_errors([]):
        codes = parse_language_list(text)
        assert len(set(codes)) == len(codes)
        assert all(normalize_language(code) == code for code in codes)
    suggestions = suggest_languages(text)
    assert len(suggestions) <= 3
    assert all(normalize_language(code) == code for code in suggestions)
    record("fuzz", f"language code: {kind}", outcome[0])


@fuzz_settings(300)
@given(
    case=language_inputs(), among=language_inputs(), command=st.sampled_from(["info", "nearest"])
)
def test_hostile_lang_commands(
    capsys: pytest.CaptureFixture[str],
    case: tuple[str, str],
    among: tuple[str, str],
    command: str,
) -> None:
    kind, code = case
    options = ["--among", among[1]] if command == "nearest" else []
    capsys.readouterr()
    status = run(["lang", command, *options, "--", code])
    err = capsys.readouterr().err
    assert status != INTERNAL_ERROR_EXIT, err
    if status == 0:
        assert err == ""
        record("fuzz", f"xelm lang {command}: {kind}", "accepted (valid)")
    else:
        assert err.startswith("xelm: error: ") and err.count("\n") == 1, err
        assert_clean(err.rstrip("\n"))
        record("fuzz", f"xelm lang {command}: {kind}", f"exit {status}, one stderr line")
