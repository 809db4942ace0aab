"""`xelm cluster tfidf` on datasets and recipes (mC4's layout, per-language configurations),
streamed and read only as far as the sample needs, and ``sample_documents`` itself."""

import itertools
import json
import re
from pathlib import Path

import pytest
from conftest import SHARED_DATA
from hub_fixtures import c4_like, write_readme, write_rows
from xelm_tfidf import TfidfClusterer

from xelm_cli.api import (
    Document,
    FormatError,
    SourceOptions,
    UsageError,
    cluster,
    group_documents,
    iter_documents,
    read_allocation,
    sample_documents,
)
from xelm_cli.cli import run

CODES = {"ar": "ar", "bg": "bg", "he": "iw"}  # xelm code -> mC4's
DOCS = 24  # a language's documents in the stand-in: 12 in each of its two train files
N = 5  # documents a language to fit on: all in the first file
SMALL = ["--components", "4", "--max-features", "2000"]
READING = SourceOptions(config="{lang}", lang_map={"he": "iw"})


def texts(lang: str, n: int = DOCS) -> list[str]:
    source = SHARED_DATA / "corpus" / "train" / f"{lang}.jsonl.zst"
    return [d.text for d in itertools.islice(iter_documents(source), n)]


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """allenai/c4's layout whose every language's second train file is not gzip: reading a
    language past its first 12 documents fails."""
    root = tmp_path_factory.mktemp("mirror") / "allenai" / "c4"
    c4_like(root, {code: texts(lang) for lang, code in CODES.items()}, files_per_language=2)
    for code in CODES.values():
        later = root / "multilingual" / f"c4-{code}.tfrecord-00001-of-00002.json.gz"
        later.write_bytes(b"not gzip: reading this far fails")
    return root


def cli_args(data: Path | str, out: Path, *extra: str) -> list[str]:
    return ["cluster", "tfidf", str(data), "-k", "2", "--max-docs-per-language", str(N),
            *SMALL, "-o", str(out), "--json", *extra]  # fmt: skip


def fitted_state(path: Path) -> tuple[object, ...]:
    """What a fit decides (not when it ran): arrays, shares, experts, sampled documents."""
    allocation = read_allocation(path)
    training = allocation.raw["tfidf"]["training"]
    return (
        allocation.raw["arrays"]["sha256"],
        allocation.raw["language_shares"],
        allocation.experts,
        training["documents_per_language"],
        training["cluster_sizes"],
    )


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("xelm: error: ") and "\n" not in err, err
    return err


def test_the_first_documents_of_each_language_and_nothing_past_them(standin: Path) -> None:
    read: list[int] = []
    sample = sample_documents(
        standin, languages="ar,bg,he", per_language=N, reading=READING, progress=read.append
    )
    for lang in CODES:  # the stream's first N, in order; the corrupt later files never opened
        assert [d.text for d in sample if d.language == lang] == texts(lang)[:N]
    assert sum(read) == 3 * N
    damaged = (
        r"^cannot read .*\[ar/train\] after row \d+: its data file .*ar.* is damaged \(Not a gzip"
    )
    with pytest.raises(FormatError, match=damaged):
        sample_documents(standin, languages="ar,bg,he", per_language=None, reading=READING)


def test_joined_documents_count_towards_the_sample(standin: Path) -> None:
    sample = sample_documents(
        standin, languages="ar,bg", per_language=3, document_bytes=150,
        reading=SourceOptions(config="{lang}"),
    )  # fmt: skip
    for lang in ("ar", "bg"):
        first = [Document(t, lang) for t in texts(lang)[:12]]  # the first file's records
        expected = list(itertools.islice(group_documents(first, 150), 3))
        assert [d for d in sample if d.language == lang] == expected
        assert all(d.text.count("\n") >= 1 for d in expected)  # records were joined


def test_the_cli_fits_on_n_documents_a_language_of_mc4s_layout(
    standin: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "alloc"
    argv = cli_args(standin, out, "--config", "{lang}", "--langs", "ar,bg,he",
                    "--lang-map", "he=iw")  # fmt: skip
    assert run(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["documents"] == 3 * N
    assert summary["sample"] == "first"  # streamed: each language's first documents
    allocation = read_allocation(out)
    training = allocation.raw["tfidf"]["training"]
    assert training["documents_per_language"] == dict.fromkeys(CODES, N)
    assert sorted(allocation.raw["language_shares"]) == sorted(CODES)
    assigner = TfidfClusterer.assigner(allocation)
    held_out = [Document(t, lang) for lang in CODES for t in texts(lang)[12:16]]
    experts = assigner.assign(held_out)
    assert experts.shape == (len(held_out),) and set(experts.tolist()) <= {0, 1}


def test_a_recipe_and_python_fit_as_the_command_line_does(
    standin: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    by_flags = tmp_path / "flags"
    argv = cli_args(standin, by_flags, "--config", "{lang}", "--langs", "ar,bg,he",
                    "--lang-map", "he=iw")  # fmt: skip
    assert run(argv) == 0
    recipe = tmp_path / "c4-standin.json"
    recipe.write_text(json.dumps({
        "format": "xelm-corpus-recipe", "format_version": "1.0.0", "name": "c4-standin",
        "defaults": {"dataset": str(standin), "config": "{lang}"},
        "languages": {"ar": {}, "bg": {}, "he": {"code": "iw"}},
    }))  # fmt: skip
    by_recipe = tmp_path / "recipe"
    assert run(cli_args(recipe, by_recipe)) == 0
    capsys.readouterr()
    by_python = cluster(
        "tfidf",
        k=2,
        output=tmp_path / "python",
        data=standin,
        languages=["ar", "bg", "he"],
        reading=SourceOptions(config="{lang}", lang_map={"he": "iw"}),
        max_docs_per_language=N,
        components=4,
        max_features=2000,
    )
    assert by_python.raw["tfidf"]["training"]["documents"] == 3 * N
    assert fitted_state(by_recipe) == fitted_state(by_flags) == fitted_state(by_python.path)


def test_a_dataset_whose_rows_carry_languages_stops_once_each_has_enough(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "labelled"
    rows = [{"text": t, "lang": lang} for pair in zip(texts("ar"), texts("bg"), strict=True)
            for t, lang in zip(pair, ("ar", "bg"), strict=True)]  # fmt: skip
    write_rows(repo / "data" / "train.parquet", rows)
    write_readme(repo, {"default": {"train": "data/train.parquet"}})
    read: list[int] = []
    sample = sample_documents(repo, languages=["ar", "bg"], per_language=2, progress=read.append)
    assert [(d.language, d.text) for d in sample] == [
        ("ar", texts("ar")[0]), ("ar", texts("ar")[1]),
        ("bg", texts("bg")[0]), ("bg", texts("bg")[1]),
    ]  # fmt: skip
    assert sum(read) == 4  # two batches of two rows: the other 44 rows never read
    everything = sample_documents(repo, per_language=None)  # no languages: read to the end
    assert len(everything) == 2 * DOCS


def test_corpus_files_take_the_reading_options(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "notes.txt").write_text("\n".join(texts("tr", 10)) + "\n")  # no language
    sample = sample_documents(corpus, per_language=4, seed=1, reading=SourceOptions(language="tr"))
    assert len(sample) == 4 and {d.language for d in sample} == {"tr"}
    assert {d.text for d in sample} <= set(texts("tr", 10))
    again = sample_documents(corpus, per_language=4, seed=1, reading=SourceOptions(language="tr"))
    assert again == sample  # the seeded reservoir


def test_corpus_labels_are_read_as_langs_names_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """arb.jsonl's documents (file name) and records labelled cmn_Hani are ar and zh for
    --langs ar,zh, as prepare reads them (were "no documents in ar, zh (it has: none)")."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "arb.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts("ar")))
    (corpus / "mixed.jsonl").write_text(
        "".join(json.dumps({"text": t, "lang": "cmn_Hani"}) + "\n" for t in texts("zh"))
    )
    sample = sample_documents(corpus, languages="ar,zh", per_language=3)
    assert sorted(d.language for d in sample) == ["ar"] * 3 + ["zh"] * 3
    assert {d.text for d in sample} <= set(texts("ar") + texts("zh"))
    out = tmp_path / "alloc"
    assert run(cli_args(corpus, out, "--langs", "ar,zh")) == 0, capsys.readouterr().err
    assert sorted(read_allocation(out).languages) == ["ar", "zh"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--config", "{lang}"], r"--config '\{lang\}' needs --langs"),
        (["--config", "ar", "--langs", "ar,bg"], r"\[ar/train\] row 1: no language"),
        (["--config", "{lang}", "--langs", "ar", "--lang-map", "bg=x"], "--langs does not list"),
        (["--config", "{lang}", "--langs", "ar,sw"], "has no configuration 'sw'"),
    ],
)
def test_bad_reading_options_are_one_line_and_write_nothing(
    standin: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "alloc"
    assert run(cli_args(standin, out, *extra)) == 2
    assert re.search(message, one_line_error(capsys))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_an_unknown_recipe_or_a_missing_language_or_reading_without_data_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "alloc"
    assert run(cli_args("nothing-like-this", out)) == 2
    assert "not found: nothing-like-this" in one_line_error(capsys)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "tr.txt").write_text("\n".join(texts("tr", 10)) + "\n")
    assert run(cli_args(corpus, out, "--langs", "tr,sw")) == 2
    assert "no documents in sw in" in one_line_error(capsys)
    assert run(["cluster", "tfidf", "-k", "2", "--config", "{lang}", "-o", str(out)]) == 2
    assert one_line_error(capsys) == (
        "xelm: error: --config says how to read DATA: give DATA, or drop it"
    )
    reading = SourceOptions(split="train", lang_map={"he": "iw"}, revision="main")
    with pytest.raises(UsageError) as caught:
        cluster("tfidf", k=2, output=out, languages="ar,bg", reading=reading)
    assert str(caught.value) == (
        "reading=SourceOptions(split=..., lang_map=..., revision=...) says how to read data: "
        "give data, or drop it"
    )
    assert not out.exists()


def test_reading_keywords_given_as_clusterer_options_name_reading(tmp_path: Path) -> None:
    """``cluster(..., config="{lang}")`` (the keywords before ``reading``) would otherwise be
    refused as an option tfidf does not declare, naming no way out."""
    out = tmp_path / "alloc"
    with pytest.raises(UsageError) as caught:
        cluster("tfidf", k=2, output=out, data=tmp_path, config="{lang}", lang="ar")
    assert str(caught.value) == (
        "config=..., lang=...: how to read data goes in "
        "reading=SourceOptions(config=..., language=...)"
    )
    assert not out.exists()


def test_the_reading_flags_are_in_a_help_panel_of_their_own_for_clusterers_that_read_data(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for command, shown in (("tfidf", True), ("typology", False)):
        assert run(["cluster", command, "--help"]) == 0
        help_text = capsys.readouterr().out
        assert ("Reading the source" in help_text) is shown
        assert ("--lang-map" in help_text) is shown


def test_reading_flags_are_refused_for_a_clusterer_that_reads_no_data_with_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """typology reads no DATA (no ``reads_data``): --config would be ignored, so it is refused
    (giving DATA would not help)."""
    out = tmp_path / "alloc.json"
    refusal = "clusterer 'typology' does not read DATA with --config: drop it"
    argv = ["cluster", "typology", "--langs", "ar,bg", "-k", "2", "--config", "{lang}",
            "-o", str(out)]  # fmt: skip
    assert run(argv) == 2
    assert one_line_error(capsys) == f"xelm: error: {refusal}"
    with pytest.raises(UsageError) as caught:
        reading = SourceOptions(config="{lang}", split="train")
        cluster("typology", k=2, output=out, languages="ar,bg", reading=reading)
    assert str(caught.value) == (
        "clusterer 'typology' does not read data with reading=SourceOptions(split=..., "
        "config=...): drop it"
    )
    assert not out.exists()
    plain = cluster("typology", k=2, output=out, languages="ar,bg")  # without them it fits
    assert plain.k == 2 and sorted(plain.languages) == ["ar", "bg"]
