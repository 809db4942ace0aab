"""An allocation that assigns documents (TF-IDF): `xelm data prepare --allocation A --expert I`
keeps the documents A's assigner sends to expert I, records the expert in the shards manifest,
and `xelm train` trains an expert only on the shards prepared for it."""

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_LANGS
from corpus_helpers import corpus_slice, documents_by_expert
from numpy.typing import NDArray

from xelm_cli.bundle.branching import branch
from xelm_cli.bundle.store import Bundle
from xelm_cli.cli import run
from xelm_cli.cluster.allocation import read_allocation, write_allocation
from xelm_cli.cluster.assigning import ExpertDocuments, assigns_documents
from xelm_cli.cluster.fitting import cluster
from xelm_cli.common.errors import UsageError
from xelm_cli.data.corpus import Document, iter_documents
from xelm_cli.data.documents import group_positions
from xelm_cli.data.prepare import prepare
from xelm_cli.data.routing import Routing
from xelm_cli.data.shards import Shards
from xelm_cli.plugin.contracts import Assigner
from xelm_cli.training.run import train

LANGS = list(TEST_LANGS)


@pytest.fixture(scope="module")
def allocation(expert_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("alloc") / "alloc-tfidf"
    cluster("tfidf", k=2, output=out, languages=LANGS, data=expert_corpus, components=8)
    return out


def test_prepare_keeps_exactly_the_documents_assigned_to_the_expert(
    expert_corpus: Path, allocation: Path, seed_bundle: Path, tmp_path: Path
) -> None:
    """Each expert's shards hold, language by language, as many documents as the assigner sends
    it, in the same order and tokens (each document's first token ids checked), and record the
    expert as a bundle branched for it records it; together the two hold every document."""
    from transformers import AutoTokenizer

    alloc = read_allocation(allocation)
    assigned = documents_by_expert(allocation, expert_corpus)
    tokenizer = AutoTokenizer.from_pretrained(seed_bundle)
    total = 0
    for expert in (0, 1):
        shards = prepare(
            expert_corpus, seed_bundle, tmp_path / f"s{expert}", languages=LANGS,
            allocation=allocation, expert=expert,
        ).shards  # fmt: skip
        assert shards.expert == alloc.reference(expert)
        assert shards.manifest["options"]["allocation"]["expert"] == expert
        assert shards.languages == sorted(assigned[expert])
        for lang, texts in assigned[expert].items():
            assert shards.stats[lang].documents == len(texts)
            for index in (0, len(texts) - 1):
                ids = tokenizer(texts[index], add_special_tokens=False)["input_ids"]
                assert shards.document(lang, index).tolist() == ids
            total += len(texts)
    assert total == sum(1 for d in iter_documents(expert_corpus) if d.text.strip())


def test_langs_default_to_the_experts_and_the_expert_is_part_of_the_options(
    expert_corpus: Path, allocation: Path, seed_bundle: Path, tmp_path: Path
) -> None:
    """Without --langs an expert's shards hold its languages of the allocation; the same output
    asked for another expert is refused naming the option that differs."""
    alloc = read_allocation(allocation)
    out = tmp_path / "s"
    code = run(["data", "prepare", str(expert_corpus), "--allocation", str(allocation), "--expert",
                "1", "-t", str(seed_bundle), "-o", str(out), "--json"])  # fmt: skip
    assert code == 0
    shards = Shards.open(out)
    assert shards.languages == sorted(alloc.experts[1])
    with pytest.raises(UsageError, match=r"other options \(allocation\)"):
        prepare(expert_corpus, seed_bundle, out, allocation=allocation, expert=0, languages=LANGS)
    assert prepare(expert_corpus, seed_bundle, out, allocation=allocation, expert=1).up_to_date


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--expert", "0"], "--allocation and --expert go together"),
        (["--allocation", "ALLOC"], "--allocation and --expert go together"),
        (["--allocation", "ALLOC", "--expert", "2"], "expert 2 does not exist"),
    ],
)
def test_bad_allocation_arguments_are_one_line_and_write_nothing(
    expert_corpus: Path,
    allocation: Path,
    seed_bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    message: str,
) -> None:
    argv = [str(allocation) if a == "ALLOC" else a for a in arguments]
    code = run(["data", "prepare", str(expert_corpus), *argv, "-t", str(seed_bundle), "-o",
                str(tmp_path / "s")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


@dataclass
class ByLength(Assigner):
    """Expert 1 for a document of at least ``long`` bytes, else expert 0."""

    long: int
    document_bytes: int = 0

    def assign(self, documents: Sequence[Document]) -> NDArray[np.int64]:
        return np.array([int(len(d.text.encode()) >= self.long) for d in documents])


def test_records_are_assigned_joined_as_the_fit_joined_them(tmp_path: Path) -> None:
    """An assigner fitted on ~8-byte joined records (document_bytes 8) sees "ab\\ncd\\nefgh" for
    the first three English records and sends all three to expert 1, though each alone is
    short; with document_bytes 0 each record goes on its own (all short: expert 0)."""
    write_allocation(tmp_path / "a.json", clusterer="typology", experts=[["en"], ["en"]])
    alloc = read_allocation(tmp_path / "a.json")
    texts = ["ab", "xy", "cd", "efgh", "z", "ij"]
    langs = ["en", "ru", "en", "en", "ru", "en"]
    joined = Routing((ExpertDocuments(alloc, 1, ByLength(long=8, document_bytes=8)),))
    mine = [key is not None for key in joined.labels(texts, langs)]  # what prepare keeps
    assert mine == [True, False, True, True, False, False]
    alone = Routing((ExpertDocuments(alloc, 1, ByLength(long=8)),))
    assert not any(key is not None for key in alone.labels(texts, langs))


def test_group_positions_groups_as_group_texts_joins() -> None:
    """The positions of consecutive items of one key, closed when they reach the target."""
    items = [("en", 2), ("ru", 2), ("en", 2), ("en", 4), ("ru", 1), ("en", 2)]
    assert list(group_positions(items, 8)) == [("en", [0, 2, 3]), ("ru", [1, 4]), ("en", [5])]
    assert [g for _, g in group_positions(items, 0)] == [[i] for i in range(6)]


def test_train_refuses_an_expert_on_documents_that_are_not_its_own(
    expert_corpus: Path,
    allocation: Path,
    seed_bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A branch for expert 0 of the TF-IDF allocation is refused, in one line naming the way
    out, on shards of every document of its languages and on expert 1's shards; on its own it
    trains. A seed (no allocation) may train on an expert's shards."""
    assert assigns_documents("tfidf") and not assigns_documents("typology")
    start = tmp_path / "branch-0"
    branch(seed_bundle, start, allocation=allocation, expert=0)
    languages = read_allocation(allocation).experts[0]
    every = prepare(expert_corpus, seed_bundle, tmp_path / "every", languages=LANGS).shards
    own, other = (
        prepare(expert_corpus, seed_bundle, tmp_path / f"s{i}", languages=LANGS,
                allocation=allocation, expert=i).shards
        for i in (0, 1)
    )  # fmt: skip
    small = ["--tokens", "64", "--block-size", "16", "--batch-size", "2"]
    for data, message in (
        (every, "assigns documents, not languages"),
        (other, "holds the documents of expert 1"),
    ):
        code = run(["train", str(start), "--data", str(data.path), *small, "-o",
                    str(tmp_path / "out")])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
        assert "--allocation" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "out").exists()
    trained = train(start, data=own.path, tokens=64, output=tmp_path / "out", block_size=16,
                    batch_size=2)  # fmt: skip
    assert list(trained.languages) == languages
    seed_run = train(seed_bundle, data=own.path, tokens=64, output=tmp_path / "dense",
                     languages=languages, block_size=16, batch_size=2)  # fmt: skip
    assert seed_run.path.is_dir()
    assert (trained.manifest.allocation or {})["expert"] == 0


def test_a_language_the_expert_got_no_document_of_is_named_and_left_out(
    expert_corpus: Path,
    allocation: Path,
    seed_bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A corpus whose English documents all go to expert 1: expert 0's shards hold only
    Russian, with a warning naming English (not an error: English was read), and expert 0's
    branch trains on Russian alone. English not in the corpus at all stays an error."""
    assigned = documents_by_expert(allocation, expert_corpus)
    other = tmp_path / "corpus"
    other.mkdir()
    (other / "en.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in assigned[1]["en"]), encoding="utf-8"
    )
    (other / "ru.jsonl").write_bytes((expert_corpus / "ru.jsonl").read_bytes())
    shards = prepare(
        other, seed_bundle, tmp_path / "s0", languages="en,ru", allocation=allocation, expert=0
    ).shards
    err = capsys.readouterr().err
    assert shards.languages == ["ru"]
    assert "expert 0 of alloc-tfidf got no documents of en: the shards hold ru" in err
    start = tmp_path / "branch-0"
    branch(seed_bundle, start, allocation=allocation, expert=0)
    trained = train(start, data=shards.path, tokens=64, output=tmp_path / "out", block_size=16,
                    batch_size=2)  # fmt: skip
    assert list(trained.languages) == ["ru"]
    (other / "en.jsonl").unlink()
    with pytest.raises(UsageError, match="no documents in en"):
        prepare(other, seed_bundle, tmp_path / "s1", languages="en,ru", allocation=allocation,
                expert=0)  # fmt: skip


def test_documents_of_a_language_outside_the_experts_own_list_are_kept_and_trained_on(
    expert_corpus: Path, allocation: Path, seed_bundle: Path, tmp_path: Path
) -> None:
    """An expert's languages in the allocation are those that send it a good share of their
    documents; the few others it gets are its documents too. With English left out of expert
    0's list, its shards still hold the English documents the assigner sends it, and its
    branch trains on English as well (the trained expert lists it)."""
    edited = tmp_path / "alloc-tfidf"
    shutil.copytree(allocation, edited)
    record = json.loads((edited / "allocation.json").read_text())
    record["experts"][0]["languages"] = [lang for lang in LANGS if lang != "en"]
    (edited / "allocation.json").write_text(json.dumps(record))
    assigned = documents_by_expert(allocation, expert_corpus)
    shards = prepare(
        expert_corpus, seed_bundle, tmp_path / "s0", allocation=edited, expert=0
    ).shards
    assert shards.languages == sorted(assigned[0])
    assert shards.stats["en"].documents == len(assigned[0]["en"])
    start = tmp_path / "branch-0"
    branch(seed_bundle, start, allocation=edited, expert=0)
    assert "en" not in Bundle.read(start).languages
    trained = train(start, data=shards.path, tokens=64, output=tmp_path / "out", block_size=16,
                    batch_size=2)  # fmt: skip
    assert sorted(trained.languages) == shards.languages


def test_the_demo_makes_again_the_shards_of_an_older_run_that_do_not_record_the_expert(
    expert_corpus: Path, allocation: Path, seed_bundle: Path, tmp_path: Path
) -> None:
    """A demo folder of an older xelm holds each TF-IDF cluster's shards without the expert
    recorded (xelm train refuses them now): they are not reused; the expert's own are."""
    from xelm_cli.demo.pipeline import _shards_of

    reference = read_allocation(allocation).reference(0)
    older = prepare(expert_corpus, seed_bundle, tmp_path / "older", languages=LANGS).shards
    own = prepare(
        expert_corpus, seed_bundle, tmp_path / "own", allocation=allocation, expert=0
    ).shards
    assert _shards_of(older.path, reference) is None
    reused = _shards_of(own.path, reference)
    assert reused is not None and reused.path == own.path and reused.expert == reference
    assert _shards_of(tmp_path / "none", reference) is None
    (own.path / "en.tokens.bin").write_bytes(b"")  # damaged
    assert _shards_of(own.path, reference) is None


def test_an_expert_of_a_clusterer_that_is_not_installed_is_refused(
    seed_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whether its clusterer assigns documents cannot be told, so its expert is not trained
    (as if it did not) on whatever shards it is given: one line naming the clusterer."""
    write_allocation(tmp_path / "a.json", clusterer="nonesuch", experts=[["en"], ["tr"]])
    start = tmp_path / "branch-0"
    branch(seed_bundle, start, allocation=tmp_path / "a.json", expert=0)
    shards = prepare(corpus_slice("train", 20, tmp_path / "corpus"), seed_bundle,
                     tmp_path / "s", languages="en").shards  # fmt: skip
    small = ["--tokens", "64", "--block-size", "16", "--batch-size", "2"]
    code = run(["train", str(start), "--data", str(shards.path), *small, "-o",
                str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "nonesuch" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_with_joined_records_the_batch_size_is_an_option_and_experts_split_the_corpus(
    expert_corpus: Path, allocation: Path, seed_bundle: Path, tmp_path: Path
) -> None:
    """An allocation fitted on records joined to ~300 bytes: records are joined so within each
    batch read, so the batch size is recorded (and part of what a rerun must match); at one
    batch size the two experts' shards hold every record once. Without joining it is not an
    option."""
    joined = cluster("tfidf", k=2, output=tmp_path / "joined", languages=LANGS, data=expert_corpus,
                     components=8, document_bytes=300)  # fmt: skip
    held = 0
    for expert in (0, 1):
        shards = prepare(expert_corpus, seed_bundle, tmp_path / f"s{expert}", allocation=joined,
                         expert=expert, batch_size=64).shards  # fmt: skip
        assert shards.manifest["options"]["batch_size"] == 64
        held += sum(stats.documents for stats in shards.stats.values())
    assert held == sum(1 for d in iter_documents(expert_corpus) if d.text.strip())
    with pytest.raises(UsageError, match=r"other options \(batch_size\)"):
        prepare(
            expert_corpus, seed_bundle, tmp_path / "s0", allocation=joined, expert=0, batch_size=128
        )
    records = prepare(expert_corpus, seed_bundle, tmp_path / "records", allocation=allocation,
                      expert=0, batch_size=64).shards  # fmt: skip
    assert "batch_size" not in records.manifest["options"]


def test_experts_of_documents_routed_by_language_by_default_are_warned_about(
    allocation: Path, seed_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """TF-IDF experts share languages: the default (language) router picks among them by
    language alone. Said once, naming the router that routes as the allocation assigns; not
    said when a router is chosen."""
    from xelm_cli.ensemble.ensemble_file import resolve_ensemble

    experts = [branch(seed_bundle, tmp_path / f"b{i}", allocation=allocation, expert=i).path
               for i in (0, 1)]  # fmt: skip
    capsys.readouterr()

    def said() -> list[str]:  # (and a note for each untrained branch, as for any)
        lines = capsys.readouterr().err.splitlines()
        return [line for line in lines if "not been trained since" not in line]

    assert resolve_ensemble(experts).router == "language"
    assert said() == [
        "xelm: warning: the experts are of tfidf allocation alloc-tfidf, which assigns "
        "documents, not languages: routed by language (the default); give --router tfidf "
        "--router-arg allocation=PATH to route each document as it assigns it"
    ]
    resolve_ensemble(experts, router="language")
    assert said() == []


def test_a_relative_router_path_is_recorded_absolute(
    allocation: Path, seed_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The results record the ensemble with its router's options: a relative allocation path
    would rebuild another router (or none) from another working directory."""
    from xelm_cli.ensemble.ensemble_file import resolve_ensemble

    experts = [branch(seed_bundle, tmp_path / f"b{i}", allocation=allocation, expert=i).path
               for i in (0, 1)]  # fmt: skip
    monkeypatch.chdir(allocation.parent)
    spec = resolve_ensemble(experts, router="tfidf", router_options={"allocation": allocation.name})
    assert spec.to_dict()["router"]["options"]["allocation"] == str(allocation.resolve())
