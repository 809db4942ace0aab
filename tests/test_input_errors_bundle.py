"""Bad input to the bundle commands (and the writers that guard bundles) is refused in one line
that names the way out, before any work: each case once failed later, or with a misleading line."""

import json
import os
import shutil
from pathlib import Path

import pytest
from cli_helpers import xelm
from conftest import SHARED_DATA

from xelm_cli.bundle.archive import pack_bundle, unpack_bundle
from xelm_cli.bundle.branching import branch
from xelm_cli.common.errors import ArchiveError, UsageError
from xelm_cli.common.outputs import enclosing_bundle
from xelm_cli.data.fetch import fetch


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))}


def _one_line_error(capsys: pytest.CaptureFixture[str], *args: object, code: int = 2) -> str:
    exit_code, out, err = xelm(capsys, *args)
    assert (exit_code, out) == (code, ""), err
    assert err.startswith("xelm: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> Path:
    """A small shards folder (60 training documents of each test language)."""
    from corpus_helpers import corpus_slice

    from xelm_cli.data.prepare import prepare

    root = tmp_path_factory.mktemp("input-shards")
    prepare(corpus_slice("train", 60, root / "corpus"), seed_bundle, root / "shards")
    return root / "shards"


# --- 1. the output guard checks the bundle folder itself ------------------------------------


def test_fetch_into_a_bundle_itself_is_refused(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path
) -> None:
    before = _tree(seed_bundle)
    with pytest.raises(UsageError, match=r"is a bundle: the data would be written into it"):
        fetch(seed_bundle, ["en"], 1000)
    err = _one_line_error(capsys, "data", "fetch", "--langs", "en", "--size", "1K", "-o",
                          seed_bundle)  # fmt: skip
    assert f"{seed_bundle} is a bundle: the data would be written into it" in err
    assert "write it somewhere else" in err
    assert _tree(seed_bundle) == before


def test_the_guard_sees_the_folder_itself_only_where_asked(seed_bundle: Path) -> None:
    assert enclosing_bundle(seed_bundle) is None  # a writer that replaces it whole (--force)
    assert enclosing_bundle(seed_bundle, itself=True) == seed_bundle.resolve()
    assert enclosing_bundle(seed_bundle / "x") == seed_bundle.resolve()


def test_a_bundle_writer_still_replaces_a_bundle_with_force(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "e0"
    branch(seed_bundle, out, languages=["en"])
    code, _, err = xelm(capsys, "bundle", "branch", seed_bundle, "--langs", "tr", "-o", out,
                        "--force")  # fmt: skip
    assert code == 0, err
    assert json.loads((out / "xelm.json").read_text())["languages"] == ["tr"]


# --- 2. xelm train --role is one of the bundle roles, checked before training ---------------


def test_train_refuses_an_unknown_role_before_training(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, shards: Path, tmp_path: Path
) -> None:
    out = tmp_path / "trained"
    err = _one_line_error(capsys, "train", seed_bundle, "--data", shards, "--tokens", "256",
                          "--block-size", "32", "--batch-size", "2", "--role", "bogus",
                          "-o", out)  # fmt: skip
    assert "option 'role' must be one of seed, expert, dense, not 'bogus'" in err
    assert sorted(os.listdir(tmp_path)) == []  # no bundle, no checkpoints to block a rerun
    from xelm_trainer.options import TrainOptions

    with pytest.raises(UsageError, match="choose one of seed, expert, dense"):
        TrainOptions(role="bogus").check()


# --- 3. bundle moe --calibration-limit -------------------------------------------------------


def test_moe_refuses_a_calibration_limit_below_one(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, tmp_path: Path
) -> None:
    experts = [tmp_path / "e-en", tmp_path / "e-tr"]
    for path, lang in zip(experts, ("en", "tr"), strict=True):
        branch(seed_bundle, path, languages=[lang])
    calibration = SHARED_DATA / "corpus" / "valid"
    for limit in ("-1", "0"):
        err = _one_line_error(capsys, "bundle", "moe", *experts, "--gate", "language",
                              "--calibration", calibration, "--calibration-limit", limit,
                              "-o", tmp_path / "moe")  # fmt: skip
        assert f"--calibration-limit must be at least 1 (got {limit})" in err
    assert not (tmp_path / "moe").exists()


# --- 4. bundle init --hf: a path that is no model directory ----------------------------------


@pytest.mark.parametrize("given", ["./nonexist", "{tmp}/nonexist/model", "nonexist/"])
def test_init_hf_refuses_a_missing_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, given: str
) -> None:
    os.chdir(tmp_path)
    model = given.format(tmp=tmp_path)
    err = _one_line_error(capsys, "bundle", "init", "--hf", model, "--langs", "en", "-o", "x")
    assert f"model directory not found: {model}; pass a Hugging Face model directory" in err
    assert "Repo id" not in err and not (tmp_path / "x").exists()


def test_init_hf_refuses_a_folder_without_config(
    capsys: pytest.CaptureFixture[str], shards: Path, seed_bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "x"
    err = _one_line_error(capsys, "bundle", "init", "--hf", shards, "--langs", "en", "-o", out)
    assert f"{shards} is not a model directory (no config.json; it is xelm shards, made by" in err
    (tmp_path / "empty").mkdir()
    err = _one_line_error(capsys, "bundle", "init", "--hf", tmp_path / "empty", "--langs", "en",
                          "-o", out)  # fmt: skip
    assert "is not a model directory (no config.json); pass a Hugging Face model" in err
    (tmp_path / "experts").mkdir()
    (tmp_path / "experts" / "seed").symlink_to(seed_bundle)
    err = _one_line_error(capsys, "bundle", "init", "--hf", tmp_path / "experts", "--langs", "en",
                          "-o", out)  # fmt: skip
    assert "(no config.json; it is a folder of xelm bundles); pass a Hugging Face model" in err
    assert not out.exists()


# --- 5. bundle init --tokenizer: the check data prepare makes --------------------------------


def test_init_config_refuses_a_folder_without_a_tokenizer(
    capsys: pytest.CaptureFixture[str], shards: Path, tmp_path: Path
) -> None:
    said = (
        f"{shards} is not a tokenizer directory (no tokenizer.json, vocabulary or sentencepiece "
        "model); train one with `xelm data tokenizer` or pass a bundle"
    )
    err = _one_line_error(capsys, "bundle", "init", "--config", "tiny", "--tokenizer", shards,
                          "--langs", "en", "-o", tmp_path / "x")  # fmt: skip
    assert said in err and "Couldn't instantiate" not in err
    corpus = SHARED_DATA / "corpus" / "valid"
    err = _one_line_error(capsys, "data", "prepare", corpus, "--tokenizer", shards, "-o",
                          tmp_path / "s")  # fmt: skip
    assert said in err  # the same words as data prepare
    assert not (tmp_path / "x").exists()


# --- 6. bundle unpack: a bundle folder, another kind of file, --max-size ---------------------


def test_unpack_says_a_bundle_folder_is_usable_as_it_is(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, tmp_path: Path
) -> None:
    err = _one_line_error(capsys, "bundle", "unpack", seed_bundle, "-o", tmp_path / "un")
    assert f"{seed_bundle} is a bundle folder, not an archive: use it as it is" in err
    assert not (tmp_path / "un").exists()


def test_unpack_refuses_a_file_that_is_no_zstd_archive(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    allocation = tmp_path / "alloc.json"
    allocation.write_text('{"format": "xelm-allocation-v1"}\n')
    err = _one_line_error(capsys, "bundle", "unpack", allocation, "-o", tmp_path / "un", code=5)
    assert f"{allocation} is not a .xelm.tar.zst archive (it does not start as zstd" in err
    assert "Unknown frame descriptor" not in err and "`xelm bundle pack BUNDLE`" in err
    with pytest.raises(ArchiveError, match=r"not a \.xelm\.tar\.zst archive"):
        unpack_bundle(allocation, tmp_path / "un")
    assert sorted(os.listdir(tmp_path)) == ["alloc.json"]


def test_unpack_over_max_size_names_the_option(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, tmp_path: Path
) -> None:
    archive = pack_bundle(seed_bundle, tmp_path / "seed.xelm.tar.zst")
    err = _one_line_error(capsys, "bundle", "unpack", archive, "--max-size", "1K", "-o",
                          tmp_path / "un", code=5)  # fmt: skip
    assert "over the limit of 1000 bytes: pass a larger --max-size" in err
    assert not (tmp_path / "un").exists()


# --- 7. xelm bundle --help has an example ---------------------------------------------------


def test_bundle_group_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = xelm(capsys, "bundle", "--help")
    assert code == 0 and "Example: xelm bundle branch seed/" in out


# --- 8. a pool or a bundle that is something else says what and where -----------------------


def test_branch_from_a_folder_without_bundles_names_it(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, shards: Path, tmp_path: Path
) -> None:
    err = _one_line_error(capsys, "bundle", "branch", "--from", shards, "--donor", "tr",
                          "--lang", "az", "-o", tmp_path / "az")  # fmt: skip
    assert f"--from {shards}: no bundles there (it is xelm shards, made by" in err
    assert "pass the experts' bundles or the folder that holds them" in err
    deep = tmp_path / "runs" / "experts"
    deep.mkdir(parents=True)
    shutil.copytree(seed_bundle, deep / "seed")
    err = _one_line_error(capsys, "bundle", "branch", "--from", tmp_path / "runs", "--donor",
                          "tr", "--lang", "az", "-o", tmp_path / "az")  # fmt: skip
    assert f"its bundles lie deeper: pass the folder that holds them (e.g. --from {deep})" in err
    assert not (tmp_path / "az").exists()


def test_a_non_bundle_says_what_it_is(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, shards: Path, tmp_path: Path
) -> None:
    err = _one_line_error(capsys, "bundle", "inspect", shards)
    assert f"not a bundle: {shards} has no xelm.json (it is xelm shards, made by" in err
    archive = pack_bundle(seed_bundle, tmp_path / "seed.xelm.tar.zst")
    err = _one_line_error(capsys, "bundle", "inspect", archive)
    assert f"`xelm bundle unpack {archive} -o DIR` unpacks it" in err


def test_a_global_batch_that_ranks_cannot_share_names_the_ranks_that_can() -> None:
    """A checkpoint of 3 blocks a step resumed on 2 ranks with its --global-batch: the refusal
    gave no way out (no --batch-size makes a micro-batch of 2 ranks divide 3 blocks)."""
    from xelm_trainer.options import TrainOptions

    with pytest.raises(UsageError) as refused:
        TrainOptions(block_size=128, batch_size=3, global_batch_tokens=384, world_size=2).check()
    assert str(refused.value) == (
        "--global-batch 384 must be a multiple of one micro-batch (--batch-size x --block-size x "
        "2 ranks = 768 tokens); its 3 blocks of --block-size 128 cannot be shared by 2 ranks: "
        "run on a number of ranks that divides 3"
    )
