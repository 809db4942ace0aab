"""`xelm data fetch` and `xelm demo` without ../shared/data, through local Hub-layout
stand-ins (``XELM_HUB_MIRROR``) of allenai/c4 and Davlan/sib200: no network anywhere."""

import csv
import itertools
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from hub_eval_fixtures import fetch_mirror, synthetic_texts

from xelm_cli.cli import run
from xelm_cli.common.errors import UsageError, XelmError
from xelm_cli.common.hub import hub_unreachable
from xelm_cli.data import fetch as fetch_module
from xelm_cli.data import prepare_work
from xelm_cli.data.corpus import iter_documents
from xelm_cli.data.fetch import default_data_dir, fetch
from xelm_cli.data.sources import DatasetSource, SourceUnavailable
from xelm_cli.demo.presets import NEW_LANGUAGES, TRAIN_LANGUAGES

DEMO_LANGUAGES = [*TRAIN_LANGUAGES, *NEW_LANGUAGES]
DOCUMENTS = 30  # per language in the stand-ins


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fetch_mirror(tmp_path_factory.mktemp("hub"), DEMO_LANGUAGES, DOCUMENTS)


@pytest.fixture(autouse=True)
def _offline(mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Hub ids read the stand-ins, the Hub itself is offline (huggingface_hub reads
    HF_HUB_OFFLINE once, when imported), the cache is a temporary one, and the working directory
    has no ../shared beside it."""
    import huggingface_hub.constants

    monkeypatch.setenv("XELM_HUB_MIRROR", str(mirror))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("XELM_HOME", str(tmp_path / "xelm-home"))
    (tmp_path / "work" / "repo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work" / "repo")
    hub_unreachable.cache_clear()
    yield
    hub_unreachable.cache_clear()


def _texts(path: Path) -> list[str]:
    return [d.text for d in iter_documents(path)]


def test_fetch_builds_the_demo_layout_with_sources_and_caps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["data", "fetch", "--langs", "en,zh", "--size", "2K", "--valid-docs", "3"]) == 0
    out = default_data_dir()
    assert out == tmp_path / "xelm-home" / "data"
    captured = capsys.readouterr()
    assert "fetching 6 parts for 2 language(s)" in captured.err
    assert "about 0.5 MB of text (an estimate from the caps" in captured.err
    # training text: the stand-in's documents in order, until 2,000 bytes were reached
    kept, size = [], 0
    for text in synthetic_texts("en", DOCUMENTS):
        if size >= 2000:
            break
        kept.append(text)
        size += len(text.encode())
    assert _texts(out / "corpus" / "train" / "en.jsonl.zst") == kept  # mC4's 'en-multi'
    valid = (out / "corpus" / "valid" / "zh.jsonl.zst").read_bytes()
    lines = zstandard.ZstdDecompressor().decompressobj().decompress(valid).decode().splitlines()
    records = [json.loads(line) for line in lines]
    assert records == [{"text": t, "lang": "zh", "source": "mc4"} for t in synthetic_texts("zh", 3)]
    # SIB-200: the three splits as TSV, and their sentences (test first) as the FLORES text
    with (out / "tasks" / "sib200" / "zh" / "test.tsv").open(newline="") as f:
        test = list(csv.reader(f, delimiter="\t"))
    assert test[0] == ["index_id", "category", "text"] and len(test) == 6
    flores = (out / "eval" / "flores200-devtest" / "zh.txt").read_text().splitlines()
    assert len(flores) == 14 and flores[:5] == [row[2] for row in test[1:]]
    record = json.loads((out / "fetch.json").read_text())
    assert record["parts"]["train/en"] == {
        "cap": 2000, "source": "allenai/c4 [en-multi/train]", "documents": len(kept),
        "bytes": size, "exhausted": False,
    }  # fmt: skip
    readme = (out / "README.md").read_text()
    assert "ODC-By 1.0" in readme and "CC BY-SA 4.0" in readme and "gated" in readme


def test_rerun_is_a_no_op_and_a_larger_size_refetches_only_the_training_text() -> None:
    out = default_data_dir()
    first = fetch(None, ["sw"], 1000, 2)
    assert first["fetched"] == ["train/sw", "valid/sw", "sib200/sw"]
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert fetch(None, ["sw"], 1000, 2)["fetched"] == []
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    assert fetch(None, ["sw"], 800, 2)["fetched"] == []  # a smaller cap is already covered
    bigger = fetch(None, ["sw"], 5000, 2)
    assert bigger["fetched"] == ["train/sw"]
    assert bigger["parts"]["train/sw"]["bytes"] >= 5000


def test_json_output_is_the_fetch_record(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run(["data", "fetch", "--langs", "ko", "--size", "1K", "--valid-docs", "2", "--json"]) == 0
    )
    printed = json.loads(capsys.readouterr().out)
    record = json.loads((default_data_dir() / "fetch.json").read_text())
    assert printed == {"path": str(default_data_dir()), "fetched": list(record["parts"]),
                       "parts": record["parts"]}  # fmt: skip
    assert printed["parts"]["valid/ko"]["documents"] == 2
    assert printed["parts"]["sib200/ko"]["splits"] == {"train": 7, "validation": 2, "test": 5}


def test_an_interrupted_fetch_continues_with_the_part_it_was_in(
    mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "data"
    broken = tmp_path / "mirror"
    shutil.copytree(mirror, broken)
    shutil.rmtree(broken / "Davlan" / "sib200" / "data" / "tur_Latn")  # a file missing mid-way
    monkeypatch.setenv("XELM_HUB_MIRROR", str(broken))
    with pytest.raises(Exception, match="tur_Latn"):
        fetch(out, ["bg", "tr"], 1000, 2)
    done = json.loads((out / "fetch.json").read_text())["parts"]
    assert sorted(done) == ["sib200/bg", "train/bg", "train/tr", "valid/bg", "valid/tr"]
    assert not (out / "tasks" / "sib200" / "tr").exists()  # nothing of the failed part
    stamp = (out / "corpus" / "train" / "bg.jsonl.zst").stat().st_mtime_ns
    monkeypatch.setenv("XELM_HUB_MIRROR", str(mirror))
    assert fetch(out, ["bg", "tr"], 1000, 2)["fetched"] == ["sib200/tr"]
    assert (out / "corpus" / "train" / "bg.jsonl.zst").stat().st_mtime_ns == stamp


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_network_failure_mid_language_resumes_from_the_stream_position(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch_module, "BATCH_ROWS", 4)
    monkeypatch.setattr(prepare_work, "CHECKPOINT_SECONDS", 0.0)
    whole = tmp_path / "whole"
    fetch(whole, ["bg", "tr"], 3000, 2)
    assert json.loads((whole / "fetch.json").read_text())["parts"]["train/tr"]["documents"] > 12
    real_add, tr_rows = DatasetSource._add, itertools.count(1)

    def flaky(self, batch, row, number, default):  # type: ignore[no-untyped-def]
        if (self.config, self.split) == ("tr", "train") and next(tr_rows) == 9:
            raise ConnectionError("Connection reset by peer")  # the first row of batch 3
        real_add(self, batch, row, number, default)

    monkeypatch.setattr(DatasetSource, "_add", flaky)
    out = tmp_path / "resumed"
    with pytest.raises(SourceUnavailable, match="run the same command again to continue"):
        fetch(out, ["bg", "tr"], 3000, 2)
    assert sorted(json.loads((out / "fetch.json").read_text())["parts"]) == [
        "sib200/bg", "train/bg", "valid/bg",
    ]  # fmt: skip
    assert not (out / "corpus" / "train" / "tr.jsonl.zst").exists()  # nothing half-written
    state = json.loads((out / ".train-tr.prepare" / "state.json").read_text())
    assert state["sources"]["train/tr"]["position"]["stream"]["rows"] == 8
    read_again: list[int] = []

    def counted(self, batch, row, number, default):  # type: ignore[no-untyped-def]
        if (self.config, self.split) == ("tr", "train"):
            read_again.append(number)
        real_add(self, batch, row, number, default)

    monkeypatch.setattr(DatasetSource, "_add", counted)
    assert fetch(out, ["bg", "tr"], 3000, 2)["fetched"] == ["train/tr", "valid/tr", "sib200/tr"]
    assert read_again[0] == 9  # rows 1-8 were not read again
    assert read_again == list(range(9, 9 + len(read_again)))
    assert not (out / ".train-tr.prepare").exists()
    assert _files(out) == _files(whole)


def test_bad_requests_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["data", "fetch", "--langs", "it"]) == 2
    assert "xelm data fetch knows ar, bg" in capsys.readouterr().err
    assert run(["data", "fetch", "--size", "lots"]) == 2
    assert "--size takes a number of bytes such as 500K or 2M" in capsys.readouterr().err
    with pytest.raises(UsageError, match="at least 1"):
        fetch(None, ["en"], 0)


def test_demo_offline_without_data_says_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XELM_HUB_MIRROR", str(tmp_path / "no-mirror"))
    assert run(["demo", "--preset", "smoke", "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("xelm: error: no demo data: ../shared/data is absent")
    assert "run `xelm data fetch` with network access" in err and "--data DIR" in err
    assert not default_data_dir().exists() and not (tmp_path / "run").exists()


def test_fetch_without_the_hub_says_so_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not after the Hub client's retries (about 25 s): one request to the Hub's endpoint (here
    a closed local port) decides, and the line names the datasets that are not local copies."""
    import huggingface_hub.constants

    monkeypatch.setenv("XELM_HUB_MIRROR", str(tmp_path / "no-mirror"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    started = time.perf_counter()
    assert run(["data", "fetch", "--langs", "sw", "-o", str(tmp_path / "data")]) == 2
    assert time.perf_counter() - started < 10  # the probe's timeout is 5 s; retries take ~25
    said, error = capsys.readouterr().err.strip().splitlines()  # what it would fetch, why not
    assert said.startswith("fetching 3 parts for 1 language(s)")
    assert error.startswith(
        "xelm: error: cannot reach the Hugging Face Hub for Davlan/sib200, allenai/c4: "
    )
    assert error.endswith("(offline? run the same command again with network access, or set "
                          "XELM_HUB_MIRROR to a folder holding copies of them as Davlan/sib200/, "
                          "allenai/c4/)")  # fmt: skip
    assert not any((tmp_path / "data").glob("corpus/*"))


def test_demo_smoke_runs_to_a_report_from_the_hub_stand_ins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert run(["demo", "--preset", "smoke", "-o", str(out)]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "no sample data at ../shared/data: fetching 54 parts for 18 language(s)" in err
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["data"] == str(default_data_dir())
    assert set(results["perplexity"]["dense"]) == {*TRAIN_LANGUAGES, "overall", "mean"}
    assert set(results["icl"]["xelm"]["languages"]) == set(TRAIN_LANGUAGES)
    assert (out / "report" / "report.md").is_file()
    # the second run reads the cache without fetching
    assert run(["demo", "--preset", "smoke", "-o", str(out)]) == 0
    assert "fetching" not in capsys.readouterr().err


def test_a_broken_source_leaves_no_file_of_its_part(
    mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "mirror"
    shutil.copytree(mirror, broken)
    shard = next((broken / "allenai" / "c4" / "multilingual").glob("c4-vi.tfrecord-00001-*"))
    shard.write_bytes(shard.read_bytes()[:40])  # a truncated gzip file
    monkeypatch.setenv("XELM_HUB_MIRROR", str(broken))
    out = tmp_path / "data"
    with pytest.raises(XelmError, match=r"allenai/c4 \[vi/train\]") as caught:
        fetch(out, ["vi"], 10**6, 2)
    assert "\n" not in str(caught.value)
    assert not out.exists() or sorted(p.name for p in out.rglob("*")) == []


def test_fetch_refuses_a_folder_inside_a_bundle(seed_bundle: Path) -> None:
    """It fills its folder file by file: inside a bundle they would be unlisted files, and the
    bundle would no longer verify (refused before the Hub is asked)."""
    out = seed_bundle / "data"
    with pytest.raises(UsageError, match=r"the data would lie inside the bundle"):
        fetch(out, ["en"])
    assert not out.exists()
