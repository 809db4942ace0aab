"""The checks of ``shards.json`` on open (spec/shards-v1.md section 5): a manifest that repeats a
key, breaks spec/shards-v1.schema.json, has a language key not in normal form, or lists other
files than each language's two is refused in one line, before any file it names is opened."""

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from xelm_cli.common.errors import FormatError
from xelm_cli.data.shards import MANIFEST_NAME, Shards, manifest_problems, write_manifest

WAY_OUT = "prepare them again with `xelm data prepare --force`"

_opened: list[str] | None = None  # the files opened while recording (see ``opened_files``)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # audit hooks stay for the process: this one records only when asked


@pytest.fixture
def opened_files() -> Iterator[list[str]]:
    """The paths of every file opened (``open``, ``os.open``, numpy's memmap) during the test."""
    global _opened
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None


def _copy(shards: Path, target: Path) -> Path:
    shutil.copytree(shards, target)
    for child in target.iterdir():
        child.chmod(0o644)
    return target


def _edited(shards: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of ``shards`` whose manifest ``edit`` changed."""
    copy = _copy(shards, tmp_path / "shards")
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    edit(manifest)
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return copy


def _rename_language(manifest: dict[str, Any], old: str, new: str) -> None:
    """``old`` keyed ``new`` throughout: its entry, the entry's files and ``files``."""
    entry = manifest["languages"].pop(old)
    entry["files"] = {"tokens": f"{new}.tokens.bin", "offsets": f"{new}.offsets.bin"}
    manifest["languages"][new] = entry
    for kind in ("tokens", "offsets"):
        manifest["files"][f"{new}.{kind}.bin"] = manifest["files"].pop(f"{old}.{kind}.bin")


def _refusal(path: Path) -> str:
    with pytest.raises(FormatError) as caught:
        Shards.open(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.endswith(WAY_OUT), message
    assert str(path / MANIFEST_NAME) in message
    return message


def test_prepared_shards_still_open_and_verify(train_shards: Path) -> None:
    shards = Shards.open(train_shards)
    assert shards.languages and shards.verify() == []
    assert manifest_problems(shards.manifest) == []


def test_a_language_outside_the_folder_is_refused_before_any_file_is_opened(
    train_shards: Path, tmp_path: Path, opened_files: list[str]
) -> None:
    language = Shards.open(train_shards).languages[0]
    outside = {kind: tmp_path / f"x.{kind}.bin" for kind in ("tokens", "offsets")}
    for kind, path in outside.items():  # what the probe read: the manifest's own files, moved
        shutil.copy(train_shards / f"{language}.{kind}.bin", path)

    def escape(manifest: dict[str, Any]) -> None:
        _rename_language(manifest, language, "../x")

    shards = _edited(train_shards, tmp_path, escape)
    opened_files.clear()
    message = _refusal(shards)
    assert "'../x" in message
    mine = [
        Path(p).resolve()
        for p in opened_files
        if Path(p).resolve().is_relative_to(tmp_path.resolve())
    ]
    assert mine == [(shards / MANIFEST_NAME).resolve()], opened_files  # only the manifest


def test_a_manifest_without_languages_is_one_line_not_a_key_error(
    train_shards: Path, tmp_path: Path
) -> None:
    message = _refusal(_edited(train_shards, tmp_path, lambda m: m.pop("languages")))
    assert "'languages' is a required property" in message


def test_a_wrong_type_is_refused(train_shards: Path, tmp_path: Path) -> None:
    def text_size(manifest: dict[str, Any]) -> None:
        next(iter(manifest["files"].values()))["size"] = "9252"

    assert "'9252' is not of type 'integer'" in _refusal(_edited(train_shards, tmp_path, text_size))


def test_a_repeated_key_is_refused(train_shards: Path, tmp_path: Path) -> None:
    copy = _copy(train_shards, tmp_path / "shards")
    raw = (copy / MANIFEST_NAME).read_text()
    assert raw.count('"dtype": "uint16",') == 1
    (copy / MANIFEST_NAME).write_text(
        raw.replace('"dtype": "uint16",', '"dtype": "uint16",\n  "dtype": "uint32",')
    )
    assert "key 'dtype' appears twice in one object" in _refusal(copy)


@pytest.mark.parametrize(
    ("key", "normal"), [("EN", "en"), ("eng", "en"), ("en-us", "en-US"), ("iw", "he")]
)
def test_a_language_key_not_in_normal_form_is_refused(
    train_shards: Path, tmp_path: Path, key: str, normal: str
) -> None:
    language = Shards.open(train_shards).languages[0]
    shards = _edited(train_shards, tmp_path, lambda m: _rename_language(m, language, key))
    message = _refusal(shards)
    assert key in message
    if key == key.lower():  # the schema's pattern refuses capitals before the rule can
        assert f"is not a normalised tag: write it {normal!r}" in message


def test_an_unknown_language_is_refused(train_shards: Path, tmp_path: Path) -> None:
    language = Shards.open(train_shards).languages[0]
    shards = _edited(train_shards, tmp_path, lambda m: _rename_language(m, language, "zz"))
    assert "'zz' is no language code xelm knows" in _refusal(shards)


def test_an_extra_or_missing_file_is_refused(train_shards: Path, tmp_path: Path) -> None:
    language = Shards.open(train_shards).languages[0]

    def extra(manifest: dict[str, Any]) -> None:
        manifest["files"]["zu.tokens.bin"] = manifest["files"][f"{language}.tokens.bin"]

    message = _refusal(_edited(train_shards, tmp_path / "extra", extra))
    assert "files: zu.tokens.bin is no file of the manifest's languages" in message

    def missing(manifest: dict[str, Any]) -> None:
        del manifest["files"][f"{language}.offsets.bin"]

    message = _refusal(_edited(train_shards, tmp_path / "missing", missing))
    assert f"files: {language}.offsets.bin is not listed" in message

    def elsewhere(manifest: dict[str, Any]) -> None:
        manifest["languages"][language]["files"]["tokens"] = "zu.tokens.bin"

    message = _refusal(_edited(train_shards, tmp_path / "elsewhere", elsewhere))
    assert f"languages/{language}/files/tokens: 'zu.tokens.bin', not" in message


def test_problems_are_counted(train_shards: Path, tmp_path: Path) -> None:
    def two(manifest: dict[str, Any]) -> None:
        del manifest["dtype"], manifest["tokenizer"]

    assert "(and 1 more)" in _refusal(_edited(train_shards, tmp_path, two))


def test_members_a_reader_does_not_know_are_ignored(train_shards: Path, tmp_path: Path) -> None:
    def future(manifest: dict[str, Any]) -> None:
        manifest["future"] = {"anything": [1]}
        for entry in manifest["languages"].values():
            entry["future"] = True

    assert Shards.open(_edited(train_shards, tmp_path, future)).verify() == []


def test_the_writer_refuses_a_manifest_readers_would_refuse(
    train_shards: Path, tmp_path: Path
) -> None:
    manifest = json.loads((train_shards / MANIFEST_NAME).read_text())
    language = sorted(manifest["languages"])[0]
    _rename_language(manifest, language, "eng")
    out = tmp_path / "out"
    out.mkdir()
    for kind in ("tokens", "offsets"):
        shutil.copy(train_shards / f"{language}.{kind}.bin", out / f"eng.{kind}.bin")
    fields = {k: manifest[k] for k in ("dtype", "tokenizer", "source", "options")}
    fields["languages"] = {"eng": manifest["languages"]["eng"]}
    with pytest.raises(FormatError, match="refusing to write an invalid shards manifest"):
        write_manifest(out, fields)
    assert not (out / MANIFEST_NAME).exists()
