"""Bundle archives: reproducible packing, safe streaming unpacking, hostile archives refused."""

import functools
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st
from reliability import fuzz_settings, record

from xelm_cli.bundle import archive as archive_mod
from xelm_cli.bundle.archive import (
    ARCHIVE_SUFFIX,
    default_archive_name,
    pack_bundle,
    unpack_bundle,
)
from xelm_cli.bundle.manifest import MANIFEST_NAME, content_digest, schema_problems
from xelm_cli.bundle.store import Bundle, verify_bundle, write_bundle
from xelm_cli.common.errors import ArchiveError, FormatError, IntegrityError, UsageError, XelmError


@pytest.fixture(scope="session")
def bundle_dir(seed_bundle: Path) -> Path:
    return seed_bundle


@pytest.fixture(scope="session")
def packed(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pack_bundle(bundle_dir, tmp_path_factory.mktemp("archives") / "tiny.xelm.tar.zst")


@pytest.fixture(scope="session")
def contents(bundle_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(bundle_dir.iterdir())}


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _assert_nothing_left(out: Path) -> None:
    assert not out.exists()
    if out.parent.exists():  # a directory made only for ``out`` goes with it
        leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
        assert leftovers == []


# ---------------------------------------------------------------------------------------------
# Crafting archives by hand


def _member(
    name: str,
    data: bytes = b"",
    type_: bytes = tarfile.REGTYPE,
    size: int | None = None,
    **attrs: object,
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.size = len(data) if size is None else size
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def _tar(members: Iterable[tuple[tarfile.TarInfo, bytes]], end: bool = True) -> bytes:
    """Raw tar bytes: each header as given (a wrong size is kept), data padded to blocks."""
    buf = io.BytesIO()
    for info, data in members:
        buf.write(info.tobuf(tarfile.PAX_FORMAT))
        buf.write(data + tarfile.NUL * (-len(data) % tarfile.BLOCKSIZE))
    if end:
        buf.write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
    return buf.getvalue()


def _zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)


def _valid_members(contents: dict[str, bytes]) -> list[tuple[tarfile.TarInfo, bytes]]:
    rest = [_member(n, d) for n, d in contents.items() if n != MANIFEST_NAME]
    return [_member(MANIFEST_NAME, contents[MANIFEST_NAME]), *rest]


def _write(tmp_path: Path, blob: bytes) -> Path:
    path = tmp_path / "in" / "hostile.xelm.tar.zst"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(blob)
    return path


def _refused(tmp_path: Path, blob: bytes, match: str, **kwargs: object) -> None:
    out = tmp_path / "out" / "bundle"
    with pytest.raises(ArchiveError, match=match) as info:
        unpack_bundle(_write(tmp_path, blob), out, **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    _assert_nothing_left(out)


# ---------------------------------------------------------------------------------------------
# Packing and round trip


def test_round_trip_identical_and_loadable(bundle_dir: Path, packed: Path, tmp_path: Path) -> None:
    out = tmp_path / "unpacked"
    seen: list[int] = []
    bundle = unpack_bundle(packed, out, progress=seen.append)
    assert sum(seen) == packed.stat().st_size
    assert (out / MANIFEST_NAME).read_bytes() == (bundle_dir / MANIFEST_NAME).read_bytes()
    assert _digests(out) == _digests(bundle_dir)
    assert bundle.digest == Bundle.open(bundle_dir).digest
    assert verify_bundle(out) == []
    assert all((p.stat().st_mode & 0o777) == 0o444 for p in out.iterdir())

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.hidden_size == 64
    assert tok.decode(tok("river stone")["input_ids"], skip_special_tokens=True) == "river stone"


def test_archive_layout(bundle_dir: Path, packed: Path) -> None:
    with (
        packed.open("rb") as f,
        zstandard.ZstdDecompressor().stream_reader(f) as raw,
        tarfile.open(fileobj=raw, mode="r|") as tar,
    ):
        members = list(tar)
    names = [m.name for m in members]
    manifest = Bundle.open(bundle_dir).manifest
    assert names == [MANIFEST_NAME, *sorted(manifest.files)]
    for m in members:
        assert m.isreg() and m.mode == 0o444 and m.mtime == 0
        assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "")


def test_pack_is_reproducible(
    bundle_dir: Path, packed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    again = pack_bundle(bundle_dir, tmp_path / "again.tar.zst")
    assert again.read_bytes() == packed.read_bytes()
    # Any worker count >= 1 gives the same frame, so the machine's core count does not matter.
    monkeypatch.setattr(archive_mod, "ZSTD_THREADS", 1)
    one = pack_bundle(bundle_dir, tmp_path / "one.tar.zst").read_bytes()
    monkeypatch.setattr(archive_mod, "ZSTD_THREADS", 4)
    four = pack_bundle(bundle_dir, tmp_path / "four.tar.zst").read_bytes()
    assert one == four == packed.read_bytes()


def test_pack_progress_counts_bundle_bytes(bundle_dir: Path, tmp_path: Path) -> None:
    seen: list[int] = []
    pack_bundle(bundle_dir, tmp_path / "a.tar.zst", progress=seen.append)
    assert sum(seen) == Bundle.open(bundle_dir).size


def test_existing_output_refused(bundle_dir: Path, packed: Path, tmp_path: Path) -> None:
    target = tmp_path / "exists.tar.zst"
    earlier = pack_bundle(bundle_dir, tmp_path / "earlier.tar.zst", level=1)
    shutil.copy(earlier, target)  # a bundle archive (of another level): --force replaces it
    with pytest.raises(UsageError, match="already exists"):
        pack_bundle(bundle_dir, target)
    assert target.read_bytes() == earlier.read_bytes()
    pack_bundle(bundle_dir, target, overwrite=True)
    assert target.read_bytes() == packed.read_bytes()

    out = tmp_path / "dir"
    out.mkdir()
    with pytest.raises(UsageError, match="already exists"):
        unpack_bundle(packed, out)
    assert list(out.iterdir()) == []
    unpack_bundle(packed, out, overwrite=True)
    assert _digests(out) == _digests(bundle_dir)


def test_corrupted_bundle_not_packed(bundle_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir, copy)
    weights = copy / "model.safetensors"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    out = tmp_path / "out" / "copy.xelm.tar.zst"
    with pytest.raises(IntegrityError, match=r"model\.safetensors"):
        pack_bundle(copy, out)
    _assert_nothing_left(out)


def test_archive_inside_bundle_refused(bundle_dir: Path) -> None:
    with pytest.raises(UsageError, match="inside the bundle"):
        pack_bundle(bundle_dir, bundle_dir / "self.xelm.tar.zst")
    assert verify_bundle(bundle_dir) == []


def test_pack_onto_its_bundle_and_unpack_onto_its_archive_are_refused(
    bundle_dir: Path, packed: Path, tmp_path: Path
) -> None:
    """--force must not replace what the command reads: the bundle being packed (or a folder
    holding it), the archive being unpacked (or a folder holding it), nor a folder of other
    files (it is no bundle); each is one line and nothing changes."""
    folder = tmp_path / "d"
    bundle = folder / "b"
    shutil.copytree(bundle_dir, bundle)
    for out in (bundle, folder, bundle / "sub" / "b.xelm.tar.zst"):
        with pytest.raises(UsageError, match=r"bundle|somewhere else"):
            pack_bundle(bundle, out, overwrite=True)
    assert verify_bundle(bundle) == []

    archive = folder / "a.xelm.tar.zst"
    shutil.copy(packed, archive)
    (folder / "notes.txt").write_text("keep")
    for out in (folder, archive, tmp_path):
        with pytest.raises(UsageError, match=r"^\S+: unpacking there would replace the archive"):
            unpack_bundle(archive, out, overwrite=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(UsageError, match=r"is a folder but no bundle \(it has no xelm\.json\)"):
        unpack_bundle(archive, other, overwrite=True)
    assert archive.read_bytes() == packed.read_bytes()
    assert (folder / "notes.txt").read_text() == (other / "notes.txt").read_text() == "keep"
    unpack_bundle(archive, bundle, overwrite=True)  # over a bundle, --force replaces it
    assert _digests(bundle) == _digests(bundle_dir)


def test_bad_level_refused(bundle_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="level"):
        pack_bundle(bundle_dir, tmp_path / "x.tar.zst", level=99)


def test_default_archive_name(bundle_dir: Path) -> None:
    bundle = Bundle.open(bundle_dir, verify=False)
    assert default_archive_name(bundle) == "seed" + ARCHIVE_SUFFIX
    bundle.manifest.name = "../../etc/evil name"
    assert default_archive_name(bundle) == "etc_evil_name" + ARCHIVE_SUFFIX


def test_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="archive not found"):
        unpack_bundle(tmp_path / "nope.tar.zst", tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# Hostile archives


def _after_manifest(contents: dict[str, bytes], *members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    return _zst(_tar([_member(MANIFEST_NAME, contents[MANIFEST_NAME]), *members]))


HOSTILE_MEMBERS = {
    "parent": (_member("../x", b"boom"), "not a plain file name"),
    "absolute": (_member("/etc/x", b"boom"), "absolute path"),
    "subdir": (_member("sub/config.json", b"{}"), "not a plain file name"),
    "backslash": (_member("..\\x", b"boom"), "not a plain file name"),
    "dotdot": (_member("config..json", b"{}"), "not a plain file name"),
    "nul": (
        _member("config.json", b"{}", pax_headers={"path": "config.json\0x"}),
        "not a plain file name",
    ),
    "symlink": (
        _member("config.json", type_=tarfile.SYMTYPE, linkname="/etc/passwd"),
        "symbolic link",
    ),
    "hardlink": (_member("config.json", type_=tarfile.LNKTYPE, linkname="xelm.json"), "hard link"),
    "directory": (_member("config.json", type_=tarfile.DIRTYPE), "directory"),
    "chardev": (
        _member("config.json", type_=tarfile.CHRTYPE, devmajor=1, devminor=3),
        "character device",
    ),
    "blockdev": (
        _member("config.json", type_=tarfile.BLKTYPE, devmajor=8, devminor=0),
        "block device",
    ),
    "fifo": (_member("config.json", type_=tarfile.FIFOTYPE), "fifo"),
    "unlisted": (_member("extra.bin", b"surprise"), "not listed"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MEMBERS))
def test_hostile_member_refused(case: str, contents: dict[str, bytes], tmp_path: Path) -> None:
    member, match = HOSTILE_MEMBERS[case]
    _refused(tmp_path, _after_manifest(contents, member), match)


def test_duplicate_member_refused(contents: dict[str, bytes], tmp_path: Path) -> None:
    readme = _member("README.md", contents["README.md"])
    _refused(tmp_path, _after_manifest(contents, readme, readme), "'README.md' appears twice")
    again = _member(MANIFEST_NAME, contents[MANIFEST_NAME])
    _refused(tmp_path, _after_manifest(contents, again), "'xelm.json' appears twice")


def test_oversized_member_refused(contents: dict[str, bytes], tmp_path: Path) -> None:
    bigger = contents["config.json"] + b" " * 600
    blob = _after_manifest(contents, _member("config.json", bigger))
    _refused(tmp_path, blob, "'config.json' is .* bytes, the manifest says")


def test_changed_content_refused(contents: dict[str, bytes], tmp_path: Path) -> None:
    members = _valid_members(contents)
    info, data = next(m for m in members if m[0].name == "model.safetensors")
    members[members.index((info, data))] = (info, data[:-1] + bytes([data[-1] ^ 1]))
    _refused(tmp_path, _zst(_tar(members)), "'model.safetensors': sha256 does not match")


def test_manifest_not_first_refused(contents: dict[str, bytes], tmp_path: Path) -> None:
    members = _valid_members(contents)
    members[0], members[1] = members[1], members[0]
    _refused(tmp_path, _zst(_tar(members)), "first member is 'README.md', not xelm.json")


def test_manifest_too_big_refused(tmp_path: Path) -> None:
    header = _member(MANIFEST_NAME, size=(16 << 20) + 1)[0].tobuf(tarfile.PAX_FORMAT)
    _refused(tmp_path, _zst(header), "over the 16 MiB limit")


def test_bad_manifest_is_format_error(contents: dict[str, bytes], tmp_path: Path) -> None:
    out = tmp_path / "out"
    for bad, match in (
        (b"{not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"format": "xelm-bundle", "format_version": "2.0.0"}', "upgrade"),
        (b'{"format": "xelm-bundle", "format_version": "1.0.0"}', "manifest"),
    ):
        blob = _zst(_tar([_member(MANIFEST_NAME, bad), *_valid_members(contents)[1:]]))
        with pytest.raises(FormatError, match=match):
            unpack_bundle(_write(tmp_path, blob), out)
        _assert_nothing_left(out)


def test_a_name_ending_in_a_newline_is_refused(contents: dict[str, bytes], tmp_path: Path) -> None:
    """The schema's patterns end in ``$``, which Python's ``re.search`` lets match before a
    final newline: a manifest listing ``notes\\n`` (consistent, digest and all) passed it."""
    manifest = json.loads(contents[MANIFEST_NAME])
    manifest["files"]["notes\n"] = {
        "sha256": "sha256:" + hashlib.sha256(b"hi").hexdigest(),
        "size": 2,
    }
    manifest["content_digest"] = content_digest(manifest)
    members = [_member(MANIFEST_NAME, json.dumps(manifest).encode())]
    files = {**contents, "notes\n": b"hi"}
    members += [_member(n, files[n]) for n in sorted(manifest["files"])]
    out = tmp_path / "out"
    with pytest.raises(FormatError, match=r"manifest files: 'notes\\n' does not match"):
        unpack_bundle(_write(tmp_path, _zst(_tar(members))), out)
    _assert_nothing_left(out)
    for field, value in (("id", "abc\n"), ("languages", ["en\n"])):
        assert schema_problems({**manifest, field: value}), field


def test_incomplete_archive_refused(contents: dict[str, bytes], tmp_path: Path) -> None:
    members = [m for m in _valid_members(contents) if m[0].name != "tokenizer.json"]
    _refused(tmp_path, _zst(_tar(members)), "ends before member 'tokenizer.json'")


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.5, 0.9])
def test_truncated_archive_refused(packed: Path, tmp_path: Path, fraction: float) -> None:
    blob = packed.read_bytes()
    _refused(tmp_path, blob[: int(len(blob) * fraction)], "truncated|corrupt")


def test_an_archive_cut_inside_its_first_block_says_nothing_decompresses(
    packed: Path, tmp_path: Path
) -> None:
    """zstd decodes whole blocks (up to 128 KiB): cut inside the first, it yields no bytes,
    which tarfile calls an 'empty file' although the file is not empty."""
    _refused(tmp_path, packed.read_bytes()[:5000], r"truncated archive \(nothing decompresses")


def test_truncated_tar_refused(contents: dict[str, bytes], tmp_path: Path) -> None:
    raw = _tar(_valid_members(contents))
    _refused(tmp_path, _zst(raw[: len(raw) // 2]), "truncated")


@pytest.mark.parametrize(
    "blob", [b"", b"garbage" * 100, os.urandom(4096)], ids=["empty", "text", "random"]
)
def test_garbage_refused(blob: bytes, tmp_path: Path) -> None:
    _refused(tmp_path, blob, "corrupt|empty")


def test_plain_tar_refused(contents: dict[str, bytes], tmp_path: Path) -> None:
    _refused(tmp_path, _tar(_valid_members(contents)), "corrupt")


def test_trailing_garbage_refused(packed: Path, tmp_path: Path) -> None:
    _refused(tmp_path, packed.read_bytes() + b"trailing junk", "corrupt")


def test_max_bytes_exceeded(packed: Path, tmp_path: Path) -> None:
    _refused(tmp_path, packed.read_bytes(), "over the limit of 1000 bytes", max_bytes=1000)


BOMB_MIB = 1024


def _bomb() -> bytes:
    """1 GiB of b"A" as concatenated zstd frames (tens of KB): a decompression bomb."""
    bomb = _zst(b"A" * (1 << 20)) * BOMB_MIB
    assert len(bomb) < 64 << 10
    return bomb


def _refused_fast(
    tmp_path: Path, blob: bytes, match: str, monkeypatch: pytest.MonkeyPatch, declared: int = 0
) -> None:
    """Refused after decompressing a bounded prefix, writing no more than declared sizes."""
    readers: list[archive_mod._LimitedReader] = []
    written: list[int] = []

    class SpyReader(archive_mod._LimitedReader):
        def __init__(self, *args: object) -> None:
            super().__init__(*args)  # type: ignore[arg-type]
            readers.append(self)

    real_write = archive_mod._Extractor.write

    def spy_write(self: archive_mod._Extractor, name: str, chunks: Iterable[bytes]) -> str:
        def counted() -> Iterable[bytes]:
            for chunk in chunks:
                written.append(len(chunk))
                yield chunk

        return real_write(self, name, counted())  # type: ignore[arg-type]

    monkeypatch.setattr(archive_mod, "_LimitedReader", SpyReader)
    monkeypatch.setattr(archive_mod._Extractor, "write", spy_write)
    _refused(tmp_path, blob, match)
    assert readers[0].count < 20 << 20 < BOMB_MIB << 20
    assert sum(written) <= declared


def test_bomb_after_member_refused(
    contents: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Members with their true sizes, then 1 GiB more data where the next header should be.
    members = _valid_members(contents)[:2]
    blob = _zst(_tar(members, end=False)) + _bomb()
    declared = sum(len(data) for _, data in members)
    match = "ends before member|expands beyond|not a tar header"
    _refused_fast(tmp_path, blob, match, monkeypatch, declared)


def test_bomb_member_bigger_than_manifest_refused(
    contents: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _member(MANIFEST_NAME, contents[MANIFEST_NAME])
    header = _member("config.json", size=1 << 30)[0].tobuf(tarfile.PAX_FORMAT)
    blob = _zst(_tar([manifest], end=False) + header) + _bomb()
    _refused_fast(
        tmp_path,
        blob,
        "'config.json' is 1073741824 bytes, the manifest says",
        monkeypatch,
        len(contents[MANIFEST_NAME]),
    )


def test_bomb_in_pax_header_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # tarfile reads a pax header whole into memory: the reader's byte limit must stop it.
    header = _member("pax", size=1 << 30, type_=tarfile.XHDTYPE)[0].tobuf(tarfile.USTAR_FORMAT)
    _refused_fast(tmp_path, _zst(header) + _bomb(), "expands beyond", monkeypatch)


def test_bomb_after_end_refused(
    packed: Path, contents: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = packed.read_bytes() + _bomb()
    _refused_fast(
        tmp_path,
        blob,
        "trailing data after the archive",
        monkeypatch,
        sum(len(data) for data in contents.values()),
    )


# ---------------------------------------------------------------------------------------------
# Random corruption and generated hostile streams: a bundle identical to the original that
# verifies, or a XelmError of one line, and nothing written anywhere else


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _unpack_or_refuse(blob: bytes, contents: dict[str, bytes], root: Path | None = None) -> str:
    """Unpack ``blob`` inside ``root`` (a fresh temporary directory by default); returns the
    outcome, for the fuzz log."""
    with tempfile.TemporaryDirectory() as tmp:
        root = root or Path(tmp)
        source, out = root / "in" / "a.xelm.tar.zst", root / "out" / "bundle"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(blob)
        out.parent.mkdir(exist_ok=True)  # a missing parent is made (like mkdir -p) and stays
        before = _tree(root)
        try:
            unpack_bundle(source, out)
        except XelmError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 500, str(exc)
            _assert_nothing_left(out)
            assert _tree(root) == before, "an archive that was refused wrote files"
            return f"clean one-line {type(exc).__name__}"
        unpacked = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
        manifest = unpacked.pop(MANIFEST_NAME)  # may differ in whitespace: one size lie cuts it
        assert json.loads(manifest) == json.loads(contents[MANIFEST_NAME])
        assert unpacked == {k: v for k, v in contents.items() if k != MANIFEST_NAME}
        assert verify_bundle(out) == []
        written = {"out/bundle"} | {f"out/bundle/{name}" for name in contents}
        assert _tree(root) == before | written, "an archive wrote outside its bundle"
        return "accepted (valid)"


@fuzz_settings(200)
@given(data=st.data())
def test_mutated_archive(packed: Path, contents: dict[str, bytes], data: st.DataObject) -> None:
    blob = bytearray(packed.read_bytes())
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del blob[data.draw(st.integers(0, len(blob))) :]
    record("fuzz", "archive: corrupted zstd bytes", _unpack_or_refuse(bytes(blob), contents))


@fuzz_settings(300)
@given(data=st.data())
def test_mutated_tar(contents: dict[str, bytes], data: st.DataObject) -> None:
    # Mutate the tar itself (then compress) to reach the header parser, mostly at headers.
    members = _valid_members(contents)
    raw = bytearray(_tar(members))
    starts, offset = [], 0
    for info, payload in members:
        starts.append(offset)
        offset += len(info.tobuf(tarfile.PAX_FORMAT)) + len(payload) + (-len(payload) % 512)
    for _ in range(data.draw(st.integers(1, 4))):
        start = data.draw(st.sampled_from(starts))
        pos = data.draw(st.one_of(st.integers(start, start + 511), st.integers(0, len(raw) - 1)))
        raw[pos] = data.draw(st.one_of(st.sampled_from(b"0 /.\x00\xff7"), st.integers(0, 255)))
    record("fuzz", "archive: corrupted tar headers", _unpack_or_refuse(_zst(bytes(raw)), contents))


# ---------------------------------------------------------------------------------------------
# Generated hostile streams, over a bundle of a few KB so that each case takes milliseconds


@pytest.fixture(scope="session")
def small_contents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A complete bundle of tiny files: a one-tensor model, a stub tokenizer."""
    import numpy as np
    from safetensors.numpy import save

    out = tmp_path_factory.mktemp("small") / "small"
    step = {"relation": "init", "parents": [], "source": {"kind": "config", "name": "fuzz"}}
    with write_bundle(out, role="seed", languages=["en"], step=step) as writer:
        writer.write_bytes("config.json", b'{"model_type": "llama"}')
        writer.write_bytes("model.safetensors", save({"w": np.zeros((2, 3), np.float32)}))
        writer.write_bytes("tokenizer.json", b'{"model": {"type": "BPE", "vocab": {}}}')
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _escapes(root: Path) -> list[str]:
    """Names that would land outside the bundle: relative, absolute, and into ``root``."""
    return [
        "../escaped",
        "a/../../escaped",
        "../../escaped",
        f"{root}/escaped",
        "/etc/xelm-fuzz",
        "./config.json",
        "config.json/",
        "sub/config.json",
        "..\\escaped",
        "",
        ".",
        "..",
    ]


def _resealed(manifest: dict[str, object]) -> bytes:
    """``manifest`` with a content digest that matches it, computed even where the canonical
    form does not exist (lone surrogates), as a careless or hostile writer would."""
    body = {k: v for k, v in manifest.items() if k != "content_digest"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return json.dumps({**body, "content_digest": "sha256:" + digest}).encode()


@functools.cache
def _hostile_manifests(raw: bytes) -> list[bytes]:
    """Manifests an unpacker must refuse with one line before it writes any other member."""
    manifest = json.loads(raw)
    files = manifest["files"]
    return [
        b"[" * 10_000,
        b"\xef\xbb\xbf" + raw[: len(raw) // 2],
        raw[:-1] + b', "n": ' + b"9" * 5000 + b"}",
        _resealed({**manifest, "name": "\ud800"}),
        _resealed({**manifest, "extra": {"deep": json.loads("[" * 500 + "]" * 500)}}),
        _resealed({**manifest, "format_version": "\u00b2.0.0"}),
        _resealed(
            {**manifest, "files": {**files, "huge": {**files["config.json"], "size": 10**15}}}
        ),
        _resealed({**manifest, "languages": [{"i": i} for i in range(10_001)]}),
    ]


_SPECIAL_TYPES = [
    tarfile.SYMTYPE,
    tarfile.LNKTYPE,
    tarfile.CHRTYPE,
    tarfile.BLKTYPE,
    tarfile.FIFOTYPE,
    tarfile.DIRTYPE,
    tarfile.CONTTYPE,
    tarfile.GNUTYPE_SPARSE,
    b"Z",
]
_HOSTILE_PAX = [
    {"size": "9" * 30},
    {"size": "-1"},
    {"size": "1e999"},
    {"path": "../" * 1000 + "escaped"},
    {"mtime": "1e999"},
    {"uid": "-1"},
    {"linkpath": "../escaped"},
    {"GNU.sparse.size": "1"},
    {"GNU.sparse.map": "0,1"},
    {"hdrcharset": "BINARY"},
    {"comment": "x" * 100_000},
]


def _hostile_member(
    data: st.DataObject, contents: dict[str, bytes], root: Path
) -> tuple[str, tuple[tarfile.TarInfo, bytes]]:
    """(kind, member): one member a safe unpacker must refuse or handle."""
    name = data.draw(st.sampled_from(sorted(contents)), label="name")
    body = contents[name]
    kind = data.draw(
        st.sampled_from(
            ["escape", "link", "size lie", "pax", "unlisted", "duplicate", "changed", "manifest"]
        )
    )
    if kind == "manifest":
        hostile = data.draw(st.sampled_from(_hostile_manifests(contents[MANIFEST_NAME])))
        return "hostile manifest", _member(MANIFEST_NAME, hostile)
    if kind == "escape":
        return "path traversal or absolute path", _member(
            data.draw(st.sampled_from(_escapes(root))), body
        )
    if kind == "link":
        type_ = data.draw(st.sampled_from(_SPECIAL_TYPES))
        target = data.draw(st.sampled_from(["../../escaped", f"{root}/escaped", "xelm.json"]))
        return "link, device or other type", _member(name, body, type_=type_, linkname=target)
    if kind == "size lie":
        lie = data.draw(
            st.sampled_from([-1, 1, 511, 512, -len(body), 2**33, 8**11 - 1 - len(body)])
        )
        member = _member(name, body, size=max(0, len(body) + lie))
        # Nothing records the manifest's own size: cutting its final newline leaves it valid.
        return "manifest size" if name == MANIFEST_NAME else "size that lies", member
    if kind == "pax":
        pax = dict(data.draw(st.sampled_from(_HOSTILE_PAX)))
        return "hostile pax header", _member(name, body, pax_headers=pax)
    if kind == "unlisted":
        return "member not in manifest", _member(
            data.draw(st.sampled_from(["extra.bin", "XELM.JSON", "config.JSON"])), body
        )
    if kind == "changed":
        return "content differs from manifest", _member(
            name, body[:-1] + bytes([body[-1] ^ 1]) if body else b"x"
        )
    return "duplicate member", _member(name, body)


_UNSAFE = {
    "path traversal or absolute path",
    "link, device or other type",
    "size that lies",
    "member not in manifest",
    "content differs from manifest",
    "hostile manifest",
}


def _compress(data: st.DataObject, raw: bytes) -> tuple[str, bytes]:
    """(kind, archive): ``raw`` in 1-3 zstd frames, perhaps damaged or with a bomb after it."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=2), label="frames"))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    blob = b"".join(_zst(piece) for piece in pieces)
    damage = data.draw(
        st.sampled_from(["none", "none", "none", "truncated", "garbage", "zeros bomb", "bomb"])
    )
    if damage == "truncated":
        return "truncated zstd", blob[: data.draw(st.integers(0, len(blob) - 1))]
    if damage == "garbage":
        junk = data.draw(st.binary(min_size=1, max_size=64))
        return "zstd garbage", data.draw(st.sampled_from([blob + junk, b"\x28\xb5\x2f\xfd" + junk]))
    # Bombs of 4 MiB and more: the reader allows a few MiB of tar blocks and read-ahead.
    if damage == "zeros bomb":  # zeros read as tar's end-of-archive blocks, then past the limit
        return "decompression bomb", blob + _zst(b"\0" * (data.draw(st.integers(4, 50)) << 20))
    if damage == "bomb":
        return "decompression bomb", blob + _zst(b"A" * (1 << 20)) * data.draw(st.integers(4, 50))
    return "", blob


@fuzz_settings(1500)
@given(data=st.data())
def test_hostile_archive_streams(
    small_contents: dict[str, bytes], tmp_path: Path, data: st.DataObject
) -> None:
    root = tmp_path / "case"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    members: list[tuple[str | None, tuple[tarfile.TarInfo, bytes]]]
    members = [(None, member) for member in _valid_members(small_contents)]
    kinds: list[str] = []
    for _ in range(data.draw(st.integers(0, 3), label="hostile members")):
        kind, member = _hostile_member(data, small_contents, root)
        kinds.append(kind)
        where = data.draw(st.integers(0, len(members)), label="at")
        if data.draw(st.booleans(), label="replace") and where < len(members):
            members[where] = (kind, member)
        else:
            members.insert(where, (kind, member))
    if data.draw(st.integers(0, 5), label="shuffle") == 0:
        kinds.append("members out of order")
        members = data.draw(st.permutations(members))
    names = [member[0].name for _, member in members]
    unsafe = len(set(names)) < len(names) or any(kind in _UNSAFE for kind, _ in members)
    raw = _tar([member for _, member in members], end=data.draw(st.booleans(), label="end"))
    stream_kind, blob = _compress(data, raw)
    outcome = _unpack_or_refuse(blob, small_contents, root)
    if not kinds and not stream_kind:
        assert outcome == "accepted (valid)", "a well-formed archive is refused"
    if unsafe or stream_kind == "decompression bomb":
        assert outcome != "accepted (valid)", "an unsafe archive is accepted"
    kind = stream_kind or (kinds[0] if kinds else "well-formed")
    record("fuzz", f"archive: {kind}", outcome)
