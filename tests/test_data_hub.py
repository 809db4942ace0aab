"""Data preparation from datasets laid out like Hub repositories: per-language configurations,
streaming with caps, recipes, resume after an interruption, and broken sources."""

import gzip
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from corpus_helpers import valid_texts
from hub_fixtures import c4_like, write_readme, write_rows
from transformers import AutoTokenizer

from xelm_cli.cli import run
from xelm_cli.common.errors import FormatError, UsageError
from xelm_cli.data import prepare_work
from xelm_cli.data.corpus import iter_documents
from xelm_cli.data.prepare import prepare
from xelm_cli.data.recipes import load_recipe, shipped_recipes
from xelm_cli.data.shards import Shards
from xelm_cli.data.source_plan import SourceOptions
from xelm_cli.data.sources import DatasetSource, SourceUnavailable

CODES = {"ar": "ar", "bg": "bg", "he": "iw"}  # xelm code -> mC4's
DOCS = 24


@pytest.fixture(scope="module")
def c4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """allenai/c4's layout: each language's documents as gzipped JSON lines in two files."""
    root = tmp_path_factory.mktemp("mirror") / "allenai" / "c4"
    return c4_like(root, {CODES[lang]: valid_texts(lang, DOCS) for lang in CODES})


def token_counts(tokenizer_dir: Path, documents: list[str]) -> list[int]:
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    return [len(tok(t, add_special_tokens=False)["input_ids"]) for t in documents]


def decoded(shards: Shards, lang: str, tokenizer_dir: Path) -> list[str]:
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    return [tok.decode(d.tolist()) for d in shards.iter_documents([lang])]


def issue_command(source: str, tokenizer: Path, out: Path, *extra: str) -> list[str]:
    """The command line of issue 14, as written."""
    return [
        "data", "prepare", source, "--config", "{lang}", "--langs", "ar,bg,he",
        "--lang-map", "he=iw", "--cap", "100M", "--tokenizer", str(tokenizer), "-o", str(out),
        *extra,
    ]  # fmt: skip


def test_the_issue_command_line_reads_each_language_configuration(
    c4: Path, tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shards"
    assert run(issue_command(str(c4), tokenizer_dir, out, "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(report["languages"]) == ["ar", "bg", "he"]
    shards = Shards.open(out)
    for lang in CODES:  # every document, in stream order, decoded back to the text
        assert decoded(shards, lang, tokenizer_dir) == valid_texts(lang, DOCS)
        assert shards.stats[lang].tokens == sum(
            token_counts(tokenizer_dir, valid_texts(lang, DOCS))
        )
    source = shards.manifest["source"]
    assert source["kind"] == "recipe"
    assert source["languages"]["he"]["config"] == "iw"
    assert source["languages"]["bg"]["data_files"] == 2
    assert shards.manifest["options"]["lang_map"] == {"he": "iw"}
    assert run(issue_command(str(c4), tokenizer_dir, out)) == 0  # a re-run does nothing
    assert "up to date" in capsys.readouterr().out


def test_a_hub_id_and_its_local_copy_give_the_same_shards(
    c4: Path, tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = prepare(
        c4,
        tokenizer_dir,
        tmp_path / "local",
        languages=["ar", "he"],
        reading=SourceOptions(config="{lang}", lang_map={"he": "iw"}),
    ).shards
    monkeypatch.setenv("XELM_HUB_MIRROR", str(c4.parent.parent))
    monkeypatch.chdir(tmp_path)
    hub = prepare("allenai/c4", tokenizer_dir, tmp_path / "hub", languages=["ar", "he"],
                  reading=SourceOptions(config="{lang}", lang_map={"he": "iw"})).shards  # fmt: skip
    assert hub.manifest["source"]["path"] == "allenai/c4"
    for lang in ("ar", "he"):
        for kind in ("tokens", "offsets"):
            name = f"{lang}.{kind}.bin"
            assert (hub.path / name).read_bytes() == (local.path / name).read_bytes()


def test_a_cap_stops_reading_at_the_first_document_over_it(
    c4: Path, tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lengths = token_counts(tokenizer_dir, valid_texts("ar", DOCS))
    cap = sum(lengths[:5]) + lengths[5] // 2  # five documents fit, the sixth does not
    shards = prepare(
        c4,
        tokenizer_dir,
        tmp_path / "s",
        languages=["ar", "bg"],
        reading=SourceOptions(config="{lang}"),
        token_caps={"ar": cap, "bg": 10**9},
    ).shards
    entry = shards.manifest["languages"]["ar"]
    assert (entry["documents"], entry["tokens"]) == (5, sum(lengths[:5]))
    assert entry["read_to_limit"] is True
    assert decoded(shards, "ar", tokenizer_dir) == valid_texts("ar", 5)  # the stream's first five
    assert shards.manifest["languages"]["bg"]["read_to_limit"] is False
    assert shards.stats["bg"].documents == DOCS
    # the table gives ar's share of what was read, marked so: the stream holds more than 100%
    capsys.readouterr()
    assert run(["data", "inspect", str(shards.path)]) == 0
    out = capsys.readouterr().out
    ar = next(line for line in out.splitlines() if line.startswith("│ ar "))
    bg = next(line for line in out.splitlines() if line.startswith("│ bg "))
    assert "100%*" in ar and "100% " in bg and "*" not in bg
    assert "* of the tokens read: reading stopped at the language's token limit" in out


def test_a_limit_below_the_first_document_is_one_line_naming_its_option(
    c4: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    first = token_counts(tokenizer_dir, valid_texts("bg", DOCS)[:1])[0]
    out = tmp_path / "s"
    cap_line = (
        f"a cap of {first - 1:,} tokens is below the first document of bg ({first:,} tokens): "
        "raise --cap bg=... or drop bg from --langs"
    )
    caps = {"ar": 10**9, "bg": first - 1}  # ar is read whole first: no "continues" for bg
    per_language: dict[str, object] = {
        "languages": "ar,bg",
        "reading": SourceOptions(config="{lang}"),
    }
    with pytest.raises(UsageError, match=f"^{re.escape(cap_line)}$"):
        prepare(c4, tokenizer_dir, out, token_caps=caps, **per_language)
    with pytest.raises(UsageError, match=r"^a budget \(--tokens\) of .* raise --tokens or drop"):
        prepare(c4, tokenizer_dir, out, tokens=first - 1, **per_language)
    assert not (tmp_path / ".s.prepare").exists() and not out.exists()


def test_temperature_sampling_of_streamed_languages(
    c4: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    total = 2000
    shards = prepare(
        c4,
        tokenizer_dir,
        tmp_path / "s",
        languages=["ar", "bg", "he"],
        reading=SourceOptions(config="{lang}", lang_map={"he": "iw"}),
        alpha=0.3,
        tokens=total,
        seed=3,
    ).shards
    read = {lang: e["source_tokens"] for lang, e in shards.manifest["languages"].items()}
    weights = {lang: n**0.3 for lang, n in read.items()}
    for lang, entry in shards.manifest["languages"].items():
        assert entry["source_tokens"] == min(
            total, sum(token_counts(tokenizer_dir, valid_texts(lang, DOCS)))
        )
        if entry["budget"] is not None:
            assert entry["tokens"] <= entry["budget"]
            share = total * weights[lang] / sum(weights.values())
            assert entry["budget"] <= share + 1
    assert sum(s.tokens for s in shards.stats.values()) <= total


def test_shipped_mc4_recipe_from_a_mirror(
    tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    recipe = load_recipe("mc4")
    assert len(recipe.languages) == 20
    assert recipe.source("he").config == "iw"  # type: ignore[union-attr]
    mirror = tmp_path / "mirror"
    chosen = {"ar": "ar", "he": "iw", "sw": "sw", "en": "en-multi"}
    c4_like(
        mirror / "allenai" / "c4", {code: valid_texts(lang, 8) for lang, code in chosen.items()}
    )
    monkeypatch.setenv("XELM_HUB_MIRROR", str(mirror))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "shards"
    argv = ["data", "prepare", "mc4", "--langs", ",".join(chosen), "--cap", "300",
            "-t", str(tokenizer_dir), "-o", str(out), "--json"]  # fmt: skip
    assert run(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(report["languages"]) == sorted(chosen)
    assert all(0 < e["tokens"] <= 300 for e in report["languages"].values())
    assert Shards.open(out).manifest["source"]["name"] == "mc4"
    assert run(["data", "recipes", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in listed} == set(shipped_recipes())
    mc4 = next(r for r in listed if r["name"] == "mc4")
    assert mc4["languages"]["he"]["config"] == "iw"


def test_a_recipe_mixes_datasets_and_local_files(
    c4: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    local = tmp_path / "recipe" / "local"
    local.mkdir(parents=True)
    fineweb = tmp_path / "fineweb-2"  # FineWeb-2's layout: parquet per language configuration
    write_rows(
        fineweb / "data" / "bul_Cyrl" / "train" / "000_00000.parquet",
        [{"text": t, "id": str(i)} for i, t in enumerate(valid_texts("bg", 5))],
    )
    write_readme(fineweb, {"bul_Cyrl": {"train": "data/bul_Cyrl/train/*.parquet"}})
    (local / "sv.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in valid_texts("sv", 6))
    )
    recipe = {
        "format": "xelm-corpus-recipe",
        "format_version": "1.0.0",
        "name": "mixed",
        "defaults": {"dataset": str(c4), "config": "{lang}"},
        "languages": {"ar": {}, "he": {"code": "iw", "split": "validation"},
                      "sv": {"path": "local/sv.jsonl"},
                      "bg": {"dataset": str(fineweb), "config": "bul_Cyrl"}},
    }  # fmt: skip
    path = tmp_path / "recipe" / "mixed.json"
    path.write_text(json.dumps(recipe))
    shards = prepare(path, tokenizer_dir, tmp_path / "s").shards
    assert shards.languages == ["ar", "bg", "he", "sv"]
    assert decoded(shards, "bg", tokenizer_dir) == valid_texts("bg", 5)
    assert shards.stats["he"].documents == 3  # the validation split
    assert decoded(shards, "sv", tokenizer_dir) == valid_texts("sv", 6)
    recipe["languages"]["ar"] = {"path": "x", "dataset": "y"}
    path.write_text(json.dumps(recipe))
    with pytest.raises(FormatError, match=r"recipe mixed\.json is not valid: recipe languages/ar"):
        prepare(path, tokenizer_dir, tmp_path / "s2")


def test_an_interrupted_stream_resumes_to_the_same_shards(
    c4: Path, tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reading = SourceOptions(config="{lang}", lang_map={"he": "iw"})
    options = {"languages": ["ar", "bg", "he"], "reading": reading, "batch_size": 4}
    whole = prepare(c4, tokenizer_dir, tmp_path / "whole", **options).shards
    monkeypatch.setattr(prepare_work, "CHECKPOINT_SECONDS", 0.0)
    real_add, rows = DatasetSource._add, itertools.count()

    def flaky(self, batch, row, number, default):  # type: ignore[no-untyped-def]
        if next(rows) == 30:  # the network goes away in bg's stream (ar has 24 rows)
            raise ConnectionError("Connection reset by peer")
        real_add(self, batch, row, number, default)

    monkeypatch.setattr(DatasetSource, "_add", flaky)
    out = tmp_path / "resumed"
    with pytest.raises(SourceUnavailable, match="run the same command again to continue"):
        prepare(c4, tokenizer_dir, out, **options)
    assert not out.exists()
    state = json.loads((tmp_path / ".resumed.prepare" / "state.json").read_text())
    assert state["sources"]["ar"]["done"] and not state["sources"]["bg"]["done"]
    assert 0 < state["languages"]["bg"]["documents"] < DOCS
    read_again: list[tuple[str, int]] = []

    def counted(self, batch, row, number, default):  # type: ignore[no-untyped-def]
        read_again.append((self.config, number))
        real_add(self, batch, row, number, default)

    monkeypatch.setattr(DatasetSource, "_add", counted)
    resumed = prepare(c4, tokenizer_dir, out, **options).shards
    done = state["sources"]["bg"]["position"]["rows"]
    assert [n for config, n in read_again if config == "bg"] == list(range(done + 1, DOCS + 1))
    assert not [n for config, n in read_again if config == "ar"]  # finished: not read again
    assert not (tmp_path / ".resumed.prepare").exists()
    for lang in ("ar", "bg", "he"):
        for kind in ("tokens", "offsets"):
            name = f"{lang}.{kind}.bin"
            assert (resumed.path / name).read_bytes() == (whole.path / name).read_bytes()


def test_only_the_requested_languages_files_are_read(tokenizer_dir: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "en.jsonl").write_text(json.dumps({"text": "Hello there."}) + "\n")
    (corpus / "tr.jsonl.zst").write_bytes(b"not zstd at all")  # would fail if read
    shards = prepare(corpus, tokenizer_dir, tmp_path / "s", languages=["en"]).shards
    assert shards.languages == ["en"]
    assert [f["name"] for f in shards.manifest["source"]["files"]] == ["en.jsonl"]


# -- reading in columnar batches ------------------------------------------------------------


def test_a_stream_resumes_exactly_after_every_batch(tmp_path: Path) -> None:
    """Arrow batches cross file and row-group boundaries; a position taken after any batch
    continues with the next row, also when the run that resumes asks for another batch size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = {"ar": [f"ar {i} " + "x" * (i % 5) for i in range(61)]}
    c4_root = c4_like(tmp_path / "c4", docs, files_per_language=3)
    (tmp_path / "pq" / "data").mkdir(parents=True)
    rows = [{"text": f"t{i}"} for i in range(700)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pq/data/a.parquet", row_group_size=90)
    write_rows(tmp_path / "pq" / "data" / "b.parquet", [{"text": f"u{i}"} for i in range(11)])
    write_readme(tmp_path / "pq", {"default": {"train": "data/*.parquet"}})
    for source in (
        DatasetSource(str(c4_root), config="ar", language="ar"),
        DatasetSource(str(tmp_path / "pq"), language="en"),
    ):
        whole = [t for batch in source.open() for t in batch.texts]
        assert len(whole) in (61, 711)
        for size in (7, 64):
            stream = source.open(batch_size=size)
            read: list[str] = []
            for batch in stream:
                read += batch.texts
                position = stream.position
                assert position["rows"] == len(read)
                rest = [t for b in source.open(position, batch_size=5) for t in b.texts]
                assert read + rest == whole
            assert read == whole


def test_a_repository_mixing_parquet_and_json_lines_reads_each_in_its_format(
    tmp_path: Path,
) -> None:
    """datasets reads every configuration of a repository in its most common format; a
    configuration whose files are in another (here the one parquet language among JSON lines
    ones) is read with the builder of its own files."""
    docs = {code: [f"{code} document {i}" for i in range(5)] for code in ("ar", "tr", "ru")}
    root = c4_like(tmp_path / "c4", docs, parquet=["ru"])
    for code, expected in docs.items():
        source = DatasetSource(str(root), config=code, language=code)
        assert [t for batch in source.open() for t in batch.texts] == expected, code
    validation = DatasetSource(str(root), config="ru", split="validation", language="ru")
    assert [row["text"] for row in validation.rows()] == docs["ru"][:3]


def test_the_tokenizer_streams_a_hub_dataset_and_stops_at_enough_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    many = [f"Merhaba dünya, belge {i}." for i in range(2500)]
    mirror = tmp_path / "mirror"
    c4_like(mirror / "allenai" / "c4",
            {"ar": valid_texts("ar", 200), "tr": many, "iw": valid_texts("he", 200)},
            files_per_language=3)  # fmt: skip
    monkeypatch.setenv("XELM_HUB_MIRROR", str(mirror))
    monkeypatch.chdir(tmp_path)
    read: dict[str | None, int] = {}
    real_add = DatasetSource._add

    def counted(self, batch, row, number, default):  # type: ignore[no-untyped-def]
        read[self.config] = read.get(self.config, 0) + 1
        real_add(self, batch, row, number, default)

    monkeypatch.setattr(DatasetSource, "_add", counted)
    args = ["data", "tokenizer", "allenai/c4", "--config", "{lang}", "--langs", "ar,tr,he",
            "--lang-map", "he=iw", "--chars-per-language", "3000", "--vocab-size", "300",
            "-o", "tok", "--json"]  # fmt: skip
    assert run(args) == 0
    characters = json.loads(capsys.readouterr().out)["characters"]
    assert sorted(characters) == ["ar", "he", "tr"]
    for lang, docs in (
        ("ar", valid_texts("ar", 200)),
        ("tr", many),
        ("he", valid_texts("he", 200)),
    ):
        expected = 0  # whole documents in stream order until 3,000 characters
        for text in docs:
            if expected >= 3000:
                break
            expected += len(text)
        assert characters[lang] == expected >= 3000
    assert read["tr"] == 1000  # one batch of 1000 rows had enough text: 1,500 rows never read
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert tok.decode(tok("Merhaba dünya", add_special_tokens=False)["input_ids"]) == (
        "Merhaba dünya"
    )
    assert run([*args[:-3], "-o", "tok2", "--langs", "ar,tr,he,sw", "--json"]) == 2
    err = capsys.readouterr().err
    assert "has no configuration 'sw'" in err and "\n" not in err.strip()
    assert not (tmp_path / "tok2").exists()


def test_documents_of_a_hub_layout_dataset_are_streamed_not_converted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``iter_documents`` on a dataset directory (or Hub id) reads it as a stream: nothing is
    downloaded or converted to Arrow files in the datasets cache."""
    import datasets

    cache = tmp_path / "cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    repo = tmp_path / "repo"
    rows = [{"text": t, "lang": "ar"} for t in valid_texts("ar", 5)]
    rows += [{"text": t, "lang": "bg"} for t in valid_texts("bg", 4)]
    write_rows(repo / "data" / "train.parquet", rows)
    write_readme(repo, {"default": {"train": "data/train.parquet"}})
    documents = list(iter_documents(repo))
    assert [(d.text, d.language) for d in documents] == [(r["text"], r["lang"]) for r in rows]
    assert not [p for p in cache.rglob("*.arrow")]


# -- broken sources: one line, nothing left ----------------------------------------------------


def broken_repo(root: Path, case: str) -> tuple[Path, dict[str, object]]:
    root.mkdir(parents=True)
    good = [{"text": t} for t in valid_texts("ar", 6)]
    options: dict[str, object] = {"languages": ["ar"], "reading": SourceOptions(config="{lang}")}
    if case == "truncated-parquet":
        path = write_rows(root / "ar.parquet", good * 50)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        write_readme(root, {"ar": {"train": "ar.parquet"}})
    elif case == "no-text-column":
        write_rows(root / "ar.jsonl", [{"content": r["text"]} for r in good])
        write_readme(root, {"ar": {"train": "ar.jsonl"}})
    elif case == "text-not-text":  # (a row whose text is null is a blank one: test_data_streams)
        write_rows(root / "ar.parquet", [{"text": n} for n in range(len(good))])
        write_readme(root, {"ar": {"train": "ar.parquet"}})
    elif case == "not-utf8":
        lines = b"".join(json.dumps(r).encode() + b"\n" for r in good)
        (root / "ar.jsonl.gz").write_bytes(gzip.compress(lines + b'{"text": "\xff\xfe"}\n'))
        write_readme(root, {"ar": {"train": "ar.jsonl.gz"}})
    elif case in ("no-such-config", "no-such-split"):
        write_rows(root / "ar.jsonl", good)
        write_readme(root, {"ar": {"train": "ar.jsonl"}, "bg": {"train": "ar.jsonl"}})
        options = {"languages": ["tr"], "reading": SourceOptions(config="{lang}")}
        if case == "no-such-split":
            options = {"languages": ["ar"], "reading": SourceOptions(config="{lang}", split="test")}
    return root, options


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        (
            "truncated-parquet",
            FormatError,
            r"cannot read .*ar\.parquet|cannot read .* \[ar/train\]",
        ),
        ("no-text-column", FormatError, r"row 1 has no column 'text' \(columns: content\)"),
        ("text-not-text", FormatError, r"row 1: 'text' is not text \(int\); choose the text"),
        ("not-utf8", FormatError, r"cannot read .* \[ar/train\]"),
        ("no-such-config", UsageError, r"has no configuration 'tr' \(it has ar, bg\)"),
        ("no-such-split", UsageError, r"no split 'test' \(it has train\)"),
    ],
)
def test_a_broken_source_is_one_line_and_leaves_nothing(
    case: str, error: type, message: str, tokenizer_dir: Path, tmp_path: Path
) -> None:
    root, options = broken_repo(tmp_path / "repo", case)
    with pytest.raises(error, match=message) as info:
        prepare(root, tokenizer_dir, tmp_path / "out" / "shards", **options)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_streamed_options_are_checked(c4: Path, tokenizer_dir: Path, tmp_path: Path) -> None:
    cases = [
        ({"reading": SourceOptions(config="{lang}")}, "needs --langs"),
        (
            {"languages": ["ar"], "reading": SourceOptions(config="{lang}", lang_map={"bg": "x"})},
            "--langs does not list",
        ),
        (
            {"languages": ["ar"], "reading": SourceOptions(config="{lang}", language="ar")},
            "--lang labels",
        ),
        (
            {"reading": SourceOptions(lang_map={"he": "iw"})},
            "--lang-map maps languages into a --config / --data-dir template",
        ),
    ]
    for options, message in cases:
        with pytest.raises(UsageError, match=message):
            prepare(c4, tokenizer_dir, tmp_path / "s", **options)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"not found: nothing-like-this .*xelm data recipes"):
        prepare("nothing-like-this", tokenizer_dir, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_shards_memory_stays_bounded_when_sampling(tokenizer_dir: Path, tmp_path: Path) -> None:
    """Cutting a language down gathers its kept documents in slices: the same tokens as a
    whole-array selection."""
    from xelm_cli.data import prepare_finish

    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "en.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in valid_texts("en", 200))
    )
    whole = prepare(corpus, tokenizer_dir, tmp_path / "a", token_caps=2000, seed=1).shards
    saved = prepare_finish.SUBSAMPLE_TOKENS
    for size in (7, 150):  # one document a slice (each is longer), or several
        prepare_finish.SUBSAMPLE_TOKENS = size
        try:
            out = tmp_path / f"b{size}"
            sliced = prepare(corpus, tokenizer_dir, out, token_caps=2000, seed=1).shards
        finally:
            prepare_finish.SUBSAMPLE_TOKENS = saved
        for name in ("en.tokens.bin", "en.offsets.bin"):
            assert (sliced.path / name).read_bytes() == (whole.path / name).read_bytes()
    tokens = np.fromfile(whole.path / "en.tokens.bin", dtype=np.uint16)
    assert len(tokens) == whole.stats["en"].tokens <= 2000
