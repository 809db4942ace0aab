"""Bundle writers (init, branch, merge, moe, unpack) and what they may write over: --force
replaces only a bundle or an empty folder, never an input, the working directory or a folder
of other things; no output inside a bundle; refusals before any input is hashed; xelm.json
written last and hidden temporaries never taken for bundles; verify checks the spec's rules
beyond the schema; a tokenizer with several chat templates makes a bundle."""

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import xelm
from conftest import flip_byte

from xelm_cli.bundle.archive import pack_bundle, unpack_bundle
from xelm_cli.bundle.branching import branch, find_bundles
from xelm_cli.bundle.manifest import MANIFEST_NAME, content_digest
from xelm_cli.bundle.merging import merge_average
from xelm_cli.bundle.store import Bundle, verify_bundle
from xelm_cli.common.digest import sha256_file
from xelm_cli.common.errors import UsageError

KILLPOINT = Path(__file__).with_name("killpoint.py")


def contents(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (hidden ones too) with its sha256."""
    return {
        str(path.relative_to(folder)): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def pool(tmp_path: Path, seed_bundle: Path) -> Path:
    """``pool/e0`` (en) and ``pool/e1`` (tr), branched from the seed, beside ``notes.txt``."""
    folder = tmp_path / "pool"
    branch(seed_bundle, folder / "e0", languages="en")
    branch(seed_bundle, folder / "e1", languages="tr")
    (folder / "notes.txt").write_text("keep me")
    return folder


def refused(capsys: pytest.CaptureFixture[str], *args: object) -> str:
    """Run ``xelm ARGS``; it must refuse (exit 2) in one line; returns that line."""
    code, out, err = xelm(capsys, *args)
    assert code == 2, (code, out, err)
    assert err.startswith("xelm: error: ") and err.count("\n") == 1, err
    return err


# ------------------------------------------------------------------ 1. what --force replaces


def test_force_never_replaces_a_folder_of_inputs_or_other_files(
    pool: Path, tmp_path: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reviewer's cases: -o the folder that holds the inputs, a folder of unrelated files,
    an input itself; by branch, merge, moe and init alike. One line each; nothing changes."""
    e0, e1 = pool / "e0", pool / "e1"
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "thesis.tex").write_text("years of work")
    before = {folder: contents(folder) for folder in (pool, junk, tokenizer_dir)}
    reads = "which this command reads: write the output somewhere else"
    other = (
        "is a folder but no bundle (it has no xelm.json); --force replaces only a bundle or an "
        "empty folder: write the output somewhere else, or empty or remove that folder first"
    )
    init = ("bundle", "init", "--config", "tiny", "--tokenizer", tokenizer_dir, "--langs", "en")
    cases = [
        (("bundle", "branch", e0, "--langs", "ar"), pool, f"{pool} holds {e0}, {reads}"),
        (("bundle", "branch", e0, "--langs", "ar"), e0, f"{e0} is {e0}, {reads}"),
        (("bundle", "merge", e0, e1), pool, f"{pool} holds {e0}, {reads}"),
        (("bundle", "merge", e0, e1), e1, f"{e1} is {e1}, {reads}"),
        (("bundle", "moe", e0, e1, "--top-k", "1"), pool, f"{pool} holds {e0}, {reads}"),
        (init, pool, f"{pool} {other}"),
        (init, tokenizer_dir, f"{tokenizer_dir} is {tokenizer_dir}, {reads}"),
    ]
    commands = dict.fromkeys(command for command, _, _ in cases)
    cases += [(command, junk, f"{junk} {other}") for command in commands]
    for command, out, expected in cases:
        assert refused(capsys, *command, "-o", out, "--force") == f"xelm: error: {expected}\n"
    assert {f: contents(f) for f in (pool, junk, tokenizer_dir)} == before
    assert verify_bundle(e0) == [] and verify_bundle(e1) == []


def test_force_replaces_a_bundle_or_an_empty_folder(
    pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    e0, e1 = pool / "e0", pool / "e1"
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = xelm(capsys, "bundle", "branch", e0, "--langs", "ar", "-o", empty, "--force")
    assert code == 0, err
    assert Bundle.open(empty).languages == ["ar"]
    code, _, err = xelm(capsys, "bundle", "branch", e0, "--langs", "az", "-o", e1, "--force")
    assert code == 0, err
    assert Bundle.open(e1).languages == ["az"] and verify_bundle(e1) == []
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    err = refused(capsys, "bundle", "branch", e0, "-o", a_file, "--force")
    assert "is a file, not a bundle; --force replaces only a bundle or an empty folder" in err
    assert a_file.read_text() == "mine"


def test_force_never_replaces_the_working_directory_or_a_folder_above_it(
    pool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """-o . --force from a work folder that holds the input, and from inside a bundle (which
    --force could otherwise replace): refused, nothing changes."""
    work = tmp_path / "work"
    shutil.copytree(pool / "e0", work / "e0")
    monkeypatch.chdir(work)
    before = contents(work)
    for out in (".", ".."):
        refused(capsys, "bundle", "branch", "e0", "--langs", "tr", "-o", out, "--force")
    assert contents(work) == before

    inside = tmp_path / "replaceable"
    shutil.copytree(pool / "e1", inside)
    monkeypatch.chdir(inside)
    before = contents(inside)
    err = refused(capsys, "bundle", "branch", work / "e0", "--langs", "tr", "-o", ".", "--force")
    assert err == (
        "xelm: error: . is the current directory or holds it; --force does not replace it: "
        "write the output somewhere else\n"
    )
    archive = pack_bundle(work / "e0", tmp_path / "e0.xelm.tar.zst")
    err = refused(capsys, "bundle", "unpack", archive, "-o", ".", "--force")
    assert "current directory" in err
    assert contents(inside) == before and verify_bundle(inside) == []


def test_unpack_shares_the_check_an_output_folder_of_other_things_is_kept(
    pool: Path, tmp_path: Path
) -> None:
    archive = pack_bundle(pool / "e0", tmp_path / "e0.xelm.tar.zst")
    with pytest.raises(UsageError, match="inside the bundle"):
        unpack_bundle(archive, pool / "e1" / "copy", overwrite=True)
    with pytest.raises(UsageError, match=r"is a folder but no bundle .*or an empty folder"):
        unpack_bundle(archive, pool, overwrite=True)
    assert verify_bundle(pool / "e1") == [] and (pool / "notes.txt").read_text() == "keep me"


# ------------------------------------------------------------------ 2. outputs inside bundles


def test_no_writer_puts_its_output_inside_a_bundle(
    pool: Path, tmp_path: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """-o nest/child (or deeper) would be an unlisted entry of the bundle nest: refused by every
    writer, with or without --force; pack refuses an archive in any bundle, not only its own."""
    e0, e1 = pool / "e0", pool / "e1"
    nest = tmp_path / "nest"
    shutil.copytree(e1, nest)
    for out in (nest / "child", nest / "a" / "b" / "child"):
        for command in (
            ("bundle", "branch", e0, "--langs", "tr"),
            ("bundle", "merge", e0, e1),
            ("bundle", "init", "--config", "tiny", "--tokenizer", tokenizer_dir),
        ):
            for force in ((), ("--force",)):
                err = refused(capsys, *command, "-o", out, *force)
                assert f"inside the bundle {nest}" in err, err
                assert "write it somewhere else" in err
    err = refused(capsys, "bundle", "pack", e0, "-o", nest / "e0.xelm.tar.zst")
    assert f"an archive would lie inside the bundle {nest}" in err
    assert sorted(p.name for p in nest.iterdir()) == sorted(p.name for p in e1.iterdir())
    code, _, err = xelm(capsys, "bundle", "verify", nest)
    assert code == 0, err


# ------------------------------------------------------------------ 6. refused before hashing


def test_an_existing_output_is_refused_before_any_input_is_hashed_or_loaded(
    pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Inputs with a corrupted weights file and an existing output: the output is what is
    refused (exit 2), before the digests are taken (which would fail with exit 4)."""
    bad0, bad1 = tmp_path / "bad0", tmp_path / "bad1"
    shutil.copytree(pool / "e0", bad0)  # copies: the pool's files are links to the seed's
    shutil.copytree(pool / "e1", bad1)
    flip_byte(bad0 / "model.safetensors")
    flip_byte(bad1 / "model.safetensors")
    exists = tmp_path / "exists"
    exists.mkdir()
    for command in (
        ("bundle", "branch", bad0, "--langs", "tr"),
        ("bundle", "merge", bad0, bad1),
        ("bundle", "moe", bad0, bad1, "--top-k", "1"),
        ("bundle", "init", "--hf", tmp_path / "no-such-model"),
    ):
        err = refused(capsys, *command, "-o", exists)
        assert f"output {exists} already exists; choose another path or pass --force" in err
    assert list(exists.iterdir()) == []
    with pytest.raises(UsageError, match="already exists"):
        merge_average([bad0, bad1], exists)


# ------------------------------------------------------------------ 3. xelm.json last


def _killpoint(n: int, watched: Path, log: Path | None, *args: object) -> int:
    env = {**os.environ, "XELM_KILL_UNDER": str(watched), "OMP_NUM_THREADS": "1"}
    env.pop("XELM_KILL_COUNT_FILE", None)
    if log is not None:
        env["XELM_KILL_LOG"] = str(log)
    command = [sys.executable, str(KILLPOINT), str(n), "--", *map(str, args)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    return done.returncode


def _events(log: Path) -> list[tuple[str, str]]:
    """(event, paths) of each audited write, in order; the N-th is ``[N - 1]``."""
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    return [(row[1], row[2]) for row in rows]


@pytest.mark.parametrize("command", ["branch", "unpack"])
def test_the_manifest_is_the_last_file_a_writer_puts_in_its_temporary(
    pool: Path, tmp_path: Path, command: str
) -> None:
    """The audited writes of an uninterrupted run: xelm.json appears (renamed from a
    temporary name) after every other file, and right before the folder's own rename."""
    watched = tmp_path / "watched"
    watched.mkdir()
    if command == "branch":
        shutil.copytree(pool / "e0", watched / "en")
        args: tuple[object, ...] = ("bundle", "branch", watched / "en", "-o", watched / "tr")
    else:
        archive = pack_bundle(pool / "e0", tmp_path / "e0.xelm.tar.zst")
        args = ("bundle", "unpack", archive, "-o", watched / "tr")
    log = tmp_path / "events.log"
    assert _killpoint(0, watched, log, *args) == 0
    events = _events(log)
    renamed = [i for i, (event, _) in enumerate(events) if event == "os.rename"]
    manifest, folder = renamed[-2:]
    assert events[manifest][1].endswith(f"/{MANIFEST_NAME}") and ".partial/" in events[manifest][1]
    assert events[folder][1].endswith(f".partial -> {watched / 'tr'}")
    assert manifest == folder - 1
    touched = [path for _, path in events[:manifest]]
    assert not any(path.endswith(f"/{MANIFEST_NAME}") for path in touched), touched
    assert verify_bundle(watched / "tr") == []


def test_a_killed_writer_leaves_no_manifest_and_its_temporary_is_no_bundle(
    pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed at any of its last writes, branch leaves a hidden temporary with no xelm.json;
    killed at the folder's rename itself, the complete temporary it leaves is never taken
    for a bundle: not by lineage, --from, find_bundles nor verify."""
    kp = tmp_path / "kp"
    shutil.copytree(pool / "e0", kp / "en")
    args = ("bundle", "branch", kp / "en", "--langs", "tr", "-o", kp / "tr")
    log = tmp_path / "events.log"
    assert _killpoint(0, kp, log, *args) == 0
    events = _events(log)
    folder_rename = max(i for i, (event, _) in enumerate(events) if event == "os.rename") + 1
    shutil.rmtree(kp / "tr")
    for n in range(folder_rename - 4, folder_rename + 1):
        for left in kp.glob(".tr.*"):
            shutil.rmtree(left) if left.is_dir() else left.unlink()
        assert _killpoint(n, kp, None, *args) == -9, n
        temporaries = list(kp.glob(".tr.*.partial"))
        assert len(temporaries) == 1 and not (kp / "tr").exists()
        has_manifest = (temporaries[0] / MANIFEST_NAME).exists()
        assert has_manifest == (n == folder_rename), n
    partial = temporaries[0]
    assert [b.path for b in find_bundles([kp], deep=True)] == [kp / "en"]
    code, out, err = xelm(capsys, "bundle", "lineage", kp, "--json")
    assert code == 0, err
    assert {node["path"] for node in json.loads(out)["nodes"]} == {str(kp / "en"), None}
    err = refused(
        capsys, "bundle", "branch", "--from", kp, "--donor", "tr", "--lang", "az",
        "-o", tmp_path / "az",
    )  # fmt: skip
    assert "no bundle in the pool covers donor language 'tr'" in err and "partial" not in err
    code, out, _ = xelm(capsys, "bundle", "verify", partial)
    assert code == 4 and "a writer's temporary folder" in out
    assert _killpoint(0, kp, None, *args) == 0  # the next writer takes the temporary away
    assert not list(kp.glob(".tr.*")) and verify_bundle(kp / "tr") == []


# ------------------------------------------------------------------ 4. several chat templates


def test_a_tokenizer_with_several_chat_templates_makes_a_bundle(
    tmp_path: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    templates = {
        "default": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
        "tool_use": "{{ messages[0]['content'] }} with tools",
    }
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = templates
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = tmp_path / "hf"
    AutoModelForCausalLM.from_config(config).save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    assert (hf / "additional_chat_templates").is_dir()  # what transformers writes by default

    out = tmp_path / "seed"
    code, _, err = xelm(capsys, "bundle", "init", "--hf", hf, "--langs", "en", "-o", out)
    assert code == 0, err
    assert all(path.is_file() for path in out.iterdir())
    assert verify_bundle(out) == []
    loaded = Bundle.open(out).load_tokenizer()
    assert loaded.chat_template == templates
    messages = [{"role": "user", "content": "merhaba"}]
    assert loaded.apply_chat_template(messages, tokenize=False) == "merhaba"
    chat = loaded.apply_chat_template(messages, tokenize=False, chat_template="tool_use")
    assert chat == "merhaba with tools"


# ------------------------------------------------------------------ 5. verify: the spec's rules


def _resealed(source: Path, copy: Path, edit: Callable[[dict[str, Any], Path], None]) -> Path:
    """A copy of ``source`` whose manifest ``edit`` changed (its files too, maybe), then
    sealed as a writer would: each listed file with its digest, a correct content_digest."""
    shutil.copytree(source, copy)
    for path in copy.iterdir():
        path.chmod(0o644)
    data = json.loads((copy / MANIFEST_NAME).read_text())
    edit(data, copy)
    data["files"] = {
        name: {"sha256": sha256_file(copy / name), "size": (copy / name).stat().st_size}
        for name in sorted(data["files"])
    }
    data["content_digest"] = content_digest(data)
    (copy / MANIFEST_NAME).write_text(json.dumps(data, indent=2))
    return copy


@pytest.fixture
def merged(pool: Path, tmp_path: Path) -> Path:
    return merge_average([pool / "e0", pool / "e1"], tmp_path / "merged").path


def test_verify_fails_bundles_that_break_the_specs_rules(
    pool: Path, merged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bundles valid against the schema, with a correct content_digest and every file's
    digest, that break a MUST of the spec: verify exits 4 naming each problem."""
    import torch

    def pickle_listed(data: dict[str, Any], copy: Path) -> None:
        torch.save({"x": torch.zeros(1)}, copy / "pytorch_model.bin")
        data["files"]["pytorch_model.bin"] = {}

    def lineage_reversed(data: dict[str, Any], copy: Path) -> None:
        data["lineage"] = [data["lineage"][1], data["lineage"][0]]

    def weights(values: list[float]) -> Callable[[dict[str, Any], Path], None]:
        def edit(data: dict[str, Any], copy: Path) -> None:
            data["lineage"][-1]["weights"] = values

        return edit

    def card_unlisted(data: dict[str, Any], copy: Path) -> None:
        (copy / "README.md").unlink()
        del data["files"]["README.md"]

    e0 = pool / "e0"
    cases = {
        "pickle": (e0, pickle_listed, ["files/pytorch_model.bin: a pickle-based file"]),
        "lineage": (
            e0,
            lineage_reversed,
            [
                "lineage/0: the first step is 'branch', not 'init' (spec 3.2)",
                "lineage/1: 'init' after the first step (spec 3.2)",
            ],
        ),
        "count": (merged, weights([1.0]), ["lineage/2/weights: 1 weight(s) for 2 parents"]),
        "sum": (merged, weights([0.5, 0.6]), ["lineage/2/weights: they sum to 1.1, not 1"]),
        "card": (e0, card_unlisted, ["files: README.md, the model card, is not listed (spec 6)"]),
    }
    for name, (source, edit, expected) in cases.items():
        bundle = _resealed(source, tmp_path / name, edit)
        assert not Bundle.read(bundle).manifest.edited  # sealed: only the rules can tell
        problems = verify_bundle(bundle)
        assert len(problems) == len(expected), (name, problems)
        for problem, start in zip(problems, expected, strict=True):
            assert problem.startswith(start), (name, problems)
        code, out, err = xelm(capsys, "bundle", "verify", bundle)
        assert code == 4 and "1 of 1 bundles failed verification" in err, (name, err)
        assert out.count("FAIL") == len(expected), out
    assert verify_bundle(merged) == [] and verify_bundle(e0) == []


def test_verify_reports_rule_and_file_problems_together_in_the_documented_order(
    pool: Path, tmp_path: Path
) -> None:
    """A rule broken in the manifest does not hide the file problems after it."""

    def both(data: dict[str, Any], copy: Path) -> None:
        del data["files"]["README.md"]  # unlisted, but still there

    bundle = _resealed(pool / "e0", tmp_path / "both", both)
    assert verify_bundle(bundle) == [
        "files: README.md, the model card, is not listed (spec 6)",
        "README.md: not listed in the manifest",
    ]


def test_train_refuses_a_bad_output_before_it_trains(
    pool: Path, train_shards: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`xelm train` meets the writers' check before its first step (it met it in write_bundle,
    after the whole run): an output inside a bundle, or replacing its input, is refused at
    once, and no lock file lands in the bundle."""
    e0 = pool / "e0"
    before = contents(e0)
    train = ("train", e0, "--data", train_shards, "--tokens", "1K", "--block-size", "32")
    err = refused(capsys, *train, "-o", e0 / "child")
    assert f"inside the bundle {e0}" in err
    err = refused(capsys, *train, "-o", e0, "--force")
    assert f"{e0} is {e0}, which this command reads" in err
    err = refused(capsys, *train, "-o", pool, "--force")
    assert f"{pool} holds {e0}, which this command reads" in err
    assert "step " not in capsys.readouterr().err
    assert contents(e0) == before and (pool / "notes.txt").read_text() == "keep me"
