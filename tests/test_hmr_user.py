"""Adding a language (HMR) as a user meets it: which bundle the pool's donor is, what the
command says it branched, what to run next, and whole lines when the output is piped."""

import glob
import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA, xelm

from xelm_cli.bundle.branching import branch
from xelm_cli.bundle.merging import merge_average
from xelm_cli.bundle.seed import init_from_config
from xelm_cli.bundle.store import Bundle
from xelm_cli.common.digest import short


@pytest.fixture
def runs(tmp_path: Path, tokenizer_dir: Path) -> Path:
    """``runs/dense`` beside a directory of experts ``runs/experts/{e0: ru,en; e1: tr,ar}``, as
    a run leaves them: a pool read one level deep from ``runs/`` sees only the dense bundle."""
    seed = init_from_config("tiny", tokenizer_dir, tmp_path / "seed", languages=["en", "tr"])
    runs = tmp_path / "runs"
    branch(seed.path, runs / "dense", languages="en,tr,ar,ru", role="dense")
    branch(seed.path, runs / "experts" / "e0", languages="ru,en")
    branch(seed.path, runs / "experts" / "e1", languages="tr,ar")
    return runs


def test_a_pool_where_only_a_dense_bundle_covers_the_donor_is_refused(
    runs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "branches" / "x4"
    result = xelm("bundle", "branch", "--from", runs, "--donor", "ru", "--lang", "pl", "-o", out,
                  sites=[])  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "no expert covers donor language 'ru'" in result.stderr
    assert f"{runs / 'dense'} (dense: en,tr,ar,ru)" in result.stderr  # what the pool held
    assert f"--from {runs / 'experts'}," in result.stderr  # the way out: the experts ...
    assert f"xelm bundle branch {runs / 'dense'} --langs pl -o {out}" in result.stderr  # or this
    assert not out.exists()

    result = xelm("bundle", "branch", "--from", runs / "experts", "--donor", "ru", "--lang", "pl",
                  "-o", out, sites=[])  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert Bundle.read(out).manifest.parents == [Bundle.read(runs / "experts" / "e0").ref]


def test_the_donors_expert_comes_before_a_dense_bundle_that_covers_it(
    runs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pl"
    result = xelm("bundle", "branch", "--from", runs, "--from", runs / "experts", "--donor", "ru",
                  "--lang", "pl", "-o", out, "--json", sites=[])  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["donor_bundle"] == str(runs / "experts" / "e0")


def test_the_command_says_which_bundle_it_branched(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "branches" / "az"
    args = ["bundle", "branch", "--from", runs / "experts", "--donor", "tur", "--lang", "az"]
    text = xelm(*args, "-o", out, sites=[])
    assert text.returncode == 0, text.stderr
    donor_expert = runs / "experts" / "e1"
    assert f"wrote expert bundle {out}" in text.stdout
    assert f"branched from {donor_expert}, the expert of donor language tr (tr, ar)" in text.stdout
    assert text.stderr == (  # the fixture's experts are branches, never trained
        f"xelm: note: {donor_expert} has not been trained since its branch: the new expert "
        "starts from its parent's weights, not a trained donor's (train it first: xelm train "
        f"{donor_expert} --data SHARDS --tokens N -o TRAINED)\n"
    )

    record = json.loads(xelm(*args, "-o", out, "--force", "--json", sites=[]).stdout)
    written = Bundle.read(out)
    assert record == {
        "path": str(out),
        "id": written.id,
        "name": "az",
        "digest": written.digest,
        "role": "expert",
        "languages": ["az"],
        "relation": "hmr-branch",
        "donor": "tr",
        "donor_bundle": str(donor_expert),
    }
    assert written.manifest.parents == [Bundle.read(donor_expert).ref]


def test_the_next_step_the_help_names_trains_and_ensembles_the_branch(
    tmp_path: Path, seed_bundle: Path, train_shards: Path
) -> None:
    """``branch --help`` says to train the branch and ensemble it; those commands, as written
    there (tiny sizes), run: a ru expert from the tr expert, trained on ru, scored with the rest."""
    help_text = " ".join(xelm("bundle", "branch", "--help", sites=[]).stdout.split())
    assert "xelm train branches/az --data shards/ --tokens 20M -o experts/az;" in help_text
    assert "xelm ensemble eval experts/* --router language --data DIR" in help_text

    experts = tmp_path / "experts"
    branch(seed_bundle, experts / "e1", languages="tr,ar")
    branched = tmp_path / "branches" / "ru"
    result = xelm("bundle", "branch", "--from", experts, "--donor", "tr", "--lang", "ru",
                  "-o", branched, sites=[])  # fmt: skip
    assert result.returncode == 0, result.stderr
    result = xelm("train", branched, "--data", train_shards, "--tokens", "256", "--block-size",
                  "64", "--batch-size", "2", "--device", "cpu", "-o", experts / "ru",
                  sites=[], timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert Bundle.read(experts / "ru").manifest.training["tokens"] == 256
    members = sorted(glob.glob(f"{experts}/*"))  # as the shell globs experts/*: no .ru.ckpt
    result = xelm("ensemble", "eval", *members, "--router", "language", "--data",
                  SHARED_DATA / "eval" / "flores200-devtest", "--langs", "ru,tr", "--limit", "2",
                  "--format", "json", "--device", "cpu", sites=[], timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    routing = json.loads(result.stdout)["systems"][0]["routing"]
    assert routing == {"ru": [0.0, 1.0], "tr": [1.0, 0.0]}  # e1 holds tr, the trained ru holds ru


LONG = "a-merged-bundle-whose-name-alone-is-longer-than-a-terminal-" + "x" * 130


def test_piped_lineage_and_inspect_keep_whole_lines(runs: Path, tmp_path: Path) -> None:
    experts = runs / "experts"
    merged = merge_average([experts / "e0", experts / "e1"], tmp_path / "merged" / LONG)
    lineage = xelm("bundle", "lineage", experts, merged.path, sites=[])  # stdout is a pipe
    assert lineage.returncode == 0, lineage.stderr
    whole = f"{LONG} dense ['ru', 'en', 'tr', 'ar'] merge {short(merged.digest)}"
    assert any(line.endswith(whole) for line in lineage.stdout.splitlines())

    inspect = xelm("bundle", "inspect", merged.path, sites=[])
    assert inspect.returncode == 0, inspect.stderr
    lines = inspect.stdout.splitlines()
    assert any(str(merged.path) in line for line in lines)
    assert any(merged.digest in line for line in lines)


def test_a_pool_of_branches_and_the_experts_trained_from_them_gives_the_trained_expert(
    seed_bundle: Path, train_shards: Path, tmp_path: Path
) -> None:
    """A demo's X-ELM directory holds each expert's untrained branch beside the expert trained
    from it (typology-k4/branch-0, expert-0), both covering the donor: --from that directory
    branches the trained expert, the one whose line holds the other."""
    from xelm_cli.api import train

    pool = tmp_path / "typology-k2"
    branch(seed_bundle, pool / "branch-0", languages="ru,en")
    branch(seed_bundle, pool / "branch-1", languages="tr,ar")
    trained = train(pool / "branch-0", data=train_shards, tokens=256, output=pool / "expert-0",
                    block_size=32, batch_size=4, device="cpu")  # fmt: skip
    out = tmp_path / "pl"
    result = xelm("bundle", "branch", "--from", pool, "--donor", "ru", "--lang", "pl", "-o", out,
                  "--json", sites=[])  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["donor_bundle"] == str(pool / "expert-0")
    assert Bundle.read(out).manifest.parents == [trained.ref]
    # two experts of the donor, neither trained from the other, are still refused
    branch(seed_bundle, pool / "another", languages="ru")
    result = xelm("bundle", "branch", "--from", pool, "--donor", "ru", "--lang", "pl", "-o", out,
                  "--force", sites=[])  # fmt: skip
    assert result.returncode == 2 and "several bundles cover donor language 'ru'" in result.stderr
