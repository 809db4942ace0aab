"""Integrity: every way of loading a bundle refuses one whose files do not match its manifest,
naming the file; a verified bundle is not hashed again until one of its files changes."""

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TEST_LANGS, flip_byte
from reliability import record

from xelm_cli.bundle import store as bundle_module
from xelm_cli.bundle.branching import branch
from xelm_cli.bundle.store import Bundle, verified, write_bundle
from xelm_cli.cli import run
from xelm_cli.common.errors import FormatError, IntegrityError
from xelm_cli.data.tokenizer_loading import load_tokenizer as load_tokenizer_info
from xelm_cli.ensemble.members import open_members
from xelm_cli.ensemble.scoring import LoadedModel

WEIGHTS, TOKENIZER, CONFIG = "model.safetensors", "tokenizer.json", "config.json"


def fresh_copy(seed_bundle: Path, root: Path) -> Path:
    """A copy of the seed whose files are old enough to be remembered once verified."""
    copy = root / "bundle"
    shutil.copytree(seed_bundle, copy)
    time.sleep(verified.RACY_NS / 1e9 + 0.05)
    return copy


def edit_manifest(bundle: Path) -> None:
    manifest = bundle / "xelm.json"
    data = json.loads(manifest.read_text())
    data["languages"] = ["fi"]
    manifest.chmod(0o644)
    manifest.write_text(json.dumps(data))


def _load_model(path: Path) -> None:
    Bundle.read(path).load_model()


def _load_tokenizer(path: Path) -> None:
    Bundle.read(path).load_tokenizer()


def _ensemble_member(path: Path) -> None:
    LoadedModel.load(open_members([path])[0], __import__("torch").device("cpu"))


def _branch(path: Path) -> None:
    branch(path, path.parent / "child")
    pytest.fail("branched a corrupt bundle")  # pragma: no cover


def _data_tokenizer(path: Path) -> None:
    load_tokenizer_info(path)


LOAD_PATHS: dict[str, Callable[[Path], None]] = {
    "Bundle.load_model": _load_model,
    "Bundle.load_tokenizer": _load_tokenizer,
    "ensemble member load": _ensemble_member,
    "branch": _branch,
    "data prepare tokenizer": _data_tokenizer,
}
CORRUPTIONS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "one byte of the weights flipped": (WEIGHTS, lambda b: flip_byte(b / WEIGHTS)),
    "one byte of the tokenizer flipped": (TOKENIZER, lambda b: flip_byte(b / TOKENIZER)),
    "one byte of the config flipped": (CONFIG, lambda b: flip_byte(b / CONFIG)),
    "weights flipped, mtime restored": (WEIGHTS, lambda b: flip_byte(b / WEIGHTS, True)),
    "weights truncated": (WEIGHTS, lambda b: os.truncate(b / WEIGHTS, 100)),
    "tokenizer deleted": (TOKENIZER, lambda b: (b / TOKENIZER).unlink()),
    "manifest edited": ("xelm.json", edit_manifest),
    "unlisted file added": ("extra.bin", lambda b: (b / "extra.bin").write_bytes(b"x")),
    "manifest a link to one elsewhere": ("xelm.json", lambda b: linked_manifest(b)),
}


def linked_manifest(bundle: Path) -> None:
    """The manifest moved out of the bundle and linked back: its digests could then vouch
    for another bundle's files."""
    elsewhere = bundle.parent / "elsewhere.json"
    (bundle / "xelm.json").rename(elsewhere)
    (bundle / "xelm.json").symlink_to(elsewhere)


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_every_load_path_refuses_a_corrupt_bundle_naming_the_file(
    seed_bundle: Path, tmp_path: Path, corruption: str
) -> None:
    bundle = fresh_copy(seed_bundle, tmp_path)
    Bundle.open(bundle)  # verified and remembered: the fast path must not hide what follows
    file, corrupt = CORRUPTIONS[corruption]
    corrupt(bundle)
    for load_path, load in LOAD_PATHS.items():
        with pytest.raises(IntegrityError) as caught:
            load(bundle)
        message = str(caught.value)
        named = file in message and "\n" not in message
        record("corrupt", corruption, f"detected by {load_path}, file named" if named else message)
        assert named, (load_path, message)
    assert not (tmp_path / "child").exists()


def test_cli_commands_refuse_a_corrupt_bundle(
    seed_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = fresh_copy(seed_bundle, tmp_path)
    flip_byte(bundle / WEIGHTS)
    commands = {
        "bundle verify": ["bundle", "verify", str(bundle)],
        "bundle branch": ["bundle", "branch", str(bundle), "-o", str(tmp_path / "b")],
        "bundle pack": ["bundle", "pack", str(bundle), "-o", str(tmp_path / "b.xelm.tar.zst")],
    }
    for name, argv in commands.items():
        assert run(argv) == IntegrityError.exit_code, name
        err = capsys.readouterr().err
        detected = "model.safetensors" in err or "failed verification" in err
        clean = detected and err.count("xelm: error:") == 1
        outcome = f"detected by xelm {name}" if clean else f"xelm {name}: {err[-300:]}"
        record("corrupt", "one byte of the weights flipped", outcome)
        assert clean, err
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.xelm.tar.zst").exists()


def count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    hashed: list[str] = []
    real = bundle_module.sha256_file

    def spy(path: Path, progress: object = None) -> str:
        hashed.append(path.name)
        return real(path, progress)  # type: ignore[arg-type]

    monkeypatch.setattr(bundle_module, "sha256_file", spy)
    return hashed


def test_a_verified_bundle_is_not_hashed_again(
    seed_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = fresh_copy(seed_bundle, tmp_path)
    hashed = count_hashes(monkeypatch)
    Bundle.open(bundle)
    assert sorted(hashed) == sorted(Bundle.read(bundle).manifest.files)
    hashed.clear()
    Bundle.open(bundle)
    Bundle.read(bundle).load_tokenizer()
    assert hashed == []
    flip_byte(bundle / CONFIG, keep_mtime=True)  # the change time still moves
    with pytest.raises(IntegrityError, match=CONFIG):
        Bundle.open(bundle)
    assert hashed == [CONFIG]  # only the changed file was read again


def test_bundle_verify_always_hashes_everything(
    seed_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = fresh_copy(seed_bundle, tmp_path)
    Bundle.open(bundle)
    hashed = count_hashes(monkeypatch)
    assert run(["bundle", "verify", str(bundle)]) == 0
    assert sorted(hashed) == sorted(Bundle.read(bundle).manifest.files)


def test_branching_keeps_the_parent_remembered(
    seed_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = fresh_copy(seed_bundle, tmp_path)
    Bundle.open(parent)
    hashed = count_hashes(monkeypatch)
    for i in range(3):
        branch(parent, tmp_path / f"expert-{i}", languages=[TEST_LANGS[i]])
    Bundle.open(parent)
    assert hashed == []  # links changed the inodes' change times, not their contents


def test_unreadable_or_disabled_cache_means_hashing(
    seed_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = fresh_copy(seed_bundle, tmp_path)
    Bundle.open(bundle)
    hashed = count_hashes(monkeypatch)
    monkeypatch.setenv(verified.SWITCH_ENV, "0")
    Bundle.open(bundle)
    assert len(hashed) == len(Bundle.read(bundle).manifest.files)
    monkeypatch.delenv(verified.SWITCH_ENV)
    for entry in verified.cache_root().glob("*.json"):
        entry.write_text('{"files": {"model.safetensors": "not a signature"')
    hashed.clear()
    Bundle.open(bundle)
    assert len(hashed) == len(Bundle.read(bundle).manifest.files)


def test_racy_files_are_not_remembered(
    seed_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verified, "RACY_NS", 3600 * 10**9)  # a stall cannot settle them
    bundle = tmp_path / "new"
    shutil.copytree(seed_bundle, bundle)  # written just now: could still change unnoticed
    Bundle.open(bundle)
    assert verified.remembered(Bundle.read(bundle).digest, bundle) == {}


@pytest.mark.parametrize("model_type", ["llama", "evil-remote-model"])
def test_code_shipped_in_a_bundle_never_runs(
    seed_bundle: Path, tmp_path: Path, model_type: str
) -> None:
    marker = tmp_path / "code-ran"
    parent = Bundle.open(seed_bundle)
    config = json.loads((seed_bundle / CONFIG).read_text())
    config |= {"model_type": model_type, "auto_map": {"AutoModelForCausalLM": "evil.Model"}}
    tokenizer_config = json.loads((seed_bundle / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["evil.Tokenizer", None]}
    out = tmp_path / "hostile"
    with write_bundle(
        out,
        role="expert",
        languages=["en"],
        parent=parent,
        step={"relation": "branch", "parents": [parent.ref]},
    ) as writer:
        writer.write_bytes(CONFIG, json.dumps(config).encode())
        writer.write_bytes("tokenizer_config.json", json.dumps(tokenizer_config).encode())
        writer.write_bytes("evil.py", f"open({str(marker)!r}, 'w')\n".encode())
    hostile = Bundle.open(out)
    for load in (hostile.load_model, hostile.load_tokenizer):
        try:
            load()  # a known architecture loads as itself, ignoring auto_map
            outcome = "loaded without running its code"
        except FormatError as exc:
            assert "\n" not in str(exc) and str(out) in str(exc)
            outcome = "refused in one line, no code run"
        record("hostile", f"bundle shipping code ({model_type})", outcome)
        assert not marker.exists()
