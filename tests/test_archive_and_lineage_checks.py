"""What `xelm bundle verify` rejects is neither packed, unpacked nor walked as a lineage; `pack
--force` replaces only a bundle archive; nothing but zeros may follow an archive's end; the
spec, the schema and the code agree on the manifest's required fields."""

import hashlib
import io
import json
import re
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard
from cli_helpers import xelm

from xelm_cli.bundle import archive as archive_mod
from xelm_cli.bundle import manifest as manifest_mod
from xelm_cli.bundle.archive import pack_bundle, unpack_bundle
from xelm_cli.bundle.lineage import Node, ancestors, roots
from xelm_cli.bundle.manifest import MANIFEST_NAME, bundle_schema, content_digest
from xelm_cli.bundle.store import Bundle, verify_bundle
from xelm_cli.common.errors import ArchiveError, FormatError, IntegrityError, UsageError
from xelm_cli.common.recognise import ARCHIVE, is_bundle_archive, made_by_xelm

SPEC = Path(__file__).resolve().parents[1] / "spec" / "bundle-v1.md"
FALSE_DIGEST = "sha256:" + "0" * 64
Edit = Callable[[Path, dict[str, Any]], None]


def _edited(seed: Path, out: Path, edit: Edit) -> Path:
    """A copy of ``seed`` whose manifest ``edit`` changed, with its content digest made to
    match again (as a careless or hostile writer would)."""
    shutil.copytree(seed, out)
    manifest_path = out / MANIFEST_NAME
    manifest_path.chmod(0o644)
    data = json.loads(manifest_path.read_bytes())
    edit(out, data)
    data["content_digest"] = content_digest(data)
    manifest_path.write_text(json.dumps(data, indent=2))
    return out


def _false_fingerprint(_: Path, data: dict[str, Any]) -> None:
    data["fingerprints"]["tokenizer"] = FALSE_DIGEST


def _pickle_file(bundle: Path, data: dict[str, Any]) -> None:
    body = b"not really a pickle"
    (bundle / "pytorch_model.bin").write_bytes(body)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    data["files"]["pytorch_model.bin"] = {"sha256": digest, "size": len(body)}


def _branch_first(_: Path, data: dict[str, Any]) -> None:
    data["lineage"][0] = {"relation": "branch", "parents": [{"id": "x", "digest": FALSE_DIGEST}]}


def _second_init(_: Path, data: dict[str, Any]) -> None:
    data["lineage"] = [data["lineage"][0], dict(data["lineage"][0])]
    data["role"] = "expert"  # a donor expert of `branch --from` too


def _cycle(_: Path, data: dict[str, Any]) -> None:
    """Two steps that name one parent: the bundle step 0 made would be its own parent."""
    ref = {"id": "x", "digest": FALSE_DIGEST}
    data["lineage"] += [
        {"relation": "branch", "parents": [ref]},
        {"relation": "train", "parents": [ref]},
    ]


BROKEN = {  # what verify rejects, and how pack refuses it
    "fingerprint": (_false_fingerprint, IntegrityError, "tokenizer fingerprint does not match"),
    "pickle": (_pickle_file, FormatError, "files/pytorch_model.bin: a pickle-based file"),
    "lineage": (_branch_first, FormatError, "lineage/0: the first step is 'branch'"),
}


def _tar_archive(bundle: Path, out: Path, tail: bytes = b"") -> Path:
    """``bundle`` as an archive written by Python's tarfile (``xelm.json`` first, then end
    blocks and zeros to a whole record), not by pack, which refuses what verify rejects."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        names = [MANIFEST_NAME, *sorted(json.loads((bundle / MANIFEST_NAME).read_bytes())["files"])]
        for name in names:
            tar.add(bundle / name, arcname=name)
    out.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()) + tail)
    return out


def _one_line(exc: pytest.ExceptionInfo[Exception]) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


def _nothing_at(out: Path) -> bool:
    return not out.exists() and not [p for p in out.parent.glob(f".{out.name}.*.partial")]


@pytest.fixture(scope="module")
def packed(seed_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pack_bundle(seed_bundle, tmp_path_factory.mktemp("packed") / "seed.xelm.tar.zst")


# ---------------------------------------------------------------------- 4. pack --force


def test_an_archive_is_known_by_its_first_member_not_by_zstd_or_its_name(
    packed: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus.xelm.tar.zst"
    corpus.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "hi"}\n'))
    renamed = tmp_path / "seed.bin"
    shutil.copy(packed, renamed)
    readme_first = tmp_path / "readme-first.xelm.tar.zst"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("README.md"), io.BytesIO())
    readme_first.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
    assert is_bundle_archive(packed) and is_bundle_archive(renamed)
    assert made_by_xelm(renamed) == ARCHIVE
    for other in (corpus, readme_first, tmp_path):
        assert not is_bundle_archive(other) and made_by_xelm(other) is None, other


def test_pack_force_never_replaces_a_zstd_file_that_is_no_archive(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, packed: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus.jsonl.zst"
    corpus.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "hi"}\n'))
    before = corpus.read_bytes()
    for force in ((), ("--force",)):
        code, out, err = xelm(capsys, "bundle", "pack", seed_bundle, "-o", corpus, *force)
        assert (code, out, err.count("\n")) == (2, "", 1), err
        assert f"{corpus} is zstd data, not a bundle archive; --force replaces only" in err
        assert "pass --force" not in err
    assert corpus.read_bytes() == before
    archive = tmp_path / "seed.xelm.tar.zst"
    shutil.copy(packed, archive)  # an archive of its own: --force replaces it
    with pytest.raises(UsageError, match="pass --force"):
        pack_bundle(seed_bundle, archive)
    pack_bundle(seed_bundle, archive, overwrite=True)
    assert archive.read_bytes() == packed.read_bytes()


# ---------------------------------------------------------- 6. pack and unpack verify


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_pack_refuses_what_verify_rejects(case: str, seed_bundle: Path, tmp_path: Path) -> None:
    edit, error, message = BROKEN[case]
    bundle = _edited(seed_bundle, tmp_path / "b", edit)
    assert verify_bundle(bundle) != []
    out = tmp_path / "out" / "b.xelm.tar.zst"
    with pytest.raises(error) as caught:
        pack_bundle(bundle, out)
    line = _one_line(caught)
    assert line.startswith(f"{bundle}: {message}")
    assert line.endswith(f"run `xelm bundle verify {bundle}`")
    assert _nothing_at(out)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_unpack_refuses_what_verify_rejects(
    case: str, seed_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    edit, _, message = BROKEN[case]
    archive = _tar_archive(_edited(seed_bundle, tmp_path / "b", edit), tmp_path / "b.tar.zst")
    written: list[str] = []
    real_write = archive_mod._Extractor.write

    def spy(extractor: archive_mod._Extractor, name: str, chunks: Any) -> str:
        written.append(name)
        return real_write(extractor, name, chunks)

    monkeypatch.setattr(archive_mod._Extractor, "write", spy)
    out = tmp_path / "out" / "b"
    with pytest.raises(ArchiveError) as caught:
        unpack_bundle(archive, out)
    line = _one_line(caught)
    assert line.startswith(f"{archive}: ") and message in line, line
    assert "passes `xelm bundle verify`" in line
    assert _nothing_at(out)
    if case != "fingerprint":  # the manifest's rules are checked before any file is written
        assert written == []


# ---------------------------------------------------------------- 7. lineage walked


def test_a_second_init_step_is_refused_where_lineage_is_walked(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, tmp_path: Path
) -> None:
    bundle = _edited(seed_bundle, tmp_path / "pool" / "tr", _second_init)
    problem = f"{bundle}: lineage/1: 'init' after the first step (spec 3.2)"
    way = f"run `xelm bundle verify {bundle}`"
    with pytest.raises(FormatError, match=re.escape(f"{problem}; {way}")):
        ancestors(Bundle.read(bundle))
    code, out, err = xelm(capsys, "bundle", "lineage", bundle)
    assert (code, out, err) == (3, "", f"xelm: error: {problem}; {way}\n")
    target = tmp_path / "az"
    argv = ("bundle", "branch", "--from", bundle.parent, "--donor", "tr", "--lang", "az")
    code, out, err = xelm(capsys, *argv, "-o", target)
    assert (code, out, err) == (3, "", f"xelm: error: {problem}; {way}\n")
    assert not target.exists()


def test_a_lineage_whose_steps_name_one_parent_twice_is_refused(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, tmp_path: Path
) -> None:
    """Every step makes another bundle: two steps with one first parent would make the bundle
    its own ancestor (was verified, and hidden by `bundle lineage`)."""
    bundle = _edited(seed_bundle, tmp_path / "cycle", _cycle)
    assert verify_bundle(bundle) == [
        "lineage/2: its first parent is lineage/1's too; every step makes another bundle (spec 3.2)"
    ]
    code, out, err = xelm(capsys, "bundle", "lineage", bundle)
    assert code == 3 and "lineage/2: its first parent is lineage/1's too" in err, out


def test_roots_reach_every_node_of_a_graph_with_a_cycle() -> None:
    """No manifest that verifies makes one, but a bundle is never dropped from the tree."""
    nodes = {
        "a": Node("a", "a", "train", parents=["b"]),
        "b": Node("b", "b", "train", parents=["a"]),
        "s": Node("s", "s", "init"),
        "c": Node("c", "c", "branch", parents=["s"]),
    }
    found = roots(nodes)
    assert [node.digest for node in found][:1] == ["s"]
    shown = {node.digest for root in found for node in _below(root, nodes)}
    assert shown == set(nodes)


def _below(root: Any, nodes: dict[str, Any]) -> list[Any]:
    found, todo = [], [root]
    while todo:
        node = todo.pop()
        if node not in found:
            found.append(node)
            todo += [n for n in nodes.values() if node.digest in n.parents]
    return found


# ------------------------------------------------------- 8. required manifest fields


def _spec_fields() -> dict[str, str]:
    """The manifest fields of spec section 3's table: name -> its type cell."""
    rows = re.findall(r"^\| `([a-z_]+)` \| ([^|]+) \|", SPEC.read_text(), re.MULTILINE)
    return {name: kind for name, kind in rows if name in bundle_schema()["properties"]}


def test_spec_schema_and_reader_agree_on_required_fields(seed_bundle: Path, tmp_path: Path) -> None:
    fields = _spec_fields()
    absent_is_null = {name for name, kind in fields.items() if "absent one as null" in kind}
    optional = {name for name, kind in fields.items() if "OPTIONAL" in kind}
    assert absent_is_null == {"allocation", "training"}
    assert set(bundle_schema()["required"]) == set(fields) - optional - absent_is_null
    for name in absent_is_null:  # written by every writer, null when there is none
        assert name in json.loads((seed_bundle / MANIFEST_NAME).read_bytes())

    def drop(_: Path, data: dict[str, Any]) -> None:
        del data["allocation"], data["training"]

    bundle = _edited(seed_bundle, tmp_path / "b", drop)
    assert verify_bundle(bundle) == []
    manifest = Bundle.read(bundle).manifest
    assert (manifest.allocation, manifest.training) == (None, None)
    assert not hasattr(manifest_mod, "RELATIONS")  # the schema's enum is the one list of them


# ---------------------------------------------------------------- 9. trailing data


def _frame(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


TRAILING = {
    "a script in a zstd frame": lambda packed: packed + _frame(b"#!/bin/sh\necho appended\n"),
    "a second archive": lambda packed: packed + packed,
    "megabytes of zeros": lambda packed: packed + _frame(bytes(3 << 20)),
}


@pytest.mark.parametrize("case", sorted(TRAILING))
def test_data_after_the_archive_is_refused(case: str, packed: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.xelm.tar.zst"
    archive.write_bytes(TRAILING[case](packed.read_bytes()))
    out = tmp_path / "out"
    with pytest.raises(ArchiveError) as caught:
        unpack_bundle(archive, out)
    assert _one_line(caught).startswith(f"{archive}: trailing data after the archive (")
    assert _nothing_at(out)


def test_a_block_that_is_no_tar_header_does_not_pass_for_the_end(
    seed_bundle: Path, tmp_path: Path
) -> None:
    """tarfile reads a header block that fails its checksum, after the first member, as the
    end of the archive: garbage in place of the end blocks was accepted."""
    members = b""
    for name in [MANIFEST_NAME, *sorted(Bundle.read(seed_bundle).manifest.files)]:
        data = (seed_bundle / name).read_bytes()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        members += info.tobuf(tarfile.PAX_FORMAT) + data + bytes(-len(data) % tarfile.BLOCKSIZE)
    archive = tmp_path / "a.xelm.tar.zst"
    archive.write_bytes(_frame(members + b"junk" * 128))
    out = tmp_path / "out"
    with pytest.raises(ArchiveError, match="not a tar header"):
        unpack_bundle(archive, out)
    assert _nothing_at(out)


def test_zeros_after_the_end_and_tar_written_archives_unpack(
    seed_bundle: Path, packed: Path, tmp_path: Path
) -> None:
    padded = tmp_path / "padded.xelm.tar.zst"
    padded.write_bytes(packed.read_bytes() + _frame(bytes(20 << 10)))
    written_by_tarfile = _tar_archive(seed_bundle, tmp_path / "tarfile.xelm.tar.zst")
    for archive in (packed, padded, written_by_tarfile):
        out = tmp_path / archive.name.split(".")[0]
        unpack_bundle(archive, out)
        assert verify_bundle(out) == []


# ---------------------------------------------------------------- 8. what the spec adds


def test_two_tags_of_one_language_make_a_manifest_invalid(
    seed_bundle: Path, tmp_path: Path
) -> None:
    """Which one a reader kept would decide what the bundle is for (spec 3, 7.2)."""

    def alias(_: Path, data: dict[str, Any]) -> None:
        data["languages"] = ["he", "ar", "iw"]

    bundle = _edited(seed_bundle, tmp_path / "he", alias)
    assert verify_bundle(bundle) == ["languages: 'he' and 'iw' are one language (spec 3)"]


def test_a_manifest_no_unpacker_would_take_is_not_packed(
    seed_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive_mod, "MAX_MANIFEST_SIZE", 1 << 10)
    size = (seed_bundle / MANIFEST_NAME).stat().st_size
    with pytest.raises(UsageError) as refused:
        pack_bundle(seed_bundle, tmp_path / "a.xelm.tar.zst")
    assert str(refused.value) == (
        f"{seed_bundle}: xelm.json is {size:,} bytes, more than an archive's manifest may hold "
        "(1,024); copy the folder instead"
    )
    assert not (tmp_path / "a.xelm.tar.zst").exists()
