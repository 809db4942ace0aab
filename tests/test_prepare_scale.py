"""``xelm data prepare`` on corpora too big to read twice: the work of an interrupted run is
kept for every option the reading does not depend on, and discarded only with a line saying
why."""

import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED_DATA
from corpus_helpers import Counting
from hub_fixtures import write_readme, write_rows

from xelm_cli.common.digest import sha256_bytes
from xelm_cli.common.errors import FormatError, UsageError
from xelm_cli.data import prepare_work
from xelm_cli.data.corpus import iter_documents
from xelm_cli.data.prepare import prepare
from xelm_cli.data.source_plan import SourceOptions
from xelm_cli.data.sources import DatasetSource

PER_LANGUAGE = SourceOptions(config="{lang}")  # one configuration per language

DOCS = 40  # per language
BATCH = 4  # documents per batch: many checkpoints


def write_corpus(root: Path, langs: tuple[str, ...] = ("en", "tr")) -> Path:
    root.mkdir()
    for lang in langs:
        docs = itertools.islice(
            iter_documents(SHARED_DATA / "corpus" / "valid" / f"{lang}.jsonl.zst"), DOCS
        )
        lines = [json.dumps({"text": d.text, "lang": lang}, ensure_ascii=False) for d in docs]
        (root / f"{lang}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def local_dataset(repo: Path, langs: tuple[str, ...] = ("en", "tr")) -> Path:
    """A local dataset laid out like a Hub repository: one configuration per language."""
    for lang in langs:
        docs = itertools.islice(
            iter_documents(SHARED_DATA / "corpus" / "valid" / f"{lang}.jsonl.zst"), DOCS
        )
        write_rows(repo / "data" / f"{lang}.jsonl", [{"text": d.text} for d in docs])
    write_readme(repo, {lang: {"train": f"data/{lang}.jsonl"} for lang in langs})
    return repo


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus")


def interrupted(corpus: Path, tokenizer: Path, out: Path, **options: Any) -> dict[str, Any]:
    """Run ``prepare`` until its 5th batch, as Ctrl-C stops it; the state its work kept."""
    with pytest.raises(KeyboardInterrupt):
        prepare(corpus, tokenizer, out, batch_size=BATCH, progress=Counting(5), **options)
    state: dict[str, Any] = json.loads((out.parent / f".{out.name}.prepare/state.json").read_text())
    return state


@pytest.fixture(autouse=True)
def _checkpoint_every_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepare_work, "CHECKPOINT_SECONDS", 0.0)


# -- 1. the resume key holds only what reading depends on ----------------------------------------


def test_seed_and_alpha_of_the_second_pass_keep_the_first_pass_work(
    corpus: Path, tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s"
    state = interrupted(corpus, tokenizer_dir, out, tokens=2_000, seed=0)
    kept = state["languages"]["en"]["documents"]
    assert 0 < kept < DOCS
    progress = Counting()
    # corpus files are read whole: none of these options changes what is read
    second: dict[str, Any] = {"tokens": 2_000, "seed": 1, "alpha": 0.5, "token_caps": 500}
    resumed = prepare(corpus, tokenizer_dir, out, batch_size=BATCH, progress=progress, **second)
    assert progress.seen[0] == ("en", kept + BATCH)  # continued after the kept documents
    assert "discarding" not in capsys.readouterr().err
    fresh = prepare(corpus, tokenizer_dir, tmp_path / "fresh", batch_size=BATCH, **second)
    assert resumed.shards.manifest["languages"] == fresh.shards.manifest["languages"]
    for lang in ("en", "tr"):
        for kind in ("tokens", "offsets"):
            name = f"{lang}.{kind}.bin"
            assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()


def test_work_for_other_reading_is_discarded_with_a_line_saying_why(
    corpus: Path, tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s"
    interrupted(corpus, tokenizer_dir, out)
    capsys.readouterr()
    progress = Counting()
    prepare(
        corpus,
        tokenizer_dir,
        out,
        reading=SourceOptions(language="en"),
        batch_size=BATCH,
        progress=progress,
    )
    assert progress.seen[0] == ("en", BATCH)  # read from the start
    work = tmp_path / ".s.prepare"
    assert capsys.readouterr().err.splitlines() == [
        f"xelm: warning: discarding the work of an earlier run in {work} (other reading options): "
        "starting afresh"
    ]


def test_work_whose_files_lost_recorded_tokens_is_discarded_with_a_line_saying_why(
    corpus: Path, tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tokens file cut short (a copy, a full disk) cannot be continued: the rerun starts
    afresh by itself (it said to use --force, which kept the work and failed again)."""
    out = tmp_path / "s"
    interrupted(corpus, tokenizer_dir, out)
    work = tmp_path / ".s.prepare"
    with open(work / "en.tokens.bin", "r+b") as f:
        f.truncate(3)
    capsys.readouterr()
    progress = Counting()
    shards = prepare(corpus, tokenizer_dir, out, batch_size=BATCH, progress=progress).shards
    assert progress.seen[0] == ("en", BATCH)  # read from the start
    assert capsys.readouterr().err.splitlines() == [
        f"xelm: warning: discarding the work of an earlier run in {work} (en.tokens.bin is "
        "shorter than its recorded size): starting afresh"
    ]
    fresh = prepare(corpus, tokenizer_dir, tmp_path / "fresh").shards
    assert shards.manifest["languages"] == fresh.manifest["languages"]


# -- 2. an error while reading keeps the work, and says the same command continues it -----------


def test_a_corrupt_line_keeps_the_documents_before_it_for_a_rerun(
    corpus: Path, tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prepare_work, "CHECKPOINT_SECONDS", 1e9)  # only the one taken on error
    with open(corpus / "tr.jsonl", "a") as f:
        f.write("{broken\n")
    out = tmp_path / "s"
    work = tmp_path / ".s.prepare"
    with pytest.raises(FormatError) as info:
        prepare(corpus, tokenizer_dir, out, batch_size=BATCH)
    assert str(info.value) == (
        f"{corpus / 'tr.jsonl'}:{DOCS + 1}: not a JSON object; what was read so far is kept in "
        f"{work}: the same command continues from there (delete that directory to start afresh)"
    )
    assert not out.exists()
    state = json.loads((work / "state.json").read_text())
    assert {lang: c["documents"] for lang, c in state["languages"].items()} == {
        "en": DOCS,
        "tr": DOCS,
    }
    tr_size = (corpus / "tr.jsonl").stat().st_size - len("{broken\n")
    assert state["sources"]["corpus"]["position"] == {"file": 1, "offset": tr_size, "line": DOCS}


def test_a_language_without_documents_is_reported_before_the_next_source_is_read(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    texts = {"de": [" ", "\n"], "en": ["Hello there."] * 3, "tr": ["Merhaba."] * 3}
    for lang, rows in texts.items():
        write_rows(repo / "data" / f"{lang}.jsonl", [{"text": t} for t in rows])
    write_readme(repo, {lang: {"train": f"data/{lang}.jsonl"} for lang in texts})
    progress = Counting()
    with pytest.raises(UsageError, match=r"^no documents in de in .* drop them from --langs"):
        prepare(
            repo,
            tokenizer_dir,
            tmp_path / "s",
            languages="de,en,tr",
            reading=PER_LANGUAGE,
            progress=progress,
        )
    assert progress.seen == []  # de is read first; en and tr never were
    assert not (tmp_path / ".s.prepare").exists()  # it held nothing to continue from


# -- 4. a rerun does not hash again the files whose name, size and modification time it knows ---


def test_a_rerun_reuses_the_hashes_of_files_it_recorded(
    corpus: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    tr = corpus / "tr.jsonl"
    recorded = sha256_bytes(tr.read_bytes())
    out = tmp_path / "s"
    interrupted(corpus, tokenizer_dir, out)  # in en: tr not read yet
    info = tr.stat()
    tr.write_bytes(tr.read_bytes().replace(b"a", b"e", 1))  # in the first text, same size
    os.utime(tr, ns=(info.st_atime_ns, info.st_mtime_ns))
    progress = Counting()
    shards = prepare(corpus, tokenizer_dir, out, batch_size=BATCH, progress=progress).shards
    files = {f["name"]: f["sha256"] for f in shards.manifest["source"]["files"]}
    # not hashed again: the recorded hash stands for the file (name, size and mtime the same)
    assert files["tr.jsonl"] == recorded != sha256_bytes(tr.read_bytes())
    assert progress.seen[0][1] > BATCH  # and the work was continued


def test_a_local_dataset_touched_meanwhile_is_continued(
    tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dataset directory's record holds its files' names and sizes, not their modification
    times: a copy or a touch of the same files keeps an interrupted run's work."""
    repo = local_dataset(tmp_path / "repo")
    out = tmp_path / "s"
    options: dict[str, Any] = {"languages": "en,tr", "reading": PER_LANGUAGE}
    kept = interrupted(repo, tokenizer_dir, out, **options)["languages"]["en"]["documents"]
    for data in (repo / "data").iterdir():
        os.utime(data, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns + 10**9))
    capsys.readouterr()
    progress = Counting()
    prepare(repo, tokenizer_dir, out, batch_size=BATCH, progress=progress, **options)
    assert "discarding" not in capsys.readouterr().err
    assert progress.seen[0] == ("en", kept + BATCH)  # continued after the kept documents


def test_a_hub_dataset_given_a_new_commit_meanwhile_is_continued_at_the_commit_begun(
    tokenizer_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Hub's answer is stood in for (no network here): the data files a revision resolves
    to, named by commit as the Hub names them (a branch, or none, to its newest commit); the
    rows are read from a local copy."""
    repo = local_dataset(tmp_path / "repo")
    newest = {"commit": "a" * 40}

    def hub_files(self: DatasetSource) -> list[str]:
        commit = self.revision or newest["commit"]
        return [f"hf://datasets/someone/corpus@{commit}/data/{self.config}.jsonl"]

    monkeypatch.setattr(DatasetSource, "_data_files", hub_files)
    out = tmp_path / "s"
    options: dict[str, Any] = {"languages": "en,tr", "reading": PER_LANGUAGE}
    kept = interrupted(repo, tokenizer_dir, out, **options)["languages"]["en"]["documents"]
    newest["commit"] = "b" * 40
    capsys.readouterr()
    progress = Counting()
    shards = prepare(repo, tokenizer_dir, out, batch_size=BATCH, progress=progress, **options)
    assert "discarding" not in capsys.readouterr().err
    assert progress.seen[0] == ("en", kept + BATCH)  # continued after the kept documents
    recorded = shards.shards.manifest["source"]["languages"]
    assert {lang: r["resolved_revision"] for lang, r in recorded.items()} == {
        "en": "a" * 40,
        "tr": "a" * 40,
    }
    fresh = prepare(repo, tokenizer_dir, tmp_path / "fresh", **options).shards
    assert fresh.manifest["source"]["languages"]["en"]["resolved_revision"] == "b" * 40
    assert fresh.manifest["source"]["digest"] != shards.shards.manifest["source"]["digest"]
    interrupted(repo, tokenizer_dir, out, overwrite=True, **options)
    newest["commit"] = "c" * 40  # and other languages: that work is not continued
    again = prepare(repo, tokenizer_dir, out, languages="en", reading=PER_LANGUAGE, overwrite=True)
    assert again.shards.manifest["source"]["languages"]["en"]["resolved_revision"] == "c" * 40


# -- 5. --alpha over streamed languages cut at their read limit ----------------------------------


def test_weights_of_languages_cut_at_their_read_limit_are_named_in_a_warning(
    tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    sizes = {"en": 40, "tr": 20}  # documents
    for lang, n in sizes.items():
        docs = itertools.islice(
            iter_documents(SHARED_DATA / "corpus" / "valid" / f"{lang}.jsonl.zst"), n
        )
        write_rows(repo / "data" / f"{lang}.jsonl", [{"text": d.text} for d in docs])
    write_readme(repo, {lang: {"train": f"data/{lang}.jsonl"} for lang in sizes})
    options: dict[str, Any] = {"languages": "en,tr", "reading": PER_LANGUAGE, "alpha": 0.3}
    whole = prepare(repo, tokenizer_dir, tmp_path / "whole", **options).shards
    assert capsys.readouterr().err == ""  # read whole: weighed by size
    limit = whole.stats["tr"].tokens - 1  # both are cut there
    cut = prepare(repo, tokenizer_dir, tmp_path / "cut", tokens=limit, **options).shards
    assert [lang for lang, e in cut.manifest["languages"].items() if e["read_to_limit"]] == [
        "en",
        "tr",
    ]
    assert capsys.readouterr().err.splitlines() == [
        "xelm: warning: --alpha weighs en, tr by the tokens read up to the read limit (--cap, "
        "else --tokens), not by size; give --sizes (en=3.07B,de=397M: documents, bytes or "
        "tokens) to weigh each language by its size and read only its share"
    ]
