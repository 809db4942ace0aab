"""Bad input to the commands that read corpora, shards and allocations: each refused in one
line that names what the input is and a way out the command has."""

import json
from pathlib import Path

import datasets
import pytest
from cli_helpers import xelm
from corpus_helpers import Counting, valid_texts
from hub_fixtures import c4_like

from xelm_cli.api import SourceOptions, UsageError, cluster, read_documents, sample_documents
from xelm_cli.bundle.archive import pack_bundle
from xelm_cli.cluster.allocation import read_allocation, write_allocation
from xelm_cli.common.errors import FormatError
from xelm_cli.data.corpus import EVALUATION_SETS, iter_documents
from xelm_cli.data.evalsets import EVAL_SETS
from xelm_cli.data.prepare import prepare
from xelm_cli.data.prepare_work import RepeatedByARerun
from xelm_cli.data.shards import Shards

TEXTS = {
    "en": ["The cat sat on the mat.", "A dog ran in the park.", "Rain fell all day long."],
    "tr": ["Kedi evde uyudu.", "Köpek parkta koştu.", "Bugün hava güzel."],
}


def write_corpus(root: Path, layout: dict[str, str] | None = None) -> Path:
    """A corpus of a file per language (``layout``: language -> relative file name)."""
    for lang, name in (layout or {lang: f"{lang}.jsonl" for lang in TEXTS}).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"text": t, "lang": lang}) + "\n" for t in TEXTS[lang]))
    return root


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> dict[str, Path]:
    """What xelm makes, on disk: a bundle, shards (and their corpus), an allocation (a file
    and a folder holding one)."""
    root = tmp_path_factory.mktemp("made")
    corpus = write_corpus(root / "corpus")
    prepare(corpus, seed_bundle, root / "shards")
    write_allocation(root / "alloc.json", clusterer="typology", experts=[["en"], ["tr"]])
    (root / "alloc-dir").mkdir()
    write_allocation(
        root / "alloc-dir" / "allocation.json", clusterer="typology", experts=[["en", "tr"]]
    )
    archive = pack_bundle(seed_bundle, root / "seed.xelm.tar.zst")
    return {
        "bundle": seed_bundle,
        "archive": archive,
        "shards": root / "shards",
        "corpus": corpus,
        "alloc": root / "alloc.json",
        "alloc-dir": root / "alloc-dir",
    }


def one_line(err: str) -> str:
    assert err.startswith("xelm: error: ") and err.count("\n") == 1, err
    return err.removeprefix("xelm: error: ").rstrip("\n")


# ---------------------------------------------------------- 1. xelm's outputs as a corpus


CORPUS_REFUSALS = {
    "bundle": "is an xelm bundle, not a corpus: pass a corpus (JSON-lines or text files, or a "
    "folder of them)",
    "shards": "is xelm shards, made by `xelm data prepare`, not a corpus: pass the corpus they "
    "came from",
    "alloc": "is an xelm allocation, made by `xelm cluster`, not a corpus: pass a corpus",
    "alloc-dir": "is an xelm allocation, made by `xelm cluster`, not a corpus: pass a corpus",
    "archive": "is a bundle archive, made by `xelm bundle pack`, not a corpus: unpack it with "
    "`xelm bundle unpack",
}


@pytest.mark.parametrize("what", sorted(CORPUS_REFUSALS))
@pytest.mark.parametrize("command", ["prepare", "tokenizer", "tfidf", "eval", "calibration"])
def test_xelm_outputs_passed_as_a_corpus_are_refused_naming_what_they_are(
    capsys: pytest.CaptureFixture[str],
    made: dict[str, Path],
    tmp_path: Path,
    what: str,
    command: str,
) -> None:
    """A bundle or shards folder read as a Hugging Face dataset of .json files (an Arrow cast
    error, or "no column 'text' ...; choose one with --text-column"), now one line, exit 2."""
    data, out, bundle = str(made[what]), tmp_path / "out", str(made["bundle"])
    argv = {
        "prepare": ["data", "prepare", data, "--tokenizer", bundle, "-o", out],
        "tokenizer": ["data", "tokenizer", data, "-o", out],
        "tfidf": ["cluster", "tfidf", data, "-k", "2", "-o", out],
        "eval": ["ensemble", "eval", bundle, "--data", data],
        "calibration": [
            "ensemble", "create", bundle, "--router", "posterior", "--calibration", data,
            "-o", tmp_path / "ens.json",
        ],
    }[command]  # fmt: skip
    code, stdout, stderr = xelm(capsys, *argv)
    assert (code, stdout) == (2, ""), stderr
    assert one_line(stderr).startswith(f"{data} {CORPUS_REFUSALS[what]}")
    assert not out.exists()


def test_a_manifest_named_itself_is_no_corpus_either(made: dict[str, Path]) -> None:
    manifest = made["shards"] / "shards.json"
    with pytest.raises(UsageError, match=r"shards\.json is the manifest of xelm shards"):
        list(iter_documents(manifest))
    with pytest.raises(UsageError, match="is an xelm bundle, not a corpus"):
        read_documents(made["bundle"])
    assert {d.language for d in iter_documents(made["corpus"])} == {"en", "tr"}  # still read


# ---------------------------------------------------------- 2. no --text-column it lacks


def test_a_dataset_without_text_names_the_text_column_flag_only_where_there_is_one(
    tmp_path: Path,
) -> None:
    saved = tmp_path / "saved"
    rows = [{"content": t, "lang": lang} for lang, texts in TEXTS.items() for t in texts]
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    with pytest.raises(FormatError) as caught:  # evaluation, calibration: no such flag
        read_documents(saved)
    assert "--text-column" not in str(caught.value)
    assert str(caught.value).endswith(
        "has no 'text' column (columns: content, lang); the dataset's text column is not "
        "'text': rename it to 'text'"
    )
    with pytest.raises(FormatError, match=r"\(columns: content, lang\); choose one with --text"):
        sample_documents(saved, per_language=2)  # xelm cluster tfidf has it
    sample = sample_documents(saved, per_language=2, reading=SourceOptions(text_column="content"))
    assert sorted(d.language for d in sample) == ["en", "en", "tr", "tr"]


# ---------------------------------------------------------- 3. --split of corpus files


def test_split_is_refused_for_corpus_files_rather_than_ignored_and_recorded(
    capsys: pytest.CaptureFixture[str], tokenizer_dir: Path, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus", {"en": "train/en.jsonl", "tr": "valid/tr.jsonl"})
    refusal = (
        "--split is for datasets, not corpus files (every file is read): drop it, or pass the "
        "folder or file of the split you mean"
    )
    for split in ("valid", "bogus"):
        out = tmp_path / f"s-{split}"
        code, stdout, stderr = xelm(
            capsys, "data", "prepare", corpus, "-t", tokenizer_dir, "-o", out, "--split", split
        )
        assert (code, stdout, one_line(stderr)) == (2, "", refusal)
        assert not out.exists()
    with pytest.raises(UsageError, match=r"^--split is for datasets, not corpus files"):
        sample_documents(corpus, per_language=2, reading=SourceOptions(split="valid"))
    valid = prepare(corpus / "valid", tokenizer_dir, tmp_path / "valid").shards  # the way out
    assert valid.languages == ["tr"] and valid.manifest["source"]["split"] is None


# ---------------------------------------------------------- 4. the languages a corpus has


def test_a_language_missing_from_a_corpus_names_those_it_has(tmp_path: Path) -> None:
    """Were "(it has: none)": the sample the languages were taken from held only the wanted."""
    corpus = write_corpus(tmp_path / "corpus")
    with pytest.raises(UsageError) as caught:
        sample_documents(corpus, languages="sw", per_language=2)
    assert str(caught.value) == (
        f"no documents in sw in {corpus} (it has: en, tr); drop them from --langs"
    )
    unnamed = tmp_path / "unnamed"  # languages in the records only: those read
    unnamed.mkdir()
    (corpus / "en.jsonl").rename(unnamed / "mixed.jsonl")
    with pytest.raises(UsageError, match=r"no documents in sw in .* \(it has: en\); drop"):
        sample_documents(unnamed, languages="sw", per_language=2)
    saved = tmp_path / "saved"  # a dataset: the languages seen while reading
    rows = [{"text": t, "lang": lang} for lang, texts in TEXTS.items() for t in texts]
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    with pytest.raises(UsageError, match=r"no documents in sw in .* \(it has: en, tr\); drop"):
        sample_documents(saved, languages="sw,en", per_language=2)


def test_cluster_tfidf_names_the_corpus_languages(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    out = tmp_path / "x3"
    code, _, stderr = xelm(
        capsys, "cluster", "tfidf", corpus, "-k", "2", "--langs", "sw", "-o", out
    )
    assert code == 2 and one_line(stderr).endswith("(it has: en, tr); drop them from --langs")


# ---------------------------------------------------------- 5. DATA for typology


def test_data_is_refused_for_a_clusterer_that_reads_none(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "x4.json"
    argv = ["cluster", "typology", "/nonexistent", "--langs", "ar,tr", "-k", "2", "-o", out]
    code, stdout, stderr = xelm(capsys, *argv)
    refusal = (
        "the typology clusterer reads no DATA (it groups the languages of --langs): drop "
        "/nonexistent"
    )
    assert (code, stdout, one_line(stderr)) == (2, "", refusal)
    with pytest.raises(UsageError, match=r"^the typology clusterer reads no DATA"):
        cluster("typology", k=2, output=out, languages="ar,tr", data=tmp_path / "corpus")
    assert not out.exists()
    assert cluster("typology", k=2, output=out, languages="ar,tr").k == 2  # without DATA


# ---------------------------------------------------------- 6. what is not an allocation


def test_a_folder_that_is_no_allocation_is_not_said_to_be_missing(
    capsys: pytest.CaptureFixture[str], made: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    cases = {
        tmp_path / "nope": f"allocation not found: {tmp_path / 'nope'}",
        tmp_path / "empty": f"{tmp_path / 'empty'} is not an allocation (no allocation.json): "
        "make one with `xelm cluster`",
        made["bundle"]: f"{made['bundle']} is an xelm bundle, not an allocation: make one with "
        "`xelm cluster`",
        made["shards"]: f"{made['shards']} is xelm shards, made by `xelm data prepare`, not an "
        "allocation: make one with `xelm cluster`",
    }
    for path, message in cases.items():
        code, stdout, stderr = xelm(capsys, "cluster", "show", path)
        assert (code, stdout, one_line(stderr)) == (2, "", message)
    assert read_allocation(made["alloc-dir"]).k == 1  # a folder holding one still reads


# ---------------------------------------------------------- 7. what is not shards


def test_what_is_not_shards_is_named_with_the_way_to_make_them(
    capsys: pytest.CaptureFixture[str], made: dict[str, Path], tmp_path: Path
) -> None:
    way = "make them with `xelm data prepare`"
    plain = tmp_path / "notes.txt"
    plain.write_text("hello\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    cases = {
        tmp_path / "nope": f"{tmp_path / 'nope'} does not exist",
        made["corpus"]: f"{made['corpus']} has no shards.json",
        made["alloc"]: f"{made['alloc']} is an xelm allocation, made by `xelm cluster`",
        made["bundle"]: f"{made['bundle']} is an xelm bundle",
        made["archive"]: f"{made['archive']} is a bundle archive, made by `xelm bundle pack`",
        model: f"{model} is a Hugging Face model folder",
        plain: f"{plain} is a file",
    }
    for path, why in cases.items():
        with pytest.raises(UsageError) as caught:
            Shards.open(path)
        assert str(caught.value) == f"not a shards directory: {why}; {way}"
    code, _, stderr = xelm(capsys, "data", "inspect", made["alloc"])
    assert code == 2 and one_line(stderr).endswith(f"made by `xelm cluster`; {way}")
    assert Shards.open(made["shards"]).languages == ["en", "tr"]


# ---------------------------------------------------------- 8. evaluation sets


def test_missing_evaluation_data_names_the_known_evaluation_sets(tmp_path: Path) -> None:
    assert set(EVALUATION_SETS) == set(EVAL_SETS)
    with pytest.raises(UsageError) as caught:
        read_documents("flores")
    assert str(caught.value) == (
        "evaluation data not found: flores (not a file or folder, nor one of the known sets "
        "openlanguagedata/flores_plus, Davlan/sib200)"
    )
    with pytest.raises(UsageError) as caught:  # a path is no set's name: it is missing
        read_documents(tmp_path / "flores")
    assert str(caught.value) == f"evaluation data not found: {tmp_path / 'flores'}"


# ---------------------------------------------- 9. prepare: errors a rerun meets again, counts


def blank_mirror(root: Path) -> Path:
    """A c4-layout mirror whose sw configuration holds only blank rows (and en real text)."""
    return c4_like(root, {"en": valid_texts("en", 6), "sw": ["", "   ", "\n\t"] * 4})


def test_a_language_of_blank_rows_counts_them_and_claims_no_continuation(
    tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Were "(it has 2 languages: en, sw)" of sw itself, no word of the 12 blank rows, and
    "the same command continues from there", which met the same error again."""
    mirror = blank_mirror(tmp_path / "c4")
    argv = ["data", "prepare", mirror, "--config", "{lang}", "--langs", "en,sw", "--cap", "5000",
            "-t", tokenizer_dir, "-o", tmp_path / "s"]  # fmt: skip
    for _ in range(2):  # the same both times, and nothing kept for a rerun
        code, _, err = xelm(capsys, *argv)
        assert code == 2
        assert err.splitlines() == [
            f"xelm: warning: {mirror}: 12 rows of sw skipped as blank (empty, whitespace only or "
            "null text; is --text-column right?)",
            f"xelm: error: no documents in sw in {mirror} (documents read in en); drop them "
            "from --langs / --cap",
        ]
        assert not (tmp_path / ".s.prepare").exists()


def test_a_single_missing_language_is_named_with_those_the_corpus_has(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    """Was "no documents in CORPUS for --langs": neither the language nor the way out."""
    corpus = write_corpus(tmp_path / "corpus")
    with pytest.raises(RepeatedByARerun) as caught:
        prepare(corpus, tokenizer_dir, tmp_path / "s", languages="fr")
    assert str(caught.value) == (
        f"no documents in fr in {corpus} (it has 2 languages: en, tr); name languages it has "
        "in --langs / --cap"
    )


def test_a_budget_below_every_document_keeps_the_work_for_a_higher_cap(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    """Corpus files are read whole, their caps not part of the work's key: a rerun with a
    higher --cap reads nothing again (it said "the same command continues", which failed
    again)."""
    corpus = write_corpus(tmp_path / "corpus")
    work = tmp_path / ".s.prepare"
    with pytest.raises(UsageError) as caught:
        prepare(corpus, tokenizer_dir, tmp_path / "s", token_caps=2)
    assert str(caught.value) == (
        "a budget of 2 tokens leaves no whole document in en; raise --cap / --tokens or drop it "
        f"with --langs; what was read is kept in {work}: a rerun with a higher --cap / --tokens "
        "reuses it (delete that directory to start afresh)"
    )
    reading = Counting()
    shards = prepare(corpus, tokenizer_dir, tmp_path / "s", token_caps=500, progress=reading)
    assert reading.seen == []  # nothing read again
    assert shards.shards.languages == ["en", "tr"] and not work.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-records", "0"], "--max-records: a record count must be a positive whole "
         "number, not '0'"),
        (["--max-records", "1e3x"], "--max-records: not a record count: '1e3x' (examples: 500, "
         "300K, 2M)"),
        (["--cap", "en=0"], "--cap en=0: a token count must be a positive whole number, not '0'"),
        (["--tokens", "lots"], "--tokens: not a token count: 'lots' (examples: 4096, 300K, 20M, "
         "1.5B)"),
    ],
)  # fmt: skip
def test_a_bad_count_names_its_flag_and_what_it_counts(
    tokenizer_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    mirror = c4_like(tmp_path / "c4", {"en": valid_texts("en", 3)})
    code, _, err = xelm(capsys, "data", "prepare", mirror, "--config", "{lang}", "--langs", "en",
                        *flags, "-t", tokenizer_dir, "-o", tmp_path / "s")  # fmt: skip
    assert code == 2 and one_line(err) == message


def test_a_shortfall_that_max_records_caused_says_so(
    tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was "the corpus holds N tokens": each configuration held more, unread."""
    mirror = c4_like(tmp_path / "c4", {"en": valid_texts("en", 40), "de": valid_texts("de", 40)})
    code, _, err = xelm(capsys, "data", "prepare", mirror, "--config", "{lang}", "--langs",
                        "en,de", "--tokens", "1M", "--max-records", "8", "--batch-size", "4",
                        "-t", tokenizer_dir, "-o", tmp_path / "s", "--json")  # fmt: skip
    assert code == 0
    held = Shards.open(tmp_path / "s").stats
    tokens = sum(s.tokens for s in held.values())
    assert err.splitlines()[-1] == (
        f"xelm: warning: --tokens 1,000,000 not reached: {tokens:,} tokens read in de, en; "
        "reading stopped at --max-records 8 records (or its end) in de, en: raise --max-records"
    )
