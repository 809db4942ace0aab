"""``xelm data prepare --sizes``: languages' sizes known before reading, so that with --tokens
each streamed language is read only up to its share of the total (not up to the total), a
recipe's ``documents`` as the default sizes, resuming only reads made for the same shares,
and one-line errors for sizes that cannot be used."""

import json
from pathlib import Path
from typing import Any

import pytest
from corpus_helpers import Counting, valid_texts
from hub_fixtures import c4_like
from transformers import AutoTokenizer

from xelm_cli.cli import run
from xelm_cli.common.errors import UsageError
from xelm_cli.data import prepare_work
from xelm_cli.data.budgets import language_budgets, read_limits
from xelm_cli.data.prepare import prepare, token_shortfall
from xelm_cli.data.recipes import load_recipe
from xelm_cli.data.source_plan import SourceOptions

PER_LANGUAGE = SourceOptions(config="{lang}")  # one configuration per language

DOCS = 60  # per language: 2,891 to 6,830 tokens, more than any share below
# square roots 40, 30, 20 and 10: with alpha 0.5 the shares are 0.4, 0.3, 0.2 and 0.1
SIZES: dict[str, float] = {"de": 900, "en": 1600, "fr": 400, "sw": 100}
TOKENS = 2_000
SHARES = {"de": 600, "en": 800, "fr": 400, "sw": 200}  # 2,000 x 0.3, 0.4, 0.2, 0.1
BATCH = 4


@pytest.fixture(scope="module")
def c4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mirror") / "allenai" / "c4"
    return c4_like(root, {lang: valid_texts(lang, DOCS) for lang in SIZES})


@pytest.fixture(scope="module")
def lengths(tokenizer_dir: Path) -> dict[str, list[int]]:
    """Each language's document lengths in tokens, in the stream's order."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    return {
        lang: [len(tok(t, add_special_tokens=False)["input_ids"]) for t in valid_texts(lang, DOCS)]
        for lang in SIZES
    }


def read_up_to(lengths: list[int], limit: int) -> int:
    """The tokens of the leading documents that fit within ``limit``: where reading stops."""
    total = 0
    for n in lengths:
        if total + n > limit:
            break
        total += n
    return total


def source_tokens(manifest: dict[str, Any]) -> dict[str, int]:
    return {lang: e["source_tokens"] for lang, e in manifest["languages"].items()}


STREAM: dict[str, Any] = {
    "languages": "en,de,fr,sw",
    "reading": PER_LANGUAGE,
    "alpha": 0.5,
    "tokens": TOKENS,
}


def test_each_streamed_language_is_read_only_up_to_its_share_of_tokens(
    c4: Path, tokenizer_dir: Path, tmp_path: Path, lengths: dict[str, list[int]]
) -> None:
    result = prepare(c4, tokenizer_dir, tmp_path / "sized", sizes=SIZES, **STREAM)
    manifest = result.shards.manifest
    assert source_tokens(manifest) == {
        lang: read_up_to(lengths[lang], share) for lang, share in SHARES.items()
    }
    for entry in manifest["languages"].values():
        assert entry["read_to_limit"] is True
        assert entry["tokens"] == entry["source_tokens"]  # all that was read is kept
        assert entry["budget"] is None
    assert manifest["options"]["sizes"] == SIZES
    assert result.shortfall == 0
    # without sizes every language is read up to the whole --tokens, 4 times the budget
    unsized = prepare(c4, tokenizer_dir, tmp_path / "unsized", **STREAM).shards.manifest
    assert source_tokens(unsized) == {lang: read_up_to(lengths[lang], TOKENS) for lang in SIZES}
    assert "sizes" not in unsized["options"]


def test_read_limits_are_the_shares_water_filled_within_the_caps() -> None:
    assert read_limits(None, TOKENS, sizes=SIZES, alpha=0.5) == SHARES
    # de capped at 500: the other 1,500 go to en, fr, sw as 4 : 2 : 1
    capped = {"de": 500, "en": 857, "fr": 428, "sw": 214}  # 1,500 x 4/7, 2/7, 1/7
    assert read_limits({"de": 500}, TOKENS, sizes=SIZES, alpha=0.5) == capped
    tokens_read = {lang: TOKENS for lang in SIZES}  # what the budgets would be, had all held more
    assert language_budgets(
        tokens_read, caps={"de": 500}, alpha=0.5, total=TOKENS, sizes=SIZES
    ) == (capped)
    assert read_limits({"de": 500}, TOKENS) == {"de": 500, "*": TOKENS}  # without sizes: as before


def test_a_language_short_of_its_share_is_kept_whole_and_the_others_read_further(
    tokenizer_dir: Path,
    tmp_path: Path,
    lengths: dict[str, list[int]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """sw's share of 1,000 tokens is 500 but it holds 374: kept whole, and en, read to its own
    500 first, is read further from where it stopped (the document that did not fit, in the
    batch that reached 500) up to 1,000 - 374 = 626, so --tokens is reached (but for the whole
    documents under en's limit): en holds the same documents as a run capped at 626."""
    mirror = c4_like(tmp_path / "c4", {"en": valid_texts("en", DOCS), "sw": valid_texts("sw", 3)})
    held = sum(lengths["sw"][:3])  # 374 tokens
    out = tmp_path / "s"
    command = ["data", "prepare", str(mirror), "--config", "{lang}", "--langs", "en,sw",
               "--sizes", "en=1,sw=1", "--tokens", "1000", "--batch-size", str(BATCH),
               "-t", str(tokenizer_dir), "-o", str(out), "--json"]  # fmt: skip
    assert run(command) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["languages"]["sw"]["read_to_limit"] is False
    assert summary["languages"]["sw"]["tokens"] == held  # kept whole
    assert summary["languages"]["en"]["read_to_limit"] is True
    en = read_up_to(lengths["en"], 1000 - held)
    assert summary["languages"]["en"]["source_tokens"] == en > read_up_to(lengths["en"], 500)
    assert summary["shortfall"] == 0
    assert captured.err.splitlines()[-1] == (
        f"xelm: warning: sw held fewer tokens than its share of --tokens by --sizes (sw {held} of "
        "500): kept whole, the other languages read further in its place"
    )


def documents(shards: Any, language: str) -> list[list[int]]:
    return [d.tolist() for d in shards.iter_documents([language])]


@pytest.mark.parametrize("batch", [BATCH, 7])
def test_a_language_read_further_holds_the_documents_of_a_run_to_its_new_limit(
    tokenizer_dir: Path,
    tmp_path: Path,
    lengths: dict[str, list[int]],
    batch: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """en fills its first share (500) partway through a batch; read further for sw, it goes on
    from the document that did not fit, not from the batch after (which skipped the rest of
    that batch): it holds the very documents of a run capped at its new limit (626), in
    order, and so does a run killed while reading further and run again."""
    mirror = c4_like(tmp_path / "c4", {"en": valid_texts("en", DOCS), "sw": valid_texts("sw", 3)})
    limit = 1000 - sum(lengths["sw"][:3])
    options: dict[str, Any] = {
        "reading": PER_LANGUAGE, "languages": "en,sw", "sizes": "en=1,sw=1", "tokens": 1000,
        "batch_size": batch,
    }  # fmt: skip
    made_up = prepare(mirror, tokenizer_dir, tmp_path / "m", **options).shards
    direct = prepare(mirror, tokenizer_dir, tmp_path / "d", reading=PER_LANGUAGE, languages="en",
                     token_caps={"en": limit}, batch_size=batch).shards  # fmt: skip
    assert documents(made_up, "en") == documents(direct, "en")
    assert sum(map(len, documents(made_up, "en"))) == read_up_to(lengths["en"], limit)
    monkeypatch.setattr(prepare_work, "CHECKPOINT_SECONDS", 0.0)
    counted = Counting()
    prepare(mirror, tokenizer_dir, tmp_path / "c", progress=counted, **options)
    for stop in range(2, len(counted.seen) + 1, 2):
        out = tmp_path / f"killed-{stop}"
        with pytest.raises(KeyboardInterrupt):
            prepare(mirror, tokenizer_dir, out, progress=Counting(stop), **options)
        again = prepare(mirror, tokenizer_dir, out, **options).shards
        assert documents(again, "en") == documents(direct, "en"), stop


def test_when_every_language_is_short_the_shortfall_says_by_how_much(
    tokenizer_dir: Path,
    tmp_path: Path,
    lengths: dict[str, list[int]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    mirror = c4_like(tmp_path / "c4", {"en": valid_texts("en", 4), "sw": valid_texts("sw", 3)})
    held = {"en": sum(lengths["en"][:4]), "sw": sum(lengths["sw"][:3])}
    result = prepare(mirror, tokenizer_dir, tmp_path / "s", reading=PER_LANGUAGE, languages="en,sw",
                     sizes="en=1,sw=1", tokens=100_000)  # fmt: skip
    assert source_tokens(result.shards.manifest) == held
    assert result.shortfall == 100_000 - sum(held.values())
    assert (
        f"xelm: warning: en, sw held fewer tokens than their share of --tokens by --sizes (en "
        f"{held['en']:,} of 50,000, sw {held['sw']:,} of 50,000): kept whole, the others could "
        f"not make up {result.shortfall:,} tokens of it (read to their end or --cap)"
    ) in capsys.readouterr().err.splitlines()


def test_a_run_killed_while_reading_further_continues_with_the_made_up_limits(
    tokenizer_dir: Path,
    tmp_path: Path,
    lengths: dict[str, list[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stopped in the second reading of en (after sw ran out), a rerun continues it to the
    made-up limit, not to en's first share, and keeps what the first reading wrote."""
    monkeypatch.setattr(prepare_work, "CHECKPOINT_SECONDS", 0.0)
    mirror = c4_like(tmp_path / "c4", {"en": valid_texts("en", DOCS), "sw": valid_texts("sw", 3)})
    held = sum(lengths["sw"][:3])
    options: dict[str, Any] = {"reading": PER_LANGUAGE, "languages": "en,sw", "sizes": "en=1,sw=1",
                               "tokens": 1000, "batch_size": BATCH}  # fmt: skip
    whole = prepare(mirror, tokenizer_dir, tmp_path / "whole", **options).shards
    first = Counting()
    prepare(mirror, tokenizer_dir, tmp_path / "count", progress=first, **options)
    second_reading = next(i for i, (lang, _) in enumerate(first.seen) if lang == "sw") + 2
    with pytest.raises(KeyboardInterrupt):
        prepare(mirror, tokenizer_dir, tmp_path / "s", progress=Counting(second_reading),
                **options)  # fmt: skip
    state = json.loads((tmp_path / ".s.prepare" / "state.json").read_text())
    assert state["notes"]["read limits made up for languages short of their shares"]["en"] == (
        1000 - held
    )
    rest = Counting()
    result = prepare(mirror, tokenizer_dir, tmp_path / "s", progress=rest, **options)
    assert rest.seen[0][0] == "en" and rest.seen[0][1] > 0  # continued, not from the start
    assert result.shards.manifest["languages"] == whole.manifest["languages"]
    assert source_tokens(result.shards.manifest)["en"] == read_up_to(lengths["en"], 1000 - held)


def test_a_share_below_the_first_document_is_one_line_naming_tokens(
    c4: Path, tokenizer_dir: Path, tmp_path: Path, lengths: dict[str, list[int]]
) -> None:
    first = lengths["sw"][0]
    with pytest.raises(UsageError) as caught:
        prepare(
            c4,
            tokenizer_dir,
            tmp_path / "s",
            languages="en,sw",
            reading=PER_LANGUAGE,
            tokens=1000,
            sizes={"en": 10_000, "sw": 1},
        )
    assert str(caught.value) == (
        f"a budget (--tokens shared by --sizes) of 0 tokens is below the first document of sw "
        f"({first} tokens): raise --tokens or drop sw from --langs"
    )


def test_sizes_weigh_corpus_files_in_place_of_their_token_counts(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for lang in ("en", "fr"):
        lines = [json.dumps({"text": t}) for t in valid_texts(lang, DOCS)]
        (corpus / f"{lang}.jsonl").write_text("\n".join(lines) + "\n")
    shards = prepare(corpus, tokenizer_dir, tmp_path / "s", languages="en,fr", tokens=1000,
                     sizes="en=3,fr=1").shards  # fmt: skip
    budgets = {lang: e["budget"] for lang, e in shards.manifest["languages"].items()}
    assert budgets == {"en": 750, "fr": 250}  # read whole, then 1,000 x 3/4 and 1/4


def test_corpus_files_short_of_tokens_are_held_whole_not_within_shares(
    tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for lang in ("en", "fr"):
        lines = [json.dumps({"text": t}) for t in valid_texts(lang, 5)]
        (corpus / f"{lang}.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "s"
    command = ["data", "prepare", str(corpus), "--langs", "en,fr", "--sizes", "en=3,fr=1",
               "--tokens", "100K", "-t", str(tokenizer_dir), "-o", str(out)]  # fmt: skip
    assert run(command) == 0
    held = sum(
        e["tokens"] for e in json.loads((out / "shards.json").read_text())["languages"].values()
    )
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"xelm: warning: --tokens 100,000 not reached: the corpus holds {held:,} tokens in en, fr"
    )


# -- recipes -------------------------------------------------------------------------------------


def write_recipe(path: Path, c4: Path, documents: dict[str, float]) -> Path:
    languages = {
        lang: ({"documents": documents[lang]} if lang in documents else {}) for lang in SIZES
    }
    recipe = {
        "format": "xelm-corpus-recipe",
        "format_version": "1.1.0",
        "defaults": {"dataset": str(c4), "config": "{lang}"},
        "languages": languages,
    }
    path.write_text(json.dumps(recipe))
    return path


def test_a_recipes_documents_are_the_default_sizes_and_given_sizes_win(
    c4: Path,
    tokenizer_dir: Path,
    tmp_path: Path,
    lengths: dict[str, list[int]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    recipe = write_recipe(tmp_path / "sized.json", c4, SIZES)
    weighed: dict[str, Any] = {"alpha": 0.5, "tokens": TOKENS}
    manifest = prepare(recipe, tokenizer_dir, tmp_path / "recipe", **weighed).shards.manifest
    assert manifest["options"]["sizes"] == SIZES
    assert source_tokens(manifest) == {
        lang: read_up_to(lengths[lang], share) for lang, share in SHARES.items()
    }
    equal: dict[str, float] = {lang: 1 for lang in SIZES}
    given = prepare(recipe, tokenizer_dir, tmp_path / "given", sizes=equal, **weighed)
    assert given.shards.manifest["options"]["sizes"] == equal
    assert source_tokens(given.shards.manifest) == {
        lang: read_up_to(lengths[lang], TOKENS // 4) for lang in SIZES
    }
    capsys.readouterr()
    unsized = write_recipe(tmp_path / "unsized.json", c4, {"en": 1600, "de": 900, "fr": 400})
    manifest = prepare(unsized, tokenizer_dir, tmp_path / "unsized", **weighed).shards.manifest
    assert "sizes" not in manifest["options"]  # sw has none: weighed by the tokens read
    assert source_tokens(manifest) == {lang: read_up_to(lengths[lang], TOKENS) for lang in SIZES}
    assert capsys.readouterr().err.splitlines() == [
        "xelm: warning: --alpha weighs de, en, fr, sw by the tokens read up to the read limit "
        "(--cap, else --tokens), not by size; give --sizes (en=3.07B,de=397M: documents, bytes "
        "or tokens) to weigh each language by its size and read only its share"
    ]


def test_the_shipped_recipes_give_sizes_in_documents_where_their_size_text_has_them() -> None:
    mc4 = load_recipe("mc4")
    assert mc4.sizes(["ar", "en", "sw"]) is None  # mC4's sw has no size
    assert mc4.sizes(["ar", "en", "az"]) == {"ar": 53_300_000, "en": 3_070_000_000, "az": 5_280_000}
    fineweb2 = load_recipe("fineweb2")
    assert fineweb2.sizes(["sw", "de"]) == {"sw": 1_210_000, "de": 496_000_000}
    assert fineweb2.sizes(["en"]) is None  # sample-10BT's size is in tokens, not documents
    assert load_recipe("wikipedia").sizes(["en"]) == {"en": 6_400_000}


# -- resuming ------------------------------------------------------------------------------------


def test_a_rerun_with_other_sizes_starts_afresh_and_with_the_same_continues(
    c4: Path,
    tokenizer_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(prepare_work, "CHECKPOINT_SECONDS", 0.0)
    options: dict[str, Any] = {**STREAM, "batch_size": BATCH}

    def interrupted(out: Path) -> None:
        """Stopped in its 2nd batch: the work records de's first batch."""
        with pytest.raises(KeyboardInterrupt):
            prepare(c4, tokenizer_dir, out, sizes=SIZES, progress=Counting(2), **options)

    interrupted(tmp_path / "same")
    progress = Counting()
    prepare(c4, tokenizer_dir, tmp_path / "same", sizes=SIZES, progress=progress, **options)
    # continued after the batch kept: 3 more documents reach de's share, 600 tokens
    assert progress.seen[0] == ("de", BATCH + 3)
    assert "discarding" not in capsys.readouterr().err
    interrupted(tmp_path / "other")
    other = {**SIZES, "sw": 400}
    progress = Counting()
    result = prepare(
        c4, tokenizer_dir, tmp_path / "other", sizes=other, progress=progress, **options
    )
    assert progress.seen[0] == ("de", BATCH)  # read from the start
    work = tmp_path / ".other.prepare"
    assert capsys.readouterr().err.splitlines() == [
        f"xelm: warning: discarding the work of an earlier run in {work} (other read limits "
        "(--cap, --tokens, --sizes, --alpha)): starting afresh"
    ]
    assert result.shards.manifest["options"]["sizes"] == other


# -- bad input -----------------------------------------------------------------------------------


NOT_A_SIZE = "a size is a positive number such as 3.07B, 397M or 1.1M"


@pytest.mark.parametrize(
    ("sizes", "weighed", "message"),
    [
        ("en=abc,sw=1", True, f"--sizes en=abc: {NOT_A_SIZE}"),
        ("en=0,sw=1", True, f"--sizes en=0: {NOT_A_SIZE}"),
        ("en=-5,sw=1", True, f"--sizes en=-5: {NOT_A_SIZE}"),
        ("en,sw=1", True, "--sizes en: give LANG=SIZE pairs such as en=3.07B,de=397M"),
        (
            "en=1,sw=1,de=2",
            True,
            "--sizes de: not in --langs en,sw; add it to --langs or drop its size",
        ),
        (
            "en=1",
            True,
            "--sizes has no size for sw: give one for every language read (--langs, else the "
            "recipe's), in one unit (documents, bytes or tokens)",
        ),
        (
            "en=1,sw=1",
            False,
            "--sizes weighs the languages for --tokens and --alpha: give either, or drop --sizes",
        ),
    ],
)
def test_sizes_that_cannot_be_used_are_one_line_and_nothing_is_written(
    c4: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sizes: str,
    weighed: bool,
    message: str,
) -> None:
    budget = ["--tokens", "2000"] if weighed else []
    out = tmp_path / "s"
    command = ["data", "prepare", str(c4), "--config", "{lang}", "--langs", "en,sw",
               "--sizes", sizes, *budget, "-t", "unused", "-o", str(out)]  # fmt: skip
    assert run(command) == 2
    assert capsys.readouterr().err == f"xelm: error: {message}\n"
    assert not out.exists()


def test_sizes_given_in_python_are_checked_as_on_the_command_line(
    c4: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match=r"^--sizes sw=0: a size is a positive number"):
        prepare(c4, tokenizer_dir, tmp_path / "s", sizes={"en": 1, "sw": 0}, **STREAM)
    with pytest.raises(UsageError, match=r"^--sizes needs --langs"):
        prepare(c4, tokenizer_dir, tmp_path / "s", tokens=10, sizes={"en": 1})


def test_a_language_that_runs_out_while_reading_further_is_made_up_for_in_turn(
    tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sw (3 documents) is short of its third of 3,000 tokens; de, read further in its place,
    runs out in turn; en is read further again, so --tokens is reached but for whole
    documents. A run killed at any point and run again gives the same shards."""
    monkeypatch.setattr(prepare_work, "CHECKPOINT_SECONDS", 0.0)
    mirror = c4_like(
        tmp_path / "c4",
        {"en": valid_texts("en", DOCS), "de": valid_texts("de", 18), "sw": valid_texts("sw", 3)},
    )
    options: dict[str, Any] = {
        "reading": PER_LANGUAGE, "languages": "en,de,sw", "sizes": "en=1,de=1,sw=1", "tokens": 3000,
        "batch_size": BATCH,
    }  # fmt: skip
    counted = Counting()
    whole = prepare(mirror, tokenizer_dir, tmp_path / "whole", progress=counted, **options)
    languages = whole.shards.manifest["languages"]
    assert [languages[lang]["read_to_limit"] for lang in ("en", "de", "sw")] == [True, False, False]
    held = sum(languages[lang]["tokens"] for lang in ("de", "sw"))
    longest = max(len(t) for t in valid_texts("en", DOCS))  # more than any en document's tokens
    assert 3000 - longest < languages["en"]["tokens"] + held <= 3000
    assert whole.shortfall == 0
    for stop in range(1, len(counted.seen) + 1, 3):
        out = tmp_path / f"killed-{stop}"
        with pytest.raises(KeyboardInterrupt):
            prepare(mirror, tokenizer_dir, out, progress=Counting(stop), **options)
        again = prepare(mirror, tokenizer_dir, out, **options)
        assert again.shards.manifest["languages"] == languages, stop


def test_shards_of_format_1_2_count_the_shortfall_as_they_were_read(
    tokenizer_dir: Path, tmp_path: Path, lengths: dict[str, list[int]]
) -> None:
    """Before 1.3 a language short of its share was not made up for: the shortfall of such a
    manifest counts the others at their first shares (en's 500), as the code that wrote it."""
    mirror = c4_like(tmp_path / "c4", {"en": valid_texts("en", DOCS), "sw": valid_texts("sw", 3)})
    result = prepare(mirror, tokenizer_dir, tmp_path / "s", reading=PER_LANGUAGE, languages="en,sw",
                     sizes="en=1,sw=1", tokens=1000, batch_size=BATCH)  # fmt: skip
    assert token_shortfall(result.shards.manifest) == 0
    manifest = result.shards.manifest
    en = {**manifest["languages"]["en"], "source_tokens": read_up_to(lengths["en"], 500)}
    older = {  # what 1.2.0 wrote: en read to its share alone
        **manifest,
        "format_version": "1.2.0",
        "languages": {**manifest["languages"], "en": en},
    }
    assert token_shortfall(older) == 500 - sum(lengths["sw"][:3])
    assert token_shortfall({**older, "format_version": "1.3.0"}) == 0  # en counted at 626


def test_an_interrupted_run_leaves_no_write_pending_for_a_rerun_in_the_same_process(
    tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in a notebook, then the same call again: the interrupted run closes its files as
    it raises (the batch it wrote after its last checkpoint is on disk, beyond the recorded
    count, which a rerun cuts off), so no buffered write of it can land later in the files the
    rerun appends to (collected later, it did: about one rerun in six gave shards whose tokens
    disagreed with their offsets)."""
    monkeypatch.setattr(prepare_work, "CHECKPOINT_SECONDS", 0.0)
    mirror = c4_like(tmp_path / "c4", {"en": valid_texts("en", DOCS)})
    options: dict[str, Any] = {"reading": PER_LANGUAGE, "languages": "en", "batch_size": BATCH}
    out = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        prepare(mirror, tokenizer_dir, out, progress=Counting(2), **options)
    work = tmp_path / ".s.prepare"
    recorded = json.loads((work / "state.json").read_text())["languages"]["en"]["tokens"]
    assert (work / "en.tokens.bin").stat().st_size > recorded * 2  # uint16 tokens
    again = prepare(mirror, tokenizer_dir, out, **options).shards
    assert (
        again.manifest["languages"]
        == prepare(mirror, tokenizer_dir, tmp_path / "whole", **options).shards.manifest[
            "languages"
        ]
    )
