"""`xelm data prepare --allocation A --expert all` (``prepare_experts``): every expert's shards
of a TF-IDF allocation from one reading of the corpus, the same shards a run per expert
(``--expert I``) writes, however the reading is cut (read limits, a kill and a rerun)."""

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_LANGS
from corpus_helpers import Counting, valid_texts
from hub_fixtures import c4_like

from xelm_cli.cli import run
from xelm_cli.cluster.fitting import cluster
from xelm_cli.common.errors import UsageError
from xelm_cli.data import prepare as prepare_module
from xelm_cli.data import prepare_work
from xelm_cli.data.prepare import PrepareResult, prepare, prepare_experts, token_shortfall
from xelm_cli.data.source_plan import SourceOptions
from xelm_cli.data.sources import DatasetSource, FileSource

LANGS = list(TEST_LANGS)
K = 3
PER_LANGUAGE = SourceOptions(config="{lang}")


@pytest.fixture(scope="module")
def allocation(expert_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("alloc") / "alloc-tfidf"
    cluster("tfidf", k=K, output=out, languages=LANGS, data=expert_corpus, components=8)
    return out


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A streamed dataset: one configuration per language, as mC4's."""
    root = tmp_path_factory.mktemp("mirror") / "c4"
    return c4_like(root, {lang: valid_texts(lang, 60) for lang in LANGS})


def files(shards: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(shards.iterdir())}


def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The sources opened from now on (their paths), each time one is."""
    calls: list[str] = []
    for kind in (FileSource, DatasetSource):
        real = kind.open

        def counted(self: Any, *args: Any, real: Any = real, **kwargs: Any) -> Any:
            calls.append(str(getattr(self, "path", None) or getattr(self, "dataset", "")))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(kind, "open", counted)
    return calls


def one_by_one(source: Path, seed_bundle: Path, out: Path, **options: Any) -> list[PrepareResult]:
    """What a run per expert writes, into OUT-0, OUT-1, ..."""
    return [prepare(source, seed_bundle, f"{out}-{i}", expert=i, **options) for i in range(K)]


def test_every_expert_from_one_reading_of_corpus_files_as_a_run_per_expert_writes_it(
    expert_corpus: Path,
    allocation: Path,
    seed_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Corpus files are read whole and cut down to each expert's budgets afterwards: the bytes
    of every file (manifest too) are those of ``--expert I``, the corpus opened once, not K
    times."""
    options: dict[str, Any] = {"allocation": allocation, "alpha": 0.3, "tokens": 9_000, "seed": 1}
    reads = opened(monkeypatch)
    every = prepare_experts(expert_corpus, seed_bundle, tmp_path / "all-{expert}", **options)
    assert len(reads) == 1
    reads.clear()
    apart = one_by_one(expert_corpus, seed_bundle, tmp_path / "one", **options)
    assert len(reads) == K
    assert [r.shards.path.name for r in every] == [f"all-{i}" for i in range(K)]
    for together, alone in zip(every, apart, strict=True):
        assert together.shards.expert == alone.shards.expert
        assert files(together.shards.path) == files(alone.shards.path)
    assert not (tmp_path / ".all-all.prepare").exists()  # the work is gone once all are written


def test_a_streamed_dataset_is_read_once_to_every_experts_limits_even_when_killed(
    mirror: Path,
    allocation: Path,
    seed_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each expert's language stops at its own read limit (--cap), its source only once every
    expert's has: the shards are those of a run per expert, and a run killed halfway (Ctrl-C)
    continues, when run again, to the same shards."""
    options: dict[str, Any] = {
        "allocation": allocation, "reading": PER_LANGUAGE, "languages": LANGS,
        "token_caps": 2_000, "batch_size": 8,
    }  # fmt: skip
    apart = one_by_one(mirror, seed_bundle, tmp_path / "one", **options)
    assert any(entry["read_to_limit"] for entry in apart[0].shards.manifest["languages"].values())
    out = tmp_path / "all-{expert}"
    monkeypatch.setattr(prepare_work, "CHECKPOINT_SECONDS", 0.0)  # after every batch
    with pytest.raises(KeyboardInterrupt):
        prepare_experts(mirror, seed_bundle, out, progress=Counting(6), **options)
    assert (tmp_path / ".all-all.prepare" / "state.json").exists()
    reads = opened(monkeypatch)
    every = prepare_experts(mirror, seed_bundle, out, **options)
    assert len(reads) == len(LANGS)  # one configuration a language, each opened once
    for together, alone in zip(every, apart, strict=True):
        assert files(together.shards.path) == files(alone.shards.path)


def test_languages_read_further_for_short_ones_give_each_expert_its_shares(
    allocation: Path, seed_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --sizes and --tokens, an expert's language that held less than its share is kept
    whole and the expert's other languages are read further in its place, as in a run per
    expert: each expert falls short of --tokens by as much (here expert 1 runs out of en) and
    holds every tr document the allocation sends it; each warning names its expert."""
    texts = {"en": valid_texts("en", 200), "tr": valid_texts("tr", 6)}
    short = c4_like(tmp_path / "c4", texts)
    options: dict[str, Any] = {
        "allocation": allocation, "reading": PER_LANGUAGE, "languages": "en,tr",
        "sizes": "en=1,tr=1", "tokens": 3_000, "batch_size": 8,
    }  # fmt: skip
    every = prepare_experts(short, seed_bundle, tmp_path / "all-{expert}", **options)
    warnings = capsys.readouterr().err
    apart = one_by_one(short, seed_bundle, tmp_path / "one", **options)
    shortfalls = []
    for together, alone in zip(every, apart, strict=True):
        shortfalls.append(token_shortfall(together.shards.manifest))
        assert shortfalls[-1] == token_shortfall(alone.shards.manifest)
        assert together.shards.languages == alone.shards.languages
        if "tr" in alone.shards.languages:
            assert together.shards.stats["tr"] == alone.shards.stats["tr"]
        assert files(together.shards.path) == files(alone.shards.path)  # en read further too
    assert 0 in shortfalls and any(shortfalls)
    assert "xelm: warning: expert 0: tr held fewer tokens than its share" in warnings


def test_the_command_writes_every_expert_and_a_rerun_only_what_is_missing(
    expert_corpus: Path,
    allocation: Path,
    seed_bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [*command(expert_corpus, seed_bundle, allocation), "--expert", "all", "--json",
            "-o", str(tmp_path / "s-{expert}")]  # fmt: skip
    assert run(argv) == 0
    experts = json.loads(capsys.readouterr().out)["experts"]
    assert [e["path"] for e in experts] == [str(tmp_path / f"s-{i}") for i in range(K)]
    assert [e["options"]["allocation"]["expert"] for e in experts] == list(range(K))
    assert not any(e["up_to_date"] for e in experts)
    kept = files(tmp_path / "s-1")
    for name in ("s-0", "s-2"):
        for f in (tmp_path / name).iterdir():
            f.unlink()
        (tmp_path / name).rmdir()
    assert run(argv) == 0
    again = json.loads(capsys.readouterr().out)["experts"]
    assert [e["up_to_date"] for e in again] == [False, True, False]
    assert files(tmp_path / "s-1") == kept
    assert [e["digest"] for e in again] == [e["digest"] for e in experts]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--expert", "all", "-o", "shards"], "-o needs {expert} in its last name"),
        (["--expert", "all", "-o", "r-{expert}/s-{expert}"], "in its last name (only there)"),
        (
            ["--expert", "first", "-o", "s-{expert}"],
            "--expert takes an expert's index (0, 1, ...) or all, not 'first'",
        ),
        (
            ["--expert", "all", "-o", "s-{expert}", "--no-allocation"],
            "--expert all needs --allocation: the allocation whose experts' documents to keep",
        ),
    ],
)
def test_bad_expert_arguments_are_one_line_and_write_nothing(
    extra: list[str],
    message: str,
    expert_corpus: Path,
    allocation: Path,
    seed_bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    parent = tmp_path / "out"
    parent.mkdir()
    given = None if "--no-allocation" in extra else allocation
    argv = command(expert_corpus, seed_bundle, given)
    argv += [str(parent / arg) if "/" in arg or arg.startswith(("shards", "s-")) else arg
             for arg in extra if arg != "--no-allocation"]  # fmt: skip
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert list(parent.iterdir()) == []
    for out in (parent / "shards", parent / "{expert}" / "shards"):
        with pytest.raises(UsageError, match=r"-o needs \{expert\} in its last name"):
            prepare_experts(expert_corpus, seed_bundle, out, allocation=allocation)
    with pytest.raises(TypeError, match=r"^prepare_experts\(\) got unexpected keyword .* expert:"):
        prepare_experts(
            expert_corpus, seed_bundle, parent / "s-{expert}", allocation=allocation, expert=0
        )
    assert list(parent.iterdir()) == []


def command(expert_corpus: Path, seed_bundle: Path, allocation: Path | None) -> list[str]:
    """``xelm data prepare CORPUS -t SEED [--allocation A]``: the rest is each test's."""
    allocated = ["--allocation", str(allocation)] if allocation else []
    return ["data", "prepare", str(expert_corpus), "-t", str(seed_bundle), *allocated]


def test_experts_that_get_no_document_are_named_after_the_others_are_written(
    allocation: Path, seed_bundle: Path, tmp_path: Path
) -> None:
    """Two documents of one language, for 3 experts: at least one gets none of them. The
    others' shards are written, the run fails in one line naming the empty experts and the way
    out, and no work is left behind (a rerun would meet the same)."""
    tr_only = tmp_path / "tr"
    tr_only.mkdir()
    (tr_only / "tr.jsonl").write_text(
        "".join(json.dumps({"text": text}) + "\n" for text in valid_texts("tr", 2))
    )
    out = tmp_path / "s-{expert}"
    with pytest.raises(UsageError) as caught:
        prepare_experts(tr_only, seed_bundle, out, allocation=allocation, languages="tr")
    written = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("s-"))
    empty = [i for i in range(K) if f"s-{i}" not in written]
    assert written and empty
    assert str(caught.value).startswith(
        f"no documents of tr in {tr_only} assigned to expert"
        f"{'s' if len(empty) > 1 else ''} {', '.join(map(str, empty))} of alloc-tfidf: the "
        "other experts' shards are written, not theirs; read the languages they were fitted on"
    )
    assert not (tmp_path / ".s-all.prepare").exists()


def test_a_run_killed_while_writing_the_experts_continues_with_those_left(
    expert_corpus: Path,
    allocation: Path,
    seed_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C after the first expert's shards are written: the rerun reads nothing again (the
    work is kept), leaves expert 0's as they are and writes the others, as --expert I would."""
    real = prepare_module.finish
    calls = iter(range(100))

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        if next(calls) == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "finish", interrupted)
    out = tmp_path / "s-{expert}"
    with pytest.raises(KeyboardInterrupt):
        prepare_experts(expert_corpus, seed_bundle, out, allocation=allocation)
    assert (tmp_path / "s-0").exists() and not (tmp_path / "s-1").exists()
    monkeypatch.setattr(prepare_module, "finish", real)
    reads = opened(monkeypatch)
    # expert 0's shards hold read-only hard links to the complete work files: the rerun
    # must not truncate them (EACCES for a user other than root; it would touch sealed shards)
    cut: list[str] = []
    real_truncate = prepare_work.os.truncate
    monkeypatch.setattr(
        prepare_work.os,
        "truncate",
        lambda path, size: (cut.append(str(path)), real_truncate(path, size)),
    )
    again = prepare_experts(expert_corpus, seed_bundle, out, allocation=allocation)
    assert cut == []
    assert reads == []  # the work was read to its end: nothing to open
    assert [r.up_to_date for r in again] == [True] + [False] * (K - 1)
    alone = prepare(expert_corpus, seed_bundle, tmp_path / "one-1", allocation=allocation, expert=1)
    assert files(again[1].shards.path) == files(alone.shards.path)


def test_one_expert_writes_to_its_index_in_an_output_named_with_expert(
    expert_corpus: Path, allocation: Path, seed_bundle: Path, tmp_path: Path
) -> None:
    """``-o 'shards-{expert}/'`` with ``--expert 1`` (a job array's loop) writes shards-1/, as
    --expert all would; without --expert the placeholder has no index and is refused."""
    one = prepare(
        expert_corpus, seed_bundle, tmp_path / "s-{expert}", allocation=allocation, expert=1
    )
    assert one.shards.path == tmp_path / "s-1"
    assert one.shards.expert is not None and one.shards.expert["expert"] == 1
    with pytest.raises(UsageError, match=r"\{expert\} stands for the index of --expert"):
        prepare(expert_corpus, seed_bundle, tmp_path / "t-{expert}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s-1"]


def test_a_run_stopped_before_its_first_checkpoint_leaves_no_work(
    expert_corpus: Path, seed_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C before the work recorded anything: nothing to continue from, nothing left."""
    monkeypatch.setattr(prepare_work, "CHECKPOINT_SECONDS", 1e9)  # only at a source's end
    with pytest.raises(KeyboardInterrupt):
        prepare(expert_corpus, seed_bundle, tmp_path / "s", progress=Counting(1))
    assert list(tmp_path.iterdir()) == []


# -- --max-records: a ceiling on the reading of each streamed source ----------------------------


def documents(result: PrepareResult) -> dict[str, int]:
    return {lang: e["documents"] for lang, e in result.shards.manifest["languages"].items()}


def test_max_records_bounds_each_streamed_language_and_the_experts_split_that_reading(
    mirror: Path,
    allocation: Path,
    seed_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without it, an expert fills its cap from far down a language's stream; with it, each
    language is read for its first records only (to the end of the batch that reaches them),
    whatever each expert keeps: the experts share out exactly the records a plain run reads,
    --expert all as a run per expert does, and a run killed halfway continues to the same."""
    bounded: dict[str, Any] = {
        "reading": PER_LANGUAGE, "languages": LANGS, "batch_size": 8, "max_records": "20",
    }  # fmt: skip
    dense = prepare(mirror, seed_bundle, tmp_path / "dense", **bounded)
    read = documents(dense)
    assert all(20 <= n < 20 + 8 for n in read.values()), read  # 57 a language unbounded
    assert dense.shards.manifest["options"]["max_records"] == 20
    # the table's shares are of the records read, and say so (each language was cut)
    assert run(["data", "inspect", str(dense.shards.path)]) == 0
    out = capsys.readouterr().out
    assert all(line.split("│")[4].strip().endswith("%*") for line in out.splitlines()
               if line.startswith("│ ") and line.split("│")[1].strip() in LANGS)  # fmt: skip
    assert "or at 20 records (--max-records), so the source may hold more" in out
    options = {**bounded, "allocation": allocation, "token_caps": 100_000}
    apart = one_by_one(mirror, seed_bundle, tmp_path / "one", **options)
    out = tmp_path / "all-{expert}"
    monkeypatch.setattr(prepare_work, "CHECKPOINT_SECONDS", 0.0)  # after every batch
    with pytest.raises(KeyboardInterrupt):
        prepare_experts(mirror, seed_bundle, out, progress=Counting(3), **options)
    every = prepare_experts(mirror, seed_bundle, out, **options)
    for together, alone in zip(every, apart, strict=True):
        assert files(together.shards.path) == files(alone.shards.path)
    shared = {lang: sum(documents(r).get(lang, 0) for r in every) for lang in LANGS}
    assert shared == read  # every record read went to one expert: none read further


def test_max_records_is_refused_for_corpus_files_which_are_read_whole(
    expert_corpus: Path, seed_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["data", "prepare", str(expert_corpus), "-t", str(seed_bundle), "--max-records",
            "2M", "-o", str(tmp_path / "shards")]  # fmt: skip
    assert run(argv) == 2
    assert capsys.readouterr().err == (
        f"xelm: error: --max-records bounds the reading of streamed datasets; {expert_corpus} "
        "is read whole (corpus files): bound it with --cap or --tokens instead\n"
    )
    assert list(tmp_path.iterdir()) == []
