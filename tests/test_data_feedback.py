"""What `xelm data` says when a request cannot be met as asked: a corpus too small for --tokens
or --chars-per-language, languages it lacks, a --cap outside --langs, a file in the wrong
format; and the Python API taking text where the command line does."""

import itertools
import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA
from hub_fixtures import write_readme, write_rows
from transformers import AutoTokenizer

from xelm_cli.cli import run
from xelm_cli.common.errors import UsageError
from xelm_cli.data.corpus import iter_documents
from xelm_cli.data.prepare import prepare
from xelm_cli.data.tokenizer import train_tokenizer_on_corpus

LANGS = ("en", "tr", "ar", "ru")


def records(lang: str, n: int) -> list[dict[str, str]]:
    source = SHARED_DATA / "corpus" / "valid" / f"{lang}.jsonl.zst"
    return [{"text": d.text, "lang": lang} for d in itertools.islice(iter_documents(source), n)]


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    for lang in LANGS:
        write_jsonl(root / f"{lang}.jsonl", records(lang, 20))
    return root


def tokens_by_hand(tokenizer_dir: Path, corpus: Path, lang: str) -> int:
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = [d.text for d in iter_documents(corpus / f"{lang}.jsonl")]
    return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)


def characters_by_hand(corpus: Path, lang: str) -> int:
    return sum(len(d.text) for d in iter_documents(corpus / f"{lang}.jsonl"))


# -- 1. --tokens larger than the corpus --------------------------------------------------------


def test_a_token_budget_the_corpus_cannot_fill_reports_its_shortfall(
    tokenizer_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    en, tr = (tokens_by_hand(tokenizer_dir, corpus, lang) for lang in ("en", "tr"))
    short = prepare(corpus, tokenizer_dir, tmp_path / "a", languages=["en", "tr"], tokens=1_000_000)
    assert short.shards.stats["en"].tokens + short.shards.stats["tr"].tokens == en + tr
    assert short.shortfall == 1_000_000 - (en + tr)
    capped = prepare(
        corpus, tokenizer_dir, tmp_path / "b", languages=["en", "tr"], token_caps={"en": 100},
        tokens=1_000_000,
    )  # fmt: skip
    assert capped.shortfall == 1_000_000 - (100 + tr)
    enough = prepare(corpus, tokenizer_dir, tmp_path / "c", languages=["en", "tr"], tokens=en)
    assert enough.shortfall == 0
    unbounded = prepare(corpus, tokenizer_dir, tmp_path / "d", languages=["en", "tr"])
    assert unbounded.shortfall is None


def test_cli_prepare_warns_of_a_shortfall_in_one_line_and_in_json(
    tokenizer_dir: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    held = sum(tokens_by_hand(tokenizer_dir, corpus, lang) for lang in ("en", "tr"))
    args = ["data", "prepare", str(corpus), "-t", str(tokenizer_dir), "-o", str(tmp_path / "s")]
    assert run([*args, "--langs", "en,tr", "--tokens", "200K", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["tokens"] == held and summary["shortfall"] == 200_000 - held
    assert captured.err.splitlines() == [
        f"xelm: warning: --tokens 200,000 not reached: the corpus holds {held:,} tokens in en, tr"
    ]
    assert run(["data", "inspect", str(tmp_path / "s"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shortfall"] == 200_000 - held
    assert run([*args[:-1], str(tmp_path / "t"), "--langs", "en", "--tokens", "100"]) == 0
    assert "warning" not in capsys.readouterr().err


# -- 2. languages the corpus lacks, caps outside --langs ---------------------------------------


def test_a_missing_language_names_every_language_of_the_corpus(
    tokenizer_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    write_jsonl(corpus / "mixed.jsonl", [{"text": "Guten Tag", "lang": "de"}])
    with pytest.raises(UsageError) as info:
        prepare(corpus, tokenizer_dir, tmp_path / "s", languages=["en", "qu"])
    # ar, ru, tr: files left unread (named for other languages); de: read from mixed.jsonl
    assert "no documents in qu in " in str(info.value)
    assert "(it has 5 languages: ar, de, en, ru, tr)" in str(info.value)
    assert not (tmp_path / "s").exists()


def test_a_cap_outside_langs_is_refused_before_reading(
    tokenizer_dir: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["data", "prepare", str(corpus), "-t", str(tokenizer_dir), "-o", str(tmp_path / "s")]
    assert run([*args, "--langs", "en,tr", "--cap", "en=5K,ar=1K"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        "xelm: error: --cap ar: not in --langs en,tr; add it to --langs or drop its cap"
    ]
    assert not (tmp_path / "s").exists()
    assert run([*args, "--langs", "en,tr", "--cap", "5K,en=1K"]) == 0  # "*" covers --langs


# -- 3. --chars-per-language larger than the corpus --------------------------------------------


def test_tokenizer_training_names_the_languages_short_of_text(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    for lang, n in (("en", 200), ("tr", 10), ("ar", 10)):
        write_jsonl(root / f"{lang}.jsonl", records(lang, n))
    tr, ar = characters_by_hand(root, "tr"), characters_by_hand(root, "ar")
    asked = 2 * max(tr, ar)
    assert characters_by_hand(root, "en") > 2 * asked  # en has enough: sampled, not short
    trained = train_tokenizer_on_corpus(
        root, tmp_path / "tok", vocab_size=300, chars_per_language=asked, languages="en,tr,ar"
    )
    assert trained.short == {"ar": ar, "tr": tr}
    assert trained.characters["ar"] == ar and trained.characters["tr"] == tr


def test_cli_tokenizer_warns_of_short_languages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    for lang in ("en", "tr"):
        write_jsonl(root / f"{lang}.jsonl", records(lang, 5))
    en, tr = characters_by_hand(root, "en"), characters_by_hand(root, "tr")
    out = str(tmp_path / "tok")
    assert run(["data", "tokenizer", str(root), "-o", out, "--vocab-size", "300", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["short"] == {"en": en, "tr": tr}
    assert captured.err.splitlines() == [
        "xelm: warning: every language has less text than --chars-per-language 1,000,000 "
        f"(en {en:,}, tr {tr:,} characters): the tokenizer trains on all of it, so each "
        "language weighs as much as its text, not equally"
    ]
    # one language short of what the others have: it weighs less
    out = str(tmp_path / "tok2")
    asked = str((en + tr) // 2 + 1)  # between the two languages' text
    args = ["data", "tokenizer", str(root), "-o", out, "--vocab-size", "300"]
    assert run([*args, "--chars-per-language", asked]) == 0
    short = {lang: n for lang, n in (("en", en), ("tr", tr)) if n < int(asked)}
    assert len(short) == 1
    ((lang, n),) = short.items()
    assert capsys.readouterr().err.splitlines() == [
        f"xelm: warning: less text than --chars-per-language {int(asked):,} in {lang} {n:,} "
        "characters: the corpus holds no more, so these languages weigh less"
    ]


# -- 4. the Python API takes text as the command line does -------------------------------------


def test_prepare_takes_text_for_languages_counts_and_paths(
    tokenizer_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    as_values = prepare(
        corpus, tokenizer_dir, tmp_path / "a", languages=["tr", "en"], token_caps={"en": 1000},
        tokens=10_000,
    )  # fmt: skip
    as_text = prepare(
        str(corpus), str(tokenizer_dir), str(tmp_path / "b"), languages="en,tr",
        token_caps="en=1K", tokens="10K",
    )  # fmt: skip
    assert as_text.shards.manifest["options"] == as_values.shards.manifest["options"]
    assert as_text.shards.manifest["options"]["languages"] == ["en", "tr"]
    assert as_text.shards.digest == as_values.shards.digest
    for bad, message in ((0, "--tokens must be a positive"), ("lots", "not a token count")):
        with pytest.raises(UsageError, match=message):
            prepare(corpus, tokenizer_dir, tmp_path / "c", tokens=bad)


# -- 5. files in the wrong format, columns that are not there: exit 3 --------------------------


def test_text_in_a_jsonl_file_exits_3_with_a_hint_that_holds(
    tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = "Hello world\nSecond line\n"
    (tmp_path / "notjson.jsonl").write_text(lines)
    (tmp_path / "broken.jsonl").write_text('{"text": broken\n')
    (tmp_path / "plain.txt").write_text(lines)

    def prepare_file(name: str) -> int:
        out = str(tmp_path / f"{name}.shards")
        return run(
            [
                "data",
                "prepare",
                str(tmp_path / name),
                "-t",
                str(tokenizer_dir),
                "-o",
                out,
                "--lang",
                "en",
            ]
        )

    assert prepare_file("notjson.jsonl") == 3
    assert capsys.readouterr().err.splitlines() == [
        f"xelm: error: {tmp_path / 'notjson.jsonl'}:1: not a JSON object "
        "(plain text? name the file .txt)"
    ]
    assert prepare_file("broken.jsonl") == 3  # broken JSON, not text: no hint
    assert capsys.readouterr().err.splitlines() == [
        f"xelm: error: {tmp_path / 'broken.jsonl'}:1: not a JSON object"
    ]
    assert prepare_file("plain.txt") == 0  # the hint's way out: one document a line
    assert (
        json.loads((tmp_path / "plain.txt.shards" / "shards.json").read_text())["languages"]["en"][
            "documents"
        ]
        == 2
    )


def test_a_missing_text_column_exits_3(
    tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    write_rows(repo / "data" / "train.jsonl", [{"text": "Hello", "lang": "en"}])
    write_readme(repo, {"default": {"train": "data/train.jsonl"}})
    out = str(tmp_path / "s")
    args = ["data", "prepare", str(repo), "-t", str(tokenizer_dir), "-o", out]
    assert run([*args, "--text-column", "body"]) == 3
    error = capsys.readouterr().err.splitlines()
    assert len(error) == 1
    way_out = "choose one with --text-column (a recipe's: its text_column)"
    assert f"has no column 'body' (columns: lang, text); {way_out}" in error[0]
