"""`xelm plan` checks its inputs when it runs; `xelm train-all` runs a plan in the directory it
was made in, wherever it starts, and reports what became of each run with --json."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import xelm
from conftest import SHARED_DATA, train_tokenizer
from corpus_helpers import corpus_slice
from train_helpers import TRAIN_ARGS

from xelm_cli.bundle.moe import build_moe
from xelm_cli.bundle.seed import init_from_hf
from xelm_cli.bundle.store import Bundle, verify_bundle
from xelm_cli.cli import run
from xelm_cli.cluster.allocation import write_allocation
from xelm_cli.common.errors import UsageError
from xelm_cli.data.prepare import prepare
from xelm_cli.data.shards import Shards
from xelm_cli.training.plan_runner import failure_reason, plan_dry_run
from xelm_cli.training.planning import make_plan

RUN = {"name": "dense", "output": "out", "commands": [["xelm", "train", "seed", "-o", "out"]]}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    prepare(corpus_slice("train", 100, root / "corpus"), seed_bundle, root / "shards")
    return root / "shards"


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
    plan = json.loads(stdout)
    assert (plan["format"], plan["format_version"], plan["directory"]) == (
        "xelm-train-plan", 1, str(folder),
    )  # fmt: skip
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
    from a third folder, every run is found done, also once the experts' branches were removed
    to save disk (a run whose own output is trained needs none of the outputs before it)."""
    make_plan_in(capsys, monkeypatch, tmp_path / "b", seed_bundle, shards)
    monkeypatch.chdir(tmp_path)
    code, _, stderr = xelm(capsys, "train-all", "b/plan.json")
    assert code == 0, stderr
    runs = tmp_path / "b" / "runs"
    for bundle in ("experts/expert-0", "experts/expert-1", "dense"):
        assert verify_bundle(runs / bundle) == [], bundle
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]

    shutil.rmtree(runs / "branches")
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
    assert not (runs / "branches").exists()


def test_train_all_refuses_a_bundle_at_a_runs_output_that_the_run_did_not_train(
    capsys: pytest.CaptureFixture[str],
    seed_bundle: Path,
    shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Skipped as done, it would stand for the run in every comparison: a copy of the untrained
    seed, and runs of an earlier plan into the same -o with another budget, seed or allocation
    are refused in one line, in turn and side by side, before any run starts; the plan that
    trained them finds them done."""
    make_plan_in(capsys, monkeypatch, tmp_path / "a", seed_bundle, shards)
    runs = tmp_path / "a" / "runs"

    def refused(plan: str, run: str, only: int, why: str) -> None:
        for extra in ([], ["--json"]):
            code, stdout, stderr = xelm(capsys, "train-all", plan, "--only", only, *extra)
            assert (code, stdout) == (2, ""), (plan, extra)
            assert stderr == (
                f"xelm: error: {runs / run} holds a bundle that run {run.split('/')[-1]} of this "
                f"plan did not train ({why}): remove it and run train-all again, or make the "
                "plan with another -o\n"
            )
        assert not (runs / "logs").exists()  # nothing started

    shutil.copytree(seed_bundle, runs / "dense")
    refused("plan.json", "dense", 2, "it has no training record")
    shutil.rmtree(runs / "dense")
    for only in (0, 2):  # expert-0 (its branch, then its training) and the dense run
        assert xelm(capsys, "train-all", "plan.json", "--only", only)[0] == 0

    def other_plan(name: str, *changes: str) -> str:
        args = ["--budget", "512", "--allocation", "alloc.json", "--seed-bundle",
                os.path.relpath(seed_bundle), *changes]  # fmt: skip
        code, stdout, stderr = xelm(capsys, "plan", *args, "--data", os.path.relpath(shards),
                                    "-o", "runs", "--train-args", TRAIN_ARGS, "--json")  # fmt: skip
        assert code == 0, stderr
        Path(name).write_text(stdout)
        return name

    refused(other_plan("budget.json", "--budget", "1024"), "dense", 2,
            "it was trained on 512 tokens, not 1024")  # fmt: skip
    assert xelm(capsys, "bundle", "branch", seed_bundle, "--langs", "en,tr", "-o", "seed2")[0] == 0
    refused(other_plan("seed.json", "--seed-bundle", "seed2"), "dense", 2,
            "it was not made from seed2")  # fmt: skip
    write_allocation("swapped.json", clusterer="typology", experts=[["tr"], ["en"]])
    swapped = other_plan("swapped.json.plan", "--allocation", "swapped.json")
    refused(swapped, "experts/expert-0", 0, "it is not expert 0 of swapped.json")
    shutil.rmtree(runs / "branches")  # the seed the branch was made from still tells
    refused(other_plan("seed.json", "--seed-bundle", "seed2"), "experts/expert-0", 0,
            "it was not made from seed2")  # fmt: skip
    code, stdout, _ = xelm(capsys, "train-all", "plan.json", "--dry-run")
    assert code == 0 and stdout.count("skip (done)") == 3  # expert-0's two commands, dense


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
    assert outcomes["dense"]["output"] == str(tmp_path / "a" / "runs" / "dense")  # absolute
    assert verify_bundle(outcomes["dense"]["output"]) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    assert stderr.splitlines()[-1].startswith("xelm: error: 1 of 3 runs failed: expert-1")
    code, stdout, stderr = xelm(capsys, "train-all", plan_file, "--json", "--dry-run")
    assert code == 0, stderr
    listing = {run["name"]: run["commands"] for run in json.loads(stdout)}
    assert {name: [c["done"] for c in commands] for name, commands in listing.items()} == {
        "expert-0": [True, True], "expert-1": [True, False], "dense": [True],
    }  # fmt: skip
    assert listing["expert-1"][1]["command"] == trained  # what would run now, as typed
    assert listing == {r["name"]: r["commands"] for r in plan_dry_run(plan_file)}


def test_a_plan_whose_directory_is_not_here_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plan = tmp_path / "plan.json"
    gone = str(tmp_path / "elsewhere")
    plan.write_text(json.dumps({"format": "xelm-train-plan", "directory": gone, "runs": [RUN]}))
    for extra in ([], ["--dry-run"], ["--parallel", "2"]):
        code, stdout, stderr = xelm(capsys, "train-all", plan, *extra)
        assert code == 2 and stdout == "" and stderr.count("\n") == 1, extra
        assert f"the plan's directory {gone!r} (where `xelm plan` ran) is not on this" in stderr
        assert "make the plan again here" in stderr


@pytest.mark.parametrize("version", [None, 1, 2, "2.0.0"])
def test_train_all_refuses_a_plan_of_an_unknown_version_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, version: object
) -> None:
    """A plan without format_version (written before it) is version 1 and runs; another
    version is refused before anything runs."""
    plan_file = tmp_path / "plan.json"
    plan = {"format": "xelm-train-plan", "directory": str(tmp_path), "runs": [RUN]}
    plan_file.write_text(
        json.dumps(plan | ({} if version is None else {"format_version": version}))
    )
    code, stdout, stderr = xelm(capsys, "train-all", plan_file, "--dry-run")
    if version in (None, 1):
        assert (code, stdout, stderr) == (0, "xelm train seed -o out\n", "")
        return
    assert (
        code == 3
        and stdout == ""
        and stderr
        == (
            f"xelm: error: {plan_file}: plan format version {version!r} is not supported by this "
            "xelm (reads 1); upgrade xelm to run it, or make the plan again with this one\n"
        )
    )


def test_train_all_given_a_directory_asks_for_the_plan_file_in_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Not `write one with xelm plan ... --json > DIR` (a shell cannot write to a directory)."""
    code, stdout, stderr = xelm(capsys, "train-all", tmp_path, "--dry-run")
    assert (code, stdout) == (2, "")
    assert stderr == (
        f"xelm: error: {tmp_path} is a directory, not a plan: give the file `xelm plan ... "
        "--json > plan.json` wrote\n"
    )


@pytest.fixture(scope="module")
def made_plan(
    tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path, shards: Path
) -> dict[str, Any]:
    """A plan as `xelm plan --json` writes it (two experts and the dense run), made in a
    folder of its own."""
    folder = tmp_path_factory.mktemp("made-plan")
    write_allocation(folder / "alloc.json", clusterer="typology", experts=[["en"], ["tr"]])
    plan = make_plan(512, folder / "alloc.json", seed_bundle, shards, folder / "runs",
                     train_args=TRAIN_ARGS)  # fmt: skip
    return plan | {"directory": str(folder)}


def renamed(members: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    return {new if name == old else name: value for name, value in members.items()}


def broken_plans(plan: dict[str, Any]) -> dict[str, tuple[dict[str, Any], str]]:
    """Plans that lack, misspell or mistype a member, and how train-all names the problem."""
    first = plan["runs"][0]

    def with_first_run(run: dict[str, Any]) -> dict[str, Any]:
        return plan | {"runs": [run, *plan["runs"][1:]]}

    no_output = {name: value for name, value in first.items() if name != "output"}
    return {
        "runz": (renamed(plan, "runs", "runz"),
                 "plan (top level): unknown member 'runz' (did you mean 'runs'?)"),
        "outptu": (with_first_run(renamed(first, "output", "outptu")),
                   "plan runs/0: unknown member 'outptu' (did you mean 'output'?)"),
        "tokenz": (with_first_run(renamed(first, "tokens", "tokenz")),
                   "plan runs/0: unknown member 'tokenz' (did you mean 'tokens'?)"),
        "no output": (with_first_run(no_output), "plan runs/0: 'output' is a required property"),
        "tokens as text": (with_first_run(first | {"tokens": "2K"}),
                           "plan runs/0/tokens: '2K' is not of type 'integer'"),
        "a command without -o": (
            with_first_run(first | {"commands": [["xelm", "train", "seed"]]}),
            "plan runs/0/commands/0: ['xelm', 'train', 'seed'] does not contain items matching "
            "the given schema",
        ),
        "no runs": (plan | {"runs": []}, "plan runs: [] should be non-empty"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "case", ["runz", "outptu", "tokenz", "no output", "tokens as text", "a command without -o",
             "no runs"]
)  # fmt: skip
@pytest.mark.parametrize("how", [["--dry-run"], ["--parallel", "2"], []])
def test_train_all_refuses_a_plan_with_a_missing_misspelt_or_mistyped_member_in_one_line(
    capsys: pytest.CaptureFixture[str],
    made_plan: dict[str, Any],
    tmp_path: Path,
    case: str,
    how: list[str],
) -> None:
    """The plan is checked when read (spec/train-plan-v1.schema.json, and an unknown member
    close to a known one it lacks is a misspelling), before any run starts, whichever way the
    runs run: one line naming the member and how to make the plan again."""
    plan, problem = broken_plans(made_plan)[case]
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    code, stdout, stderr = xelm(capsys, "train-all", plan_file, *how)
    assert (code, stdout) == (3, ""), stderr
    assert stderr == (
        f"xelm: error: {plan_file}: {problem}; make the plan again with `xelm plan ... --json > "
        f"{plan_file}`\n"
    )
    assert not (Path(made_plan["directory"]) / "runs").exists()


def test_train_all_ignores_a_member_it_does_not_know(
    capsys: pytest.CaptureFixture[str], made_plan: dict[str, Any], tmp_path: Path
) -> None:
    """A member unlike any known one (a newer xelm's, a note) is ignored, as the spec says."""
    plan_file = tmp_path / "plan.json"
    noted = [run | {"note": "from the wiki"} for run in made_plan["runs"]]
    plan_file.write_text(json.dumps(made_plan | {"runs": noted, "comment": "try 1"}))
    code, stdout, stderr = xelm(capsys, "train-all", plan_file, "--dry-run")
    assert code == 0 and stderr == ""
    assert stdout.splitlines()[0].startswith("xelm bundle branch ")


@pytest.fixture(scope="module")
def english(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> Path:
    """Held-out English shards only, with the seed's tokenizer."""
    root = tmp_path_factory.mktemp("english")
    prepare(
        corpus_slice("valid", 20, root / "corpus"), seed_bundle, root / "shards", languages=["en"]
    )
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
        ("no seed", "--seed-bundle: not a bundle: noseed does not exist; give the bundle"),
        ("seed not a bundle", "--seed-bundle: not a bundle: empty has no xelm.json; give"),
        ("no shards", "--data: not a shards directory: noshards does not exist; make them"),
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


@pytest.mark.parametrize(
    ("train_args", "expected"),
    [
        ("--bogus 3 --block-size 64", "`xelm train` has no trainer option --bogus (its options"),
        (
            "--batch-size 4 --block-size 32 --checkpointing",
            "no trainer option --checkpointing (did you mean --gradient-checkpointing? its",
        ),
        ("--valid shards", "--train-args: --valid is the plan's to set (from --valid); drop it"),
        (
            "--block-size 64 --tokens 5000",  # `xelm train` has --tokens: the plan gives it
            "--train-args: --tokens is the plan's to set (each run's tokens come from --budget)",
        ),
        ("--block-size 32 64", "'64' is not a flag; give `xelm train` flags and their values"),
        ("--batch-size", "--train-args: --batch-size needs a value (--batch-size VALUE)"),
        ("--lean-loss=false", "--train-args: --lean-loss takes no value; drop =false"),
        ("--batch-size four", "option 'batch_size' expects int, not 'four'"),
        ("--attention fast", "option 'attention' must be one of auto, sdpa, eager"),
        ("--train-arg lr=x", "option 'lr' expects float, not 'x'"),
        ("--train-arg nope=1", "trainer 'causal-lm' has no option 'nope'"),
        ("--batch-size 0", "--train-args: --batch-size must be at least 1"),
        ("--train-arg block_size=-4", "--train-args: --block-size must be at least 1"),
        ("--lr -1", "--train-args: --lr must be positive and finite, not -1.0"),
        ("--warmup-steps -2", "--train-args: --warmup-steps must not be negative"),
        (
            "--aux-loss 0.1",  # the experts and the dense run are no MoE bundles
            "--train-args: --aux-loss is for MoE bundles, and the experts' and the dense run's "
            "`xelm train` refuse it: drop it (the moe run's is --moe-aux-loss)",
        ),
        ("--train-arg router_only=true", "--train-args: --router-only is for MoE bundles, and"),
        (
            "--role expert",  # the plan gives the dense run --role dense
            "--train-args: --role is the plan's to set (the dense run's is dense, every other "
            "run's its parent's); drop it there",
        ),
        ("--train-arg role=dense", "--train-args: --role is the plan's to set"),
        ("'unterminated", '--train-args "\'unterminated": No closing quotation; quote it'),
    ],
)
def test_plan_refuses_train_args_its_runs_would_fail_on(
    capsys: pytest.CaptureFixture[str],
    seed_bundle: Path,
    shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    train_args: str,
    expected: str,
) -> None:
    """What `xelm train` would refuse in every run (an unknown flag, with the closest one; a
    flag without its value; a bad value) is refused by the plan, in one line, nothing on
    stdout."""
    monkeypatch.chdir(tmp_path)
    write_allocation(tmp_path / "alloc.json", clusterer="typology", experts=[["en"], ["tr"]])
    code, stdout, stderr = xelm(
        capsys, "plan", "--budget", "4K", "--allocation", "alloc.json",
        "--seed-bundle", seed_bundle, "--data", shards, "-o", "runs",
        "--train-args", train_args, "--json",
    )  # fmt: skip
    assert code == 2 and stdout == "", stderr
    assert stderr.count("\n") == 1 and expected in stderr, stderr


def test_plan_takes_every_trainer_flag_form_in_train_args(
    capsys: pytest.CaptureFixture[str],
    seed_bundle: Path,
    shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    write_allocation(tmp_path / "alloc.json", clusterer="typology", experts=[["en"], ["tr"]])
    train_args = (
        "--block-size=32 --batch-size 4 --no-lean-loss --gradient-checkpointing "
        "--train-arg lr=0.01 --train-arg=seed=3 --attention eager"
    )
    code, stdout, stderr = xelm(
        capsys, "plan", "--budget", "4K", "--allocation", "alloc.json",
        "--seed-bundle", seed_bundle, "--data", shards, "-o", "runs",
        "--train-args", train_args, "--json",
    )  # fmt: skip
    assert code == 0, stderr
    estimate = json.loads(stdout)["estimate"]
    assert (estimate["batch_size"], estimate["block_size"]) == (4, 32)
    assert estimate["attention"] == "eager"


def test_make_plan_takes_text_paths_and_budget_and_no_valid(
    seed_bundle: Path, shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From Python as from the command line: str or Path for every path, '4K' or 4000."""
    monkeypatch.chdir(tmp_path)
    write_allocation(tmp_path / "alloc.json", clusterer="typology", experts=[["en"], ["tr"]])
    as_text = make_plan(
        "4K", "alloc.json", str(seed_bundle), str(shards), "runs", train_args=TRAIN_ARGS
    )
    as_paths = make_plan(
        4000, Path("alloc.json"), seed_bundle, shards, Path("runs"), None, TRAIN_ARGS
    )
    assert as_text == as_paths
    assert as_text["budget"] == 4000
    # 2,000 an expert is 15 whole steps of 4 x 32 tokens; dense trains what both experts do
    assert [run["tokens"] for run in as_text["runs"]] == [1920, 1920, 3840]
    with_valid = make_plan(
        4000, "alloc.json", str(seed_bundle), str(shards), "runs", str(shards), TRAIN_ARGS
    )
    dense = with_valid["runs"][2]["commands"][0]
    assert dense[dense.index("--valid") + 1] == str(shards)


def test_a_failed_runs_reason_is_its_attempts_last_error_line(tmp_path: Path) -> None:
    """Not an info line, nor an earlier attempt's error, nor what follows the error."""
    log = tmp_path / "dense.log"
    log.write_text("# first attempt\nxelm: error: disk full\n")
    offset = log.stat().st_size
    with open(log, "a") as file:
        file.write("# 2026-12-01 dense: OMP_NUM_THREADS=1\n$ xelm train seed --tokens 400000\n")
        file.write("xelm: --tokens 400,000 is 781 whole steps of 512 tokens\n")
        file.write("xelm: error: --block-size 1 must be at least 2\n")
        file.write("Exception ignored in atexit callback\n\n")
    assert failure_reason(log, offset) == "xelm: error: --block-size 1 must be at least 2"
    assert failure_reason(log) == "xelm: error: --block-size 1 must be at least 2"
    log.write_text("$ xelm train seed\nTraceback (most recent call last):\nKeyError: 'x'\n")
    assert failure_reason(log) == "KeyError: 'x'"
    log.write_text("")
    assert failure_reason(log) == "(no output)"


def test_an_interrupted_train_all_says_its_runs_were_interrupted_not_failed(
    capsys: pytest.CaptureFixture[str],
    seed_bundle: Path,
    shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGINT to the process group (Ctrl-C, `timeout -s INT`) while two runs train: each is
    reported interrupted (and its log says so), exit 130 with the usual interrupted line."""
    process = _training_in_parallel(capsys, monkeypatch, tmp_path, seed_bundle, shards)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    lines = stderr.splitlines()
    assert "interrupted: dense (a re-run resumes it)" in lines, stderr
    assert "interrupted: expert-0 (a re-run resumes it)" in lines, stderr
    assert "FAILED" not in stderr
    assert lines[-1] == (
        "xelm: error: interrupted (nothing half-written is left): run the same command again"
    )
    dense_log = (tmp_path / "a" / "runs" / "logs" / "dense.log").read_text()
    assert "dense: interrupted: train-all was stopped (a re-run resumes it)" in dense_log
    assert "--resume" not in stderr  # what a run stopped says: see the test below


def test_sigterm_to_train_all_alone_stops_its_runs_too(
    capsys: pytest.CaptureFixture[str],
    seed_bundle: Path,
    shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM to train-all's process only (a scheduler's time limit, `kill`): it stops the
    runs it started (each cleans up as on Ctrl-C: no output lock left) instead of dying and
    leaving them training; exit 143."""
    import psutil

    process = _training_in_parallel(capsys, monkeypatch, tmp_path, seed_bundle, shards)
    runs = psutil.Process(process.pid).children()
    try:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 143, stderr
        assert "interrupted: dense (a re-run resumes it)" in stderr.splitlines(), stderr
        assert stderr.splitlines()[-1] == (
            "xelm: error: terminated (SIGTERM) (nothing half-written is left): run the same "
            "command again"
        )
        assert len(runs) == 2 and not [run for run in runs if run.is_running()]
        assert not list((tmp_path / "a" / "runs").rglob("*.lock"))
    finally:
        for run in runs:
            if run.is_running():
                run.kill()


def _training_in_parallel(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    seed_bundle: Path,
    shards: Path,
) -> "subprocess.Popen[str]":
    """`xelm train-all --parallel 2` (its own session) of a plan in ``tmp_path/a``, once its
    two first runs (dense, expert-0) are training; long enough to stop them."""
    plan_file = make_plan_in(capsys, monkeypatch, tmp_path / "a", seed_bundle, shards)
    plan = json.loads(plan_file.read_text())
    for run_ in plan["runs"]:  # long enough to be running when interrupted
        trained = run_["commands"][-1]
        trained[trained.index("--tokens") + 1] = "40000000"
    plan_file.write_text(json.dumps(plan))
    process = subprocess.Popen(
        [sys.executable, "-m", "xelm_cli", "train-all", str(plan_file), "--parallel", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    logs = tmp_path / "a" / "runs" / "logs"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(
        (logs / f"{name}.log").is_file() and "$ xelm train" in (logs / f"{name}.log").read_text()
        for name in ("dense", "expert-0")
    ):
        time.sleep(0.2)
    time.sleep(2)  # the trainings under way
    return process


def test_a_run_of_train_all_stopped_says_train_all_resumes_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command train-all runs gets the Ctrl-C too: its line must not send the user to its own
    --resume (train-all adds that, and takes no such flag), but back to train-all."""
    from xelm_cli.cli import run
    from xelm_cli.training import cli as training_cli
    from xelm_cli.training.plan_runner import RUN_OF_TRAIN_ALL

    def stopped(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(training_cli, "train_verb", stopped)
    argv = ["train", "seed", "--data", "shards", "--tokens", "1K", "-o", "out"]
    assert run(argv) == 130
    assert capsys.readouterr().err == (
        "xelm: error: interrupted: run the same command with --resume to continue\n"
    )
    monkeypatch.setenv(RUN_OF_TRAIN_ALL, "1")
    assert run(argv) == 130
    assert capsys.readouterr().err == (
        "xelm: error: interrupted: run train-all again to continue this run\n"
    )


def test_a_run_of_train_all_in_turn_stopped_says_train_all_resumes_it(
    capsys: pytest.CaptureFixture[str],
    seed_bundle: Path,
    shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C (SIGINT to the process group) while train-all trains a run in this terminal: the
    training it runs says to run train-all again, not to add --resume (train-all adds it)."""
    plan_file = make_plan_in(capsys, monkeypatch, tmp_path / "a", seed_bundle, shards)
    plan = json.loads(plan_file.read_text())
    trained = plan["runs"][2]["commands"][0]
    trained[trained.index("--tokens") + 1] = "40000000"  # still training when interrupted
    plan_file.write_text(json.dumps(plan))
    process = subprocess.Popen(
        [sys.executable, "-m", "xelm_cli", "train-all", str(plan_file), "--only", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    metrics = tmp_path / "a" / "runs" / ".dense.ckpt" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not metrics.is_file():  # steps under way
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "xelm: error: interrupted: run train-all again to continue this run" in stderr
    assert "--resume" not in stderr


def seed_of(config: Any, tokenizer_of: Path, out: Path) -> Path:
    """A random seed bundle of transformers ``config`` (vocabulary and special tokens filled
    in) with the tokenizer of the bundle ``tokenizer_of``, so shards made for it fit."""
    from transformers import AutoModelForCausalLM

    tokenizer = Bundle.open(tokenizer_of).load_tokenizer()
    config.vocab_size = len(tokenizer)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    AutoModelForCausalLM.from_config(config).save_pretrained(out / "hf")
    tokenizer.save_pretrained(out / "hf")
    return init_from_hf(str(out / "hf"), out / "seed", languages=["en", "tr"]).path


def plan_args(seed: Path, shards: Path, *extra: object, budget: object = "40K") -> list[object]:
    """`xelm plan --json` of the allocation alloc.json in the current directory."""
    return ["plan", "--budget", budget, "--allocation", "alloc.json", "--seed-bundle", seed,
            "--data", shards, "-o", "runs", "--train-args", TRAIN_ARGS, *extra,
            "--json"]  # fmt: skip


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("xglm", "cannot build an MoE model from 'xglm' experts; supported: llama/mistral"),
        ("llama with attention bias", "MixtralForCausalLM has no bias terms but these llama"),
    ],
)
def test_a_moe_plan_whose_experts_bundle_moe_refuses_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str],
    seed_bundle: Path,
    shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    family: str,
    expected: str,
) -> None:
    """What `xelm bundle moe` refuses of the trained experts (the seed's family, or its bias
    terms) is refused by the plan, with bundle moe's own words; the plan without --moe-tokens
    stands."""
    from transformers import LlamaConfig, XGLMConfig

    config = (
        XGLMConfig(d_model=16, ffn_dim=32, num_layers=1, attention_heads=2,
                   max_position_embeddings=64)
        if family == "xglm"
        else LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, attention_bias=True)
    )  # fmt: skip
    seed = seed_of(config, seed_bundle, tmp_path / "seed")
    experts = [tmp_path / "en", tmp_path / "tr"]
    for expert in experts:
        assert run(["bundle", "branch", str(seed), "--langs", expert.name, "-o", str(expert)]) == 0
    with pytest.raises(UsageError) as refused:
        build_moe(experts, tmp_path / "moe")
    assert expected in str(refused.value)
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    write_allocation(tmp_path / "alloc.json", clusterer="typology", experts=[["en"], ["tr"]])
    code, stdout, stderr = xelm(capsys, *plan_args(seed, shards, "--moe-tokens", "8K"))
    assert code == 2 and stdout == "", stderr
    assert stderr == (
        f"xelm: error: --moe-tokens: {refused.value}; drop --moe-tokens to plan the experts "
        "and the dense run only\n"
    )
    code, stdout, stderr = xelm(capsys, *plan_args(seed, shards))
    assert code == 0, stderr
    assert [run["name"] for run in json.loads(stdout)["runs"]] == ["expert-0", "expert-1", "dense"]


def test_moe_calibration_text_bundle_moe_cannot_read_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str],
    seed_bundle: Path,
    shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Missing, or without one of the experts' languages: refused naming --moe-calibration;
    text in each (UDHR, a file per language) is planned as the language gate's."""
    monkeypatch.chdir(tmp_path)
    write_allocation(tmp_path / "alloc.json", clusterer="typology", experts=[["en"], ["tr"]])
    (tmp_path / "english").mkdir()
    shutil.copy(SHARED_DATA / "eval" / "udhr" / "en.txt", tmp_path / "english")
    way_out = (
        "; give held-out labelled text in en, tr (`xelm bundle moe --gate language` reads it), "
        "or drop --moe-calibration for a random gate\n"
    )
    for calibration, reason in [
        ("/nonexistent", "evaluation data not found: /nonexistent"),
        ("english", "english has no documents in tr (it has: en)"),
    ]:
        extra = ["--moe-tokens", "8K", "--moe-calibration", calibration]
        code, stdout, stderr = xelm(capsys, *plan_args(seed_bundle, shards, *extra))
        assert code == 2 and stdout == "", stderr
        assert stderr == f"xelm: error: --moe-calibration: {reason}{way_out}"
    udhr = SHARED_DATA / "eval" / "udhr"
    extra = ["--moe-tokens", "8K", "--moe-calibration", str(udhr)]
    code, stdout, stderr = xelm(capsys, *plan_args(seed_bundle, shards, *extra))
    assert code == 0, stderr
    build = json.loads(stdout)["runs"][-1]["commands"][0]
    assert build[build.index("--gate") :][:4] == ["--gate", "language", "--calibration", str(udhr)]
    alone = ["--moe-calibration", str(udhr)]  # without the MoE run it would do nothing
    code, stdout, stderr = xelm(capsys, *plan_args(seed_bundle, shards, *alone))
    assert (code, stdout) == (2, "")
    assert stderr == (
        "xelm: error: --moe-calibration is for the MoE run: give --moe-tokens too, or drop it\n"
    )
    for given in ("--aux-loss 0.1", "--train-arg aux_loss=0.1"):  # --moe-aux-loss's to give
        extra = ["--moe-tokens", "8K", "--train-args", f"{TRAIN_ARGS} {given}"]
        code, stdout, stderr = xelm(capsys, *plan_args(seed_bundle, shards, *extra))
        assert (code, stdout) == (2, ""), given
        assert stderr == (
            "xelm: error: --train-args: --aux-loss is for MoE bundles, and the experts' and the "
            "dense run's `xelm train` refuse it: drop it (the moe run's is --moe-aux-loss)\n"
        )


def test_a_moe_run_that_would_fail_after_the_experts_is_refused_before_the_plan(
    capsys: pytest.CaptureFixture[str],
    seed_bundle: Path,
    shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An allocation of one expert (the MoE routes each token to 2), and a load-balancing
    weight the moe run's `xelm train` refuses (negative) or the plan cannot hold (NaN, infinity:
    not JSON), are refused in one line before anything is planned."""
    monkeypatch.chdir(tmp_path)
    write_allocation(tmp_path / "alloc.json", clusterer="typology", experts=[["en", "tr"]])
    code, stdout, stderr = xelm(capsys, *plan_args(seed_bundle, shards, "--moe-tokens", "8K"))
    assert (code, stdout) == (2, "")
    assert stderr == (
        "xelm: error: --moe-tokens: the MoE routes each token to 2 of its experts, and the "
        "allocation has 1: give one of 2 experts or more, or drop --moe-tokens\n"
    )
    write_allocation(
        tmp_path / "alloc.json", clusterer="typology", experts=[["en"], ["tr"]], overwrite=True
    )
    for weight in ("-0.5", "nan", "inf"):
        extra = ["--moe-tokens", "8K", "--moe-aux-loss", weight]
        code, stdout, stderr = xelm(capsys, *plan_args(seed_bundle, shards, *extra))
        assert (code, stdout) == (2, ""), weight
        assert stderr == (
            f"xelm: error: --moe-aux-loss must be a number of 0 or more, not {float(weight)}\n"
        )
    extra = ["--moe-tokens", "8K", "--moe-aux-loss", "0"]
    code, stdout, stderr = xelm(capsys, *plan_args(seed_bundle, shards, *extra))
    assert code == 0, stderr
    assert json.loads(stdout)["runs"][-1]["aux_loss"] == 0.0


def test_the_plan_notes_the_runs_that_go_over_their_data_more_than_once(
    capsys: pytest.CaptureFixture[str],
    seed_bundle: Path,
    shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As `xelm train` notes for one run, once for the plan: each run's passes (its tokens
    over the shards' tokens of its languages) in --json, the runs over one on stderr."""
    monkeypatch.chdir(tmp_path)
    write_allocation(tmp_path / "alloc.json", clusterer="typology", experts=[["en"], ["tr"]])
    held = {lang: stats.tokens for lang, stats in Shards.open(shards).stats.items()}
    whole = lambda tokens: tokens // 128 * 128  # noqa: E731 (steps of 4 x 32 tokens)
    # experts just under one pass of the smaller language's tokens
    budget = 2 * min(held["en"], held["tr"]) - 2
    code, stdout, stderr = xelm(capsys, *plan_args(seed_bundle, shards, budget=budget))
    assert code == 0, stderr
    assert stderr == ""
    passes = {run["name"]: run["passes"] for run in json.loads(stdout)["runs"]}
    expert = whole(budget // 2)
    assert passes == pytest.approx({
        "expert-0": expert / held["en"], "expert-1": expert / held["tr"],
        "dense": 2 * expert / (held["en"] + held["tr"]),
    })  # fmt: skip

    # 3 passes of both languages' tokens (whole steps: just under), one the MoE fine-tune's
    budget, moe = 3 * (held["en"] + held["tr"]), held["en"] + held["tr"]
    extra = ["--moe-tokens", moe]
    code, stdout, stderr = xelm(capsys, *plan_args(seed_bundle, shards, *extra, budget=budget))
    assert code == 0, stderr
    expert, tuned = whole((budget - moe) // 2), whole(moe)
    expected = {"expert-0": expert / held["en"], "expert-1": expert / held["tr"],
                "dense": (2 * expert + tuned) / moe, "average": 0.0,
                "moe": tuned / moe}  # fmt: skip
    passes = {run["name"]: run["passes"] for run in json.loads(stdout)["runs"]}
    assert passes == pytest.approx(expected)
    each = ", ".join(f"{name} about {expected[name]:,.1f}" for name in ("expert-0", "expert-1"))
    assert stderr == (
        "xelm: 3 of the plan's runs go over the tokens these shards hold in their languages "
        "more than once (the paper trains one pass: a smaller --budget or more --data keeps to "
        f"it): {each}, dense about {expected['dense']:,.1f} passes\n"
    )


def test_plan_names_nproc_per_node_below_one(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, shards: Path, tmp_path: Path
) -> None:
    """Not the trainer's --world-size, which the user never gave."""
    write_allocation(tmp_path / "alloc.json", clusterer="typology", experts=[["en"], ["tr"]])
    code, stdout, stderr = xelm(
        capsys, "plan", "--budget", "4K", "--allocation", tmp_path / "alloc.json",
        "--seed-bundle", seed_bundle, "--data", shards, "-o", tmp_path / "runs",
        "--nproc-per-node", "0",
    )  # fmt: skip
    assert code == 2 and stdout == ""
    assert "--nproc-per-node must be at least 1, not 0" in stderr and "--world-size" not in stderr
