"""`xelm plan --expert-data 'shards-{expert}/'`: each expert trains on its own shards, as an
allocation that assigns documents (TF-IDF) needs; the dense and moe runs keep --data."""

import json
from pathlib import Path

import pytest
from cli_helpers import xelm
from conftest import SHARED_DATA, TEST_LANGS
from corpus_helpers import corpus_slice, documents_by_expert
from train_helpers import TRAIN_ARGS

from xelm_cli.bundle.store import Bundle, verify_bundle
from xelm_cli.cluster.allocation import Allocation, write_allocation
from xelm_cli.cluster.fitting import cluster
from xelm_cli.common.errors import UsageError
from xelm_cli.data.prepare import prepare
from xelm_cli.data.shards import Shards
from xelm_cli.training.plan_runner import read_plan
from xelm_cli.training.planning import make_plan

TEMPLATE = "shards-{expert}/"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> Path:
    """A folder holding a corpus, the seed (`seed/`), a TF-IDF allocation of it
    (`alloc-tfidf/`, k = 2), the shards of every document (`shards/`) and each expert's
    (`shards-0/`, `shards-1/`), and a typology allocation (`alloc.json`: en | tr) with shards
    of one language for each of its experts (`lang-0/`, `lang-1/`)."""
    folder = tmp_path_factory.mktemp("expert-data")
    (folder / "seed").symlink_to(seed_bundle)
    corpus = corpus_slice("train", 60, folder / "corpus")
    alloc = cluster("tfidf", k=2, output=folder / "alloc-tfidf", data=corpus, components=8)
    prepare(corpus, seed_bundle, folder / "shards")
    for expert in range(alloc.k):
        prepare(corpus, seed_bundle, folder / f"shards-{expert}", allocation=alloc, expert=expert)
    write_allocation(folder / "alloc.json", clusterer="typology", experts=[["en"], ["tr"]])
    for expert, language in enumerate(["en", "tr"]):
        prepare(corpus, seed_bundle, folder / f"lang-{expert}", languages=[language])
    return folder


@pytest.fixture
def in_root(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(root)
    return root


def plan_args(allocation: str, *extra: str) -> list[str]:
    """`xelm plan` of 4096 tokens (16 steps of 128 an expert) in the fixture's folder, with
    relative paths."""
    return ["plan", "--budget", "4096", "--allocation", allocation, "--seed-bundle", "seed",
            "--data", "shards", "-o", "runs", "--train-args", TRAIN_ARGS, *extra]  # fmt: skip


def linked(name: str, *targets: str) -> str:
    """A template of ``name-{expert}`` whose expert I is a link to ``targets[I]``, in the
    current directory (made once: the fixture's folder is shared)."""
    for expert, target in enumerate(targets):
        link = Path(f"{name}-{expert}")
        if not link.exists():
            link.symlink_to(target)
    return f"{name}-{{expert}}"


def training_data(run: dict[str, object]) -> str:
    """The --data of the run's `xelm train` command (its last)."""
    train = run["commands"][-1]  # type: ignore[index]
    return str(train[train.index("--data") + 1])


def test_the_experts_of_a_tfidf_allocation_need_their_own_shards(
    capsys: pytest.CaptureFixture[str], in_root: Path
) -> None:
    """Planning every expert on every document of its languages is not c-BTM: refused in one
    line that names the `xelm data prepare` command and --expert-data."""
    code, stdout, stderr = xelm(capsys, *plan_args("alloc-tfidf/", "--json"))
    assert (code, stdout) == (2, "")
    assert stderr == (
        "xelm: error: alloc-tfidf (tfidf) assigns documents, not languages: each expert trains "
        "on its own; prepare them (xelm data prepare CORPUS --allocation alloc-tfidf --expert all "
        "-t seed -o 'shards-{expert}/') and give --expert-data 'shards-{expert}/'\n"
    )


def test_each_expert_trains_on_its_own_shards(in_root: Path, tmp_path: Path) -> None:
    """Expert I's `xelm train` reads shards-I and its passes count their tokens; the dense and
    moe runs read --data; every training run records its shards (`data`), and train-all reads
    the plan."""
    plan = make_plan(4096, "alloc-tfidf/", "seed", "shards", "runs", train_args=TRAIN_ARGS,
                     moe_tokens=1024, expert_data=TEMPLATE)  # fmt: skip
    runs = {run["name"]: run for run in plan["runs"]}
    for expert in range(2):
        run = runs[f"expert-{expert}"]
        own = Shards.open(f"shards-{expert}")
        assert training_data(run) == run["data"] == f"shards-{expert}"
        tokens = (
            4096 - 1024
        ) // 2  # 12 steps of 128: the experts share what the moe fine-tune leaves
        assert run["passes"] == pytest.approx(tokens / own.tokens_in(run["languages"]))
    whole = Shards.open("shards")
    assert runs["expert-0"]["passes"] != runs["expert-1"]["passes"]  # counted over each one's
    assert training_data(runs["dense"]) == runs["dense"]["data"] == "shards"
    assert runs["dense"]["passes"] == pytest.approx(4096 / whole.tokens_in(list(TEST_LANGS)))
    assert training_data(runs["moe"]) == runs["moe"]["data"] == "shards"
    assert runs["average"]["data"] is None
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert read_plan(tmp_path / "plan.json")["runs"][0]["data"] == "shards-0"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("swapped", "--expert-data (expert 0): swapped-0 holds the documents of expert 1 of "
         "allocation alloc-tfidf ("),
        ("every document", "--expert-data (expert 0): run expert-0 is expert 0 of alloc-tfidf, "
         "whose tfidf clusterer assigns documents, not languages, and all-0 holds every "
         "document of its languages: prepare its own"),
        ("missing", "--expert-data (expert 0): not a shards directory: none-0 does not exist; "
         "make them with `xelm data prepare`"),
    ],
)  # fmt: skip
def test_expert_shards_that_expert_i_cannot_train_on_are_refused_naming_the_option(
    capsys: pytest.CaptureFixture[str], in_root: Path, case: str, expected: str
) -> None:
    """Expert 1's shards for expert 0 (and expert 0's for 1), the shards of every document,
    none at all: each refused in one line at plan time, not when expert 0's run starts."""
    template = "none-{expert}"
    if case == "swapped":
        template = linked("swapped", "shards-1", "shards-0")
    elif case == "every document":
        template = linked("all", "shards", "shards")
    code, stdout, stderr = xelm(
        capsys, *plan_args("alloc-tfidf", "--expert-data", template, "--json")
    )
    assert (code, stdout) == (2, "")
    assert stderr.startswith(f"xelm: error: {expected}") and stderr.count("\n") == 1, stderr


def test_a_language_allocation_takes_expert_data_too(in_root: Path) -> None:
    """A typology allocation's experts may each train on shards of their languages only."""
    plan = make_plan(4096, "alloc.json", "seed", "shards", "runs", train_args=TRAIN_ARGS,
                     expert_data="lang-{expert}")  # fmt: skip
    experts = [run for run in plan["runs"] if run["expert"] is not None]
    assert [training_data(run) for run in experts] == ["lang-0", "lang-1"]
    assert [run["passes"] for run in experts] == pytest.approx(
        [
            2048 / Shards.open("lang-0").tokens_in(["en"]),
            2048 / Shards.open("lang-1").tokens_in(["tr"]),
        ]
    )
    assert training_data(plan["runs"][-1]) == "shards"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("tr", "has no documents in en (it has tr)"),
        ("tfidf", "holds the documents of expert 0 of allocation alloc-tfidf"),
    ],
)
def test_a_language_allocation_refuses_expert_shards_it_cannot_train_on(
    in_root: Path, case: str, expected: str
) -> None:
    """Shards without expert 0's language (Turkish for both), and those of a TF-IDF expert."""
    template = linked("tr", "lang-1", "lang-1") if case == "tr" else TEMPLATE
    with pytest.raises(UsageError) as info:
        make_plan(
            4096,
            "alloc.json",
            "seed",
            "shards",
            "runs",
            train_args=TRAIN_ARGS,
            expert_data=template,
        )
    assert str(info.value).startswith("--expert-data (expert 0): ")
    assert expected in str(info.value)


@pytest.mark.parametrize("template", ["shards/", "shards-{lang}/", "shards-{expert", "{0}"])
def test_a_template_without_the_expert_index_is_refused(
    capsys: pytest.CaptureFixture[str], in_root: Path, template: str
) -> None:
    code, stdout, stderr = xelm(capsys, *plan_args("alloc-tfidf", "--expert-data", template))
    assert (code, stdout) == (2, "")
    assert stderr == (
        f"xelm: error: --expert-data {template!r} must hold {{expert}}, where each expert's "
        "index goes, and no other {...}: e.g. 'shards-{expert}/'\n"
    )


def test_data_of_one_expert_is_refused_for_the_dense_run(in_root: Path) -> None:
    with pytest.raises(UsageError) as info:
        make_plan(
            4096,
            "alloc-tfidf",
            "seed",
            "shards-0",
            "runs",
            train_args=TRAIN_ARGS,
            expert_data=TEMPLATE,
        )
    assert str(info.value) == (
        "--data: shards-0 holds only the documents of expert 0 of alloc-tfidf, and the dense "
        "run trains on every document: give the shards of the whole corpus there, and each "
        "expert's to --expert-data"
    )


def test_train_all_trains_a_tfidf_expert_on_its_own_shards(
    capsys: pytest.CaptureFixture[str],
    root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Run 0 of a planned TF-IDF c-BTM: expert 0 is branched and trained (`xelm train` accepts
    its shards) on shards-0, as its training record says."""
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = xelm(
        capsys, "plan", "--budget", "512", "--allocation", root / "alloc-tfidf",
        "--seed-bundle", root / "seed", "--data", root / "shards",
        "--expert-data", f"{root}/shards-{{expert}}", "-o", "runs", "--train-args", TRAIN_ARGS,
        "--json",
    )  # fmt: skip
    assert code == 0, stderr
    Path("plan.json").write_text(stdout)
    code, _, stderr = xelm(capsys, "train-all", "plan.json", "--only", "0")
    assert code == 0, stderr
    expert = Path("runs/experts/expert-0")
    assert verify_bundle(expert) == []
    manifest = Bundle.read(expert).manifest
    assert manifest.allocation is not None and manifest.allocation["expert"] == 0
    assert manifest.training["data_digest"] == Shards.open(root / "shards-0").digest
    assert not Path("runs/experts/expert-1").exists() and not Path("runs/dense").exists()


def test_the_tfidf_allocation_assigns_overlapping_languages(root: Path) -> None:
    """The premise of these tests: both experts hold documents of every language."""
    from xelm_cli.cluster.allocation import read_allocation

    alloc: Allocation = read_allocation(root / "alloc-tfidf")
    assert [sorted(langs) for langs in alloc.experts] == [sorted(TEST_LANGS)] * 2


def test_an_expert_sent_no_document_of_a_language_is_planned_on_those_it_has(
    in_root: Path,
) -> None:
    """Expert 0's shards of a corpus whose English documents all went to expert 1 hold Turkish
    alone: the plan takes them (as `xelm train` trains the expert on what they hold), its run
    lists Turkish and counts passes over it."""
    assigned = documents_by_expert(Path("alloc-tfidf"), Path("corpus"))
    other = Path("corpus-no-en-for-0")
    if not other.exists():
        other.mkdir()
        (other / "en.jsonl").write_text(
            "".join(json.dumps({"text": t}) + "\n" for t in assigned[1]["en"]), encoding="utf-8"
        )
        (other / "tr.jsonl").write_bytes(Path("corpus/tr.jsonl").read_bytes())
        prepare(other, "seed", "turkish-0", languages="en,tr", allocation="alloc-tfidf", expert=0)
    template = linked("narrow", "turkish-0", "shards-1")
    plan = make_plan(4096, "alloc-tfidf/", "seed", "shards", "runs", train_args=TRAIN_ARGS,
                     expert_data=template)  # fmt: skip
    run = next(r for r in plan["runs"] if r["name"] == "expert-0")
    assert run["languages"] == ["tr"]
    assert run["passes"] == pytest.approx(2048 / Shards.open("turkish-0").tokens_in(["tr"]))


def test_the_moe_gate_of_tfidf_experts_is_calibrated_by_their_allocation(in_root: Path) -> None:
    """TF-IDF experts share their languages: the plan's `xelm bundle moe --gate language`
    names the allocation, so each expert's router row comes from its cluster's documents; a
    typology allocation's experts (each its own languages) need no --allocation."""
    flores = str(SHARED_DATA / "eval" / "flores200-devtest")
    plan = make_plan(4096, "alloc-tfidf/", "seed", "shards", "runs", train_args=TRAIN_ARGS,
                     moe_tokens=1024, expert_data=TEMPLATE, moe_calibration=flores)  # fmt: skip
    build = next(run for run in plan["runs"] if run["name"] == "moe")["commands"][0]
    assert build[build.index("--gate"):] == [
        "--gate", "language", "--calibration", flores, "--allocation", "alloc-tfidf",
        "-o", "runs/moe-init",
    ]  # fmt: skip
    plan = make_plan(4096, "alloc.json", "seed", "shards", "runs", train_args=TRAIN_ARGS,
                     moe_tokens=1024, moe_calibration=flores)  # fmt: skip
    build = next(run for run in plan["runs"] if run["name"] == "moe")["commands"][0]
    assert "--allocation" not in build and "--calibration" in build
