"""Where documents come from, and how they are labelled and encoded, in ``xelm data prepare``:
the same rows give the same documents whatever form they arrive in."""

import json
import shutil
from collections import Counter
from pathlib import Path

import datasets
import pytest
from hub_fixtures import write_readme, write_rows
from tokenizers import Tokenizer

from xelm_cli.cli import run
from xelm_cli.common.errors import FormatError, UsageError
from xelm_cli.data.corpus import read_documents
from xelm_cli.data.prepare import prepare
from xelm_cli.data.shards import Shards
from xelm_cli.data.source_plan import SourceOptions, plan_sources
from xelm_cli.data.tokenizer import train_tokenizer_on_corpus
from xelm_cli.lang.codes import wanted_form

LANGS = ("de", "en", "tr")
TEXTS = [
    "All human beings are born free and equal in dignity and rights.",
    "They are endowed with reason and conscience.",
    "Everyone has the right to life, liberty and security of person.",
]


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def documents(shards: Shards, lang: str) -> list[list[int]]:
    return [ids.tolist() for ids in shards.iter_documents([lang])]


@pytest.mark.parametrize(
    "stored",
    [
        {"truncation": {"direction": "Right", "max_length": 4, "strategy": "LongestFirst",
                        "stride": 0}},
        {"padding": {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None,
                     "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>"}},
    ],
    ids=["truncation", "padding"],
)  # fmt: skip
def test_truncation_or_padding_stored_in_the_tokenizer_is_not_applied(
    tokenizer_dir: Path, tmp_path: Path, stored: dict[str, object]
) -> None:
    tokenizer = shutil.copytree(tokenizer_dir, tmp_path / "tok")
    saved = json.loads((tokenizer / "tokenizer.json").read_text())
    (tokenizer / "tokenizer.json").write_text(json.dumps({**saved, **stored}))
    corpus = write_jsonl(tmp_path / "corpus" / "en.jsonl", [{"text": t} for t in TEXTS])
    shards = prepare(corpus.parent, tokenizer, tmp_path / "shards").shards
    plain = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    expected = [plain.encode(t, add_special_tokens=False).ids for t in TEXTS]
    assert min(len(ids) for ids in expected) > 4  # long enough to be cut, of unequal lengths
    assert len({len(ids) for ids in expected}) > 1
    assert documents(shards, "en") == expected


def labelled_rows() -> list[dict[str, str]]:
    """Three languages' rows, and two without a language (one empty, one missing)."""
    rows = [
        {"text": f"{lang} {i} {TEXTS[i % 3]}", "lang": lang} for lang in LANGS for i in range(5)
    ]
    return [*rows, {"text": "unlabelled, empty", "lang": ""}, {"text": "unlabelled, missing"}]


def hub_layout(root: Path, rows: list[dict[str, str]]) -> Path:
    """A local dataset laid out like a Hub repository: one ``test`` split of parquet rows, the
    text in column ``content`` (a missing language is null)."""
    renamed = [{"content": r["text"], "lang": r.get("lang")} for r in rows]
    write_rows(root / "data" / "test-00000.parquet", renamed)
    write_readme(root, {"default": {"test": "data/test-*.parquet"}})
    return root


def counts(shards: Shards) -> dict[str, int]:
    return {lang: s.documents for lang, s in shards.stats.items()}


def test_lang_labels_only_rows_without_a_language_in_files_and_datasets(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    files = write_jsonl(tmp_path / "corpus" / "rows.jsonl", labelled_rows()).parent
    dataset = hub_layout(tmp_path / "hub", labelled_rows())
    from_files = prepare(
        files, tokenizer_dir, tmp_path / "a", reading=SourceOptions(language="en")
    ).shards
    from_dataset = prepare(
        dataset,
        tokenizer_dir,
        tmp_path / "b",
        reading=SourceOptions(language="en", split="test", text_column="content"),
    ).shards
    assert counts(from_files) == counts(from_dataset) == {"de": 5, "en": 7, "tr": 5}
    for lang in LANGS:
        assert documents(from_files, lang) == documents(from_dataset, lang)


def test_blank_documents_are_dropped_alike_from_files_and_datasets(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    rows = [{"text": t, "lang": "en"} for t in (TEXTS[0], "  ", "", "\n\t ", TEXTS[1])]
    files = write_jsonl(tmp_path / "corpus" / "rows.jsonl", rows).parent
    dataset = hub_layout(tmp_path / "hub", rows)
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(saved)
    read = [
        prepare(files, tokenizer_dir, tmp_path / "a").shards,
        prepare(
            dataset,
            tokenizer_dir,
            tmp_path / "b",
            reading=SourceOptions(split="test", text_column="content"),
        ).shards,
        prepare(saved, tokenizer_dir, tmp_path / "c").shards,
    ]
    plain = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    expected = [plain.encode(t, add_special_tokens=False).ids for t in TEXTS[:2]]
    assert [documents(shards, "en") for shards in read] == [expected] * 3


def test_text_column_reads_a_save_to_disk_dataset(tokenizer_dir: Path, tmp_path: Path) -> None:
    rows = labelled_rows()[:15]
    files = write_jsonl(tmp_path / "corpus" / "rows.jsonl", rows).parent
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(
        [{"content": r["text"], "lang": r["lang"]} for r in rows]
    ).save_to_disk(saved)
    with pytest.raises(
        FormatError,
        match=r"no 'text' column \(columns: content, lang\); choose one with --text-column",
    ):
        prepare(saved, tokenizer_dir, tmp_path / "a")
    from_disk = prepare(
        saved, tokenizer_dir, tmp_path / "a", reading=SourceOptions(text_column="content")
    ).shards
    from_files = prepare(files, tokenizer_dir, tmp_path / "b").shards
    assert from_disk.manifest["source"]["text_column"] == "content"
    for lang in LANGS:
        assert documents(from_disk, lang) == documents(from_files, lang)
    with pytest.raises(UsageError, match="--text-column is for datasets, not corpus files"):
        prepare(files, tokenizer_dir, tmp_path / "c", reading=SourceOptions(text_column="content"))


def by_folder(root: Path, texts: dict[str, list[str]]) -> Path:
    """A Hub-like dataset with one folder per language (``data/en``) and no configurations:
    its README declares none, and its rows carry no language."""
    for lang, lines in texts.items():
        write_rows(root / "data" / lang / "train-00000.parquet", [{"text": t} for t in lines])
    (root / "README.md").write_text("---\nlicense: odc-by\n---\n# by folder\n")
    return root


def folder_texts() -> dict[str, list[str]]:
    return {
        lang: [f"{lang} {i} {TEXTS[i % 3]}" for i in range(4 + n)] for n, lang in enumerate(LANGS)
    }


def test_data_dir_reads_one_folder_per_language(tokenizer_dir: Path, tmp_path: Path) -> None:
    texts = folder_texts()
    hub = by_folder(tmp_path / "hub", texts)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({
        "format": "xelm-corpus-recipe", "format_version": "1.0.0",
        "defaults": {"dataset": str(hub), "data_dir": "data/{lang}"},
        "languages": {"de": {}, "tr": {}},
    }))  # fmt: skip
    from_recipe = prepare(recipe, tokenizer_dir, tmp_path / "a").shards
    files = tmp_path / "corpus"
    for lang in ("de", "tr"):
        write_jsonl(files / f"{lang}.jsonl", [{"text": t} for t in texts[lang]])
    from_files = prepare(files, tokenizer_dir, tmp_path / "b").shards
    assert counts(from_recipe) == {"de": 4, "tr": 6}
    for lang in ("de", "tr"):
        assert documents(from_recipe, lang) == documents(from_files, lang)


def test_data_dir_on_the_command_line_reads_one_folder_per_language(
    tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = folder_texts()
    hub = str(by_folder(tmp_path / "hub", texts))
    options = ["--data-dir", "data/{lang}", "--langs", "de,tr"]
    out = tmp_path / "shards"
    assert run(["data", "prepare", hub, *options, "-t", str(tokenizer_dir), "-o", str(out)]) == 0
    shards = Shards.open(out)
    assert counts(shards) == {"de": 4, "tr": 6}
    assert shards.manifest["source"]["languages"]["tr"]["data_dir"] == "data/tr"
    capsys.readouterr()
    tok = tmp_path / "tok"
    assert run(["data", "tokenizer", hub, *options, "--vocab-size", "300", "-o", str(tok),
                "--json"]) == 0  # fmt: skip
    characters = json.loads(capsys.readouterr().out)["characters"]
    assert characters == {lang: sum(map(len, texts[lang])) for lang in ("de", "tr")}


def test_data_dir_options_plan_a_folder_per_language(tmp_path: Path) -> None:
    hub = by_folder(tmp_path / "hub", folder_texts())
    plan = plan_sources(hub, ["en", "tr"], SourceOptions(data_dir="data/{lang}"))
    assert {lang: s.data_dir for lang, s in plan.sources.items()} == {  # type: ignore[union-attr]
        "en": "data/en",
        "tr": "data/tr",
    }
    one = plan_sources(hub, None, SourceOptions(data_dir="data/en", language="en"))
    assert [b.texts for b in one.sources["corpus"].open()] == [folder_texts()["en"]]
    with pytest.raises(UsageError, match=r"--data-dir 'data/\{lang\}' needs --langs"):
        plan_sources(hub, None, SourceOptions(data_dir="data/{lang}"))
    missing = plan_sources(hub, ["sw"], SourceOptions(data_dir="data/{lang}"))
    with pytest.raises(UsageError, match=r"folder 'data/sw' holds no data files; check --data-dir"):
        missing.sources["sw"].record()


FINEWEB2_CODES = {"deu_Latn": 3, "arb_Arab": 2, "cmn_Hani": 2, "swh_Latn": 1, "tur_Latn": 1}


def fineweb2_rows() -> list[dict[str, str]]:
    """Rows labelled as FineWeb-2 labels them: ISO 639-3 individual language and script."""
    return [
        {"text": f"{code} {i} {TEXTS[i % 3]}", "language": code}
        for code, n in FINEWEB2_CODES.items()
        for i in range(n)
    ]


def test_individual_languages_count_as_the_wanted_macrolanguage(tmp_path: Path) -> None:
    assert wanted_form("arb-Arab", {"ar", "de"}) == "ar"
    assert wanted_form("cmn-Hani", {"zh"}) == "zh"
    assert wanted_form("swh-Latn", {"sw"}) == "sw"
    assert wanted_form("arb-Arab", {"arb", "ar"}) == "arb"  # the individual language, if named
    assert wanted_form("arb-Arab", {"de"}) == "arb-Arab"  # not wanted: unchanged
    wanted = ["ar", "de", "sw", "zh"]
    corpus = write_jsonl(tmp_path / "corpus" / "rows.jsonl", fineweb2_rows()).parent
    got = read_documents(corpus, languages=wanted)
    assert Counter(d.language for d in got) == {"ar": 2, "de": 3, "sw": 1, "zh": 2}
    (corpus / "arb.jsonl").write_text(json.dumps({"text": "from a file named arb"}) + "\n")
    assert [d.text for d in read_documents(corpus, languages=["ar"]) if "named" in d.text]


def test_fineweb2_codes_fill_the_wanted_languages_from_files_and_datasets(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    rows = fineweb2_rows()
    files = write_jsonl(tmp_path / "corpus" / "rows.jsonl", rows).parent
    dataset = tmp_path / "hub"
    write_rows(dataset / "data" / "train.parquet", rows)
    write_readme(dataset, {"default": {"train": "data/train.parquet"}})
    wanted = "ar,de,sw,zh"
    from_files = prepare(files, tokenizer_dir, tmp_path / "a", languages=wanted).shards
    from_dataset = prepare(dataset, tokenizer_dir, tmp_path / "b", languages=wanted).shards
    assert counts(from_files) == counts(from_dataset) == {"ar": 2, "de": 3, "sw": 1, "zh": 2}
    for lang in from_files.languages:
        assert documents(from_files, lang) == documents(from_dataset, lang)


def test_the_tokenizer_reads_corpus_files_as_prepare_does(tmp_path: Path) -> None:
    """FineWeb-2 labels fill the wanted macrolanguage, and a save_to_disk dataset's text is in
    the column --text-column names."""
    rows = fineweb2_rows()
    files = write_jsonl(tmp_path / "corpus" / "rows.jsonl", rows).parent
    texts = {"ar": [r["text"] for r in rows if r["language"] == "arb_Arab"]}
    texts["de"] = [r["text"] for r in rows if r["language"] == "deu_Latn"]
    expected = {lang: sum(map(len, texts[lang])) for lang in ("ar", "de")}
    trained = train_tokenizer_on_corpus(files, tmp_path / "a", vocab_size=300, languages="ar,de")
    assert trained.characters == expected
    saved = tmp_path / "saved"
    renamed = [{"content": r["text"], "language": r["language"]} for r in rows]
    datasets.Dataset.from_list(renamed).save_to_disk(saved)
    trained = train_tokenizer_on_corpus(
        saved,
        tmp_path / "b",
        vocab_size=300,
        languages="ar,de",
        reading=SourceOptions(text_column="content"),
    )
    assert trained.characters == expected
