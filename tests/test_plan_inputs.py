"""`xelm plan` checks its inputs when it runs; `xelm train-all` runs a plan in the directory it
was made in, wherever it starts, and reports what became of each run with --json."""

import json
import os
from pathlib import Path

import pytest
from conftest import train_tokenizer
from test_train import corpus_slice

from xelm_cli.bundle.store import verify_bundle
from xelm_cli.cli import run
from xelm_cli.cluster.allocation import write_allocation
from xelm_cli.data.prepare import prepare

TRAIN_ARGS = "--block-size 32 --batch-size 4"


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    prepare(corpus_slice("train", 100, root / "corpus"), seed_bundle, root / "shards")
    return root / "shards"


def xelm(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def make_plan_in(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    folder: Path,
    seed: Path,
    shards: Path,
) -> Path:
    """`cd FOLDER && xelm plan ... --json > plan.json` with paths relative to FOLDER."""
    folder.mkdir()
    monkeypatch.chdir(folder)
    write_allocation(folder / "alloc.json", clusterer="typology", experts=[["en"], ["tr"]])
    code, stdout, stderr = xelm(
        capsys, "plan", "--budget", "512", "--allocation", "alloc.json",
        "--seed-bundle", os.path.relpath(seed), "--data", os.path.relpath(shards), "-o", "runs",
        "--train-args", TRAIN_ARGS, "--json",
    )  # fmt: skip
    assert code == 0, stderr
    assert json.loads(stdout)["directory"] == str(folder)
    (folder / "plan.json").write_text(stdout)
    return folder / "plan.json"


def test_train_all_runs_a_plan_in_the_directory_it_was_made_in(
    capsys: pytest.CaptureFixture[str],
    seed_bundle: Path,
    shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plan made in b/ with relative paths, run in turn from its parent (as a SLURM job may
    start elsewhere): every run trains under b/, nothing is written in the parent; run again
    from a third folder, every run is found done."""
    make_plan_in(capsys, monkeypatch, tmp_path / "b", seed_bundle, shards)
    monkeypatch.chdir(tmp_path)
    code, _, stderr = xelm(capsys, "train-all", "b/plan.json")
    assert code == 0, stderr
    runs = tmp_path / "b" / "runs"
    for bundle in ("experts/expert-0", "experts/expert-1", "dense"):
        assert verify_bundle(runs / bundle) == [], bundle
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]

    (tmp_path / "c").mkdir()
    monkeypatch.chdir(tmp_path / "c")
    code, stdout, _ = xelm(capsys, "train-all", "../b/plan.json", "--dry-run")
    assert code == 0 and stdout.count("skip (done)") == 5  # two branches, three trainings
    code, stdout, stderr = xelm(capsys, "train-all", "../b/plan.json", "--json")
    assert code == 0, stderr
    assert [(o["name"], o["status"]) for o in json.loads(stdout)] == [
        ("expert-0", "skipped"), ("expert-1", "skipped"), ("dense", "skipped"),
    ]  # fmt: skip
    assert "skip (done): dense" in stderr  # the progress lines stay on stderr
    assert os.listdir(tmp_path / "c") == []


def test_train_all_json_reports_each_run_and_still_fails_in_one_line(
    capsys: pytest.CaptureFixture[str],
    seed_bundle: Path,
    shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--json prints run_plan's outcomes (one run broken: it fails, the others are done), the
    runs logging under the plan's directory, started elsewhere; the exit code and the error
    line are those without --json."""
    plan_file = make_plan_in(capsys, monkeypatch, tmp_path / "a", seed_bundle, shards)
    plan = json.loads(plan_file.read_text())
    trained = plan["runs"][1]["commands"][1]
    trained[trained.index("--block-size") + 1] = "1"  # refused: a block is at least 2 tokens
    plan_file.write_text(json.dumps(plan))
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = xelm(capsys, "train-all", "a/plan.json", "--json")
    assert code == 1
    outcomes = {o["name"]: o for o in json.loads(stdout)}
    assert {name: o["status"] for name, o in outcomes.items()} == {
        "expert-0": "done", "expert-1": "failed", "dense": "done",
    }  # fmt: skip
    logs = tmp_path / "a" / "runs" / "logs"
    assert outcomes["expert-1"]["code"] == 2
    assert outcomes["expert-1"]["log"] == str(logs / "expert-1.log")
    assert outcomes["dense"]["ended"] >= outcomes["dense"]["started"] > 0
    assert outcomes["dense"]["devices"] is None
    assert sorted(p.name for p in logs.iterdir()) == ["dense.log", "expert-0.log", "expert-1.log"]
    assert verify_bundle(tmp_path / "a" / "runs" / "dense") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    assert stderr.splitlines()[-1].startswith("xelm: error: 1 of 3 runs failed: expert-1")
    code, stdout, stderr = xelm(capsys, "train-all", plan_file, "--json", "--dry-run")
    assert code == 2 and stdout == "" and "pick one" in stderr


def test_a_plan_whose_directory_is_not_here_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plan = tmp_path / "plan.json"
    gone = str(tmp_path / "elsewhere")
    plan.write_text(json.dumps({"format": "xelm-train-plan", "directory": gone, "runs": []}))
    for extra in ([], ["--dry-run"], ["--parallel", "2"]):
        code, stdout, stderr = xelm(capsys, "train-all", plan, *extra)
        assert code == 2 and stdout == "" and stderr.count("\n") == 1, extra
        assert f"the plan's directory {gone!r} (where `xelm plan` ran) is not on this" in stderr
        assert "make the plan again here" in stderr


@pytest.fixture(scope="module")
def english(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> Path:
    """Held-out English shards only, with the seed's tokenizer."""
    root = tmp_path_factory.mktemp("english")
    prepare(corpus_slice("valid", 20, root / "corpus"), seed_bundle, root / "shards", langs=["en"])
    return root / "shards"


@pytest.fixture(scope="module")
def other_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards made with another tokenizer than the seed's."""
    root = tmp_path_factory.mktemp("other")
    tokenizer = train_tokenizer(root / "tok", vocab_size=300)
    prepare(corpus_slice("valid", 20, root / "corpus"), tokenizer, root / "shards")
    return root / "shards"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no seed", "--seed-bundle: not a bundle: noseed is not a directory; give the bundle"),
        ("seed not a bundle", "--seed-bundle: not a bundle: empty has no xelm.json; give"),
        ("no shards", "--data: not a shards directory: noshards has no shards.json; make them"),
        ("shards not shards", "--data: not a shards directory: empty has no shards.json; make"),
        ("languages", "has no documents in es, bg (it has ar, en, ru, tr); prepare them"),
        ("valid languages", "has no documents in tr (it has en); prepare them"),
        ("tokenizer", "was prepared with"),
    ],
)
def test_plan_refuses_inputs_its_runs_would_fail_on(
    capsys: pytest.CaptureFixture[str],
    seed_bundle: Path,
    shards: Path,
    english: Path,
    other_shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    expected: str,
) -> None:
    """Each refused in one line naming the way out, nothing on stdout, nothing written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    experts = [["en", "es"], ["tr", "bg"]] if case == "languages" else [["en"], ["tr"]]
    write_allocation(tmp_path / "alloc.json", clusterer="typology", experts=experts)
    seed, data, extra = str(seed_bundle), str(shards), []
    if case == "no seed":
        seed = "noseed"
    elif case == "seed not a bundle":
        seed = "empty"
    elif case == "no shards":
        data = "noshards"
    elif case == "shards not shards":
        data = "empty"
    elif case == "valid languages":
        extra = ["--valid", str(english)]
    elif case == "tokenizer":
        data = str(other_shards)
    before = sorted(tmp_path.rglob("*"))
    code, stdout, stderr = xelm(
        capsys, "plan", "--budget", "1M", "--allocation", "alloc.json", "--seed-bundle", seed,
        "--data", data, "-o", "runs", *extra, "--json",
    )  # fmt: skip
    assert code == 2 and stdout == "", stderr
    assert stderr.count("\n") == 1 and expected in stderr, stderr
    assert sorted(tmp_path.rglob("*")) == before
