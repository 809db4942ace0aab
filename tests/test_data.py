"""Corpus preparation: token shards, sampling, idempotence, HF datasets, tokenizer training."""

import itertools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import transformers
from conftest import SHARED_DATA, train_tokenizer
from transformers import AutoTokenizer

from xelm_cli.bundle.store import Bundle
from xelm_cli.cli import run
from xelm_cli.common.errors import FormatError, UsageError
from xelm_cli.common.units import parse_token_count
from xelm_cli.data import budgets
from xelm_cli.data.budgets import language_budgets, parse_caps, select_documents
from xelm_cli.data.corpus import iter_documents
from xelm_cli.data.prepare import prepare
from xelm_cli.data.shards import MANIFEST_NAME, Shards, token_dtype_name
from xelm_cli.data.source_plan import SourceOptions
from xelm_cli.data.tokenizer import train_tokenizer_on_corpus
from xelm_cli.data.tokenizer_loading import load_tokenizer

LANGS = ("en", "tr", "ar", "ru")
DOCS_PER_LANGUAGE = 40
# Byte-level: "Ġ" marks a space; no merges, so every letter is a token.
TINY_GPT2_VOCAB = {"<|endoftext|>": 0, "Ġ": 1, **{c: i + 2 for i, c in enumerate("helowrd")}}


def write_jsonl(path: Path, records: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def shared_records(lang: str, n: int = DOCS_PER_LANGUAGE) -> list[dict[str, str]]:
    source = SHARED_DATA / "corpus" / "valid" / f"{lang}.jsonl.zst"
    docs = itertools.islice(iter_documents(source), n)
    return [{"text": d.text, "lang": lang} for d in docs]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """mC4 layout: one JSON lines file per language, a few dozen real documents each."""
    root = tmp_path / "corpus"
    root.mkdir()
    for lang in LANGS:
        write_jsonl(root / f"{lang}.jsonl", shared_records(lang))
    return root


def hand_counts(tokenizer_dir: Path, corpus: Path) -> dict[str, tuple[int, int]]:
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    counts: dict[str, tuple[int, int]] = {}
    for doc in iter_documents(corpus):
        docs, tokens = counts.get(doc.language or "", (0, 0))
        n = len(tok(doc.text, add_special_tokens=False)["input_ids"])
        counts[doc.language or ""] = (docs + 1, tokens + n)
    return counts


def snapshot(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}


# -- format ---------------------------------------------------------------------------------


def test_token_dtype_fits_the_vocabulary() -> None:
    assert token_dtype_name(320) == "uint16"
    assert token_dtype_name(65536) == "uint16"  # ids 0..65535
    assert token_dtype_name(65537) == "uint32"
    assert token_dtype_name(250_000) == "uint32"


def test_round_trip_decodes_to_the_input(tokenizer_dir: Path, corpus: Path, tmp_path: Path) -> None:
    shards = prepare(corpus, tokenizer_dir, tmp_path / "shards").shards
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert shards.languages == sorted(LANGS)
    assert shards.dtype == np.dtype("<u2")
    for lang in LANGS:
        expected = [d.text for d in iter_documents(corpus / f"{lang}.jsonl")]
        decoded = [tok.decode(ids.tolist()) for ids in shards.iter_documents([lang])]
        assert decoded == expected
        offsets = shards.offsets(lang)
        assert offsets[0] == 0 and offsets[-1] == len(shards.tokens(lang))
        assert len(offsets) == len(expected) + 1
        assert tok.decode(shards.document(lang, 3).tolist()) == expected[3]
    assert shards.verify() == []


def test_a_vocabulary_with_gaps_stores_its_largest_id(tmp_path: Path) -> None:
    """Three tokens, one of id 70,000: the shards are uint32 (a tokenizer's length, 3, would
    give uint16 shards, which cannot hold it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 70_000}, "[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    source = write_jsonl(tmp_path / "en.jsonl", [{"text": "hello world", "lang": "en"}])
    shards = prepare(source, tmp_path / "tokenizer", tmp_path / "shards").shards
    assert shards.dtype == np.dtype("<u4")
    assert shards.document("en", 0).tolist() == [1, 70_000]


def test_per_language_index_matches_hand_counts(
    tokenizer_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    mixed = write_jsonl(
        corpus / "mixed.jsonl",
        [{"text": "Merhaba dünya", "lang": "tr"}, {"text": "Hello world", "language": "en"}],
    )
    assert mixed.exists()
    shards = prepare(corpus, tokenizer_dir, tmp_path / "shards").shards
    stats = {lang: (s.documents, s.tokens) for lang, s in shards.stats.items()}
    assert stats == hand_counts(tokenizer_dir, corpus)
    assert stats["tr"][0] == DOCS_PER_LANGUAGE + 1


def test_a_bundle_serves_as_tokenizer(seed_bundle: Path, corpus: Path, tmp_path: Path) -> None:
    shards = prepare(corpus, seed_bundle, tmp_path / "shards", languages=["tr"]).shards
    assert shards.languages == ["tr"]
    assert (
        shards.tokenizer_fingerprint == Bundle.read(seed_bundle).manifest.fingerprints["tokenizer"]
    )
    eos = AutoTokenizer.from_pretrained(seed_bundle).eos_token_id
    assert shards.special_tokens["eos"] == eos


def test_reader_refuses_another_major_version_and_finds_tampering(
    tokenizer_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "shards"
    prepare(corpus, tokenizer_dir, out, languages=["en"])
    data = out / "en.tokens.bin"
    data.chmod(0o644)
    raw = bytearray(data.read_bytes())
    raw[0] ^= 1
    data.write_bytes(bytes(raw))
    assert any("sha256" in p for p in Shards.open(out).verify())
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    (out / MANIFEST_NAME).write_text(json.dumps({**manifest, "format_version": "2.0.0"}))
    with pytest.raises(FormatError, match="upgrade"):
        Shards.open(out)


# -- sampling -------------------------------------------------------------------------------


def test_parse_counts_and_caps() -> None:
    assert parse_token_count("20M") == 20_000_000
    assert parse_token_count("1.5k") == 1500
    assert parse_caps("5M") == {"*": 5_000_000}
    assert parse_caps("1M,en=5M,tur=2K") == {"*": 1_000_000, "en": 5_000_000, "tr": 2000}
    with pytest.raises(UsageError):
        parse_token_count("lots")


def test_budgets_by_hand() -> None:
    n = {"en": 1000, "tr": 100}
    assert language_budgets(n) == n
    assert language_budgets(n, caps={"en": 300}) == {"en": 300, "tr": 100}
    assert language_budgets(n, caps={"*": 50}) == {"en": 50, "tr": 50}
    # alpha 0.5: p_en = sqrt(1000) / (sqrt(1000) + sqrt(100)) = 0.75975
    assert language_budgets(n, alpha=0.5, total=200) == {"en": 151, "tr": 48}
    # tr runs out at 100; what it cannot supply goes to en
    assert language_budgets(n, alpha=0.5, total=1000) == {"en": 900, "tr": 100}
    # no total: the largest mixture without repetition, en = 100 * sqrt(1000 / 100)
    assert language_budgets(n, alpha=0.5) == {"en": 316, "tr": 100}
    # proportional when only a total is given; more than there is gives everything
    assert language_budgets(n, total=550) == {"en": 500, "tr": 50}
    assert language_budgets(n, total=10_000) == n
    assert language_budgets(n, alpha=0.0, total=100) == {"en": 50, "tr": 50}


def test_select_documents_takes_whole_documents_within_budget() -> None:
    lengths = np.array([5, 5, 5, 5, 5])
    picked = select_documents(lengths, 12, seed=0, language="en")
    assert len(picked) == 2 and list(picked) == sorted(picked)
    again = select_documents(lengths, 12, seed=0, language="en")
    assert list(picked) == list(again)
    assert len(select_documents(lengths, 25, seed=0, language="en")) == 5
    draws = {tuple(select_documents(lengths, 12, seed=s, language="en")) for s in range(20)}
    assert len(draws) > 1


def test_select_documents_in_chunks_picks_what_one_running_total_picks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The running total is held a chunk at a time: the same documents as the cumulative sum
    of all of them in the seeded order (what it held before, 16 more bytes a document)."""
    lengths = np.random.default_rng(3).integers(1, 50, size=1000)
    for budget in (0, 1, 49, 5000, 12_345, int(lengths.sum()) - 1, int(lengths.sum()) + 9):
        order = np.random.default_rng([7, *b"tr"]).permutation(len(lengths))
        taken = int(np.searchsorted(np.cumsum(lengths[order]), budget, side="right"))
        expected = np.sort(order[:taken])
        for chunk in (1, 7, 64, 1000, 4096):
            monkeypatch.setattr(budgets, "SELECTION_CHUNK", chunk)
            picked = select_documents(lengths, budget, seed=7, language="tr")
            assert picked.tolist() == expected.tolist(), (budget, chunk)


def test_caps_and_alpha_end_to_end(tokenizer_dir: Path, corpus: Path, tmp_path: Path) -> None:
    full = {lang: c[1] for lang, c in hand_counts(tokenizer_dir, corpus).items()}
    out = tmp_path / "shards"
    shards = prepare(corpus, tokenizer_dir, out, token_caps={"en": 500}, alpha=0.3, seed=7).shards
    budgets = language_budgets(full, caps={"en": 500}, alpha=0.3)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    for lang, entry in shards.manifest["languages"].items():
        assert entry["source_tokens"] == full[lang]
        assert entry["tokens"] <= budgets[lang]
        originals = [d.text for d in iter_documents(corpus / f"{lang}.jsonl")]
        kept = [tok.decode(ids.tolist()) for ids in shards.iter_documents([lang])]
        assert set(kept) <= set(originals)  # whole documents, in corpus order
        assert kept == [t for t in originals if t in set(kept)]
    assert shards.stats["en"].tokens <= 500
    again = prepare(
        corpus, tokenizer_dir, tmp_path / "again", token_caps={"en": 500}, alpha=0.3, seed=7
    )
    assert (again.shards.path / "en.tokens.bin").read_bytes() == (
        out / "en.tokens.bin"
    ).read_bytes()


# -- idempotence ------------------------------------------------------------------------------


def test_same_input_is_a_no_op(tokenizer_dir: Path, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    first = prepare(corpus, tokenizer_dir, out, languages=["en", "tr"])
    before = snapshot(out)
    second = prepare(corpus, tokenizer_dir, out, languages=["tr", "en"])
    assert not first.up_to_date and second.up_to_date
    assert snapshot(out) == before
    assert second.shards.digest == first.shards.digest
    os.utime(corpus / "en.jsonl")  # touched, same bytes: hashed again, still up to date
    assert prepare(corpus, tokenizer_dir, out, languages=["en", "tr"]).up_to_date


def test_changed_input_tokenizer_or_options_are_detected(
    tokenizer_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "shards"
    prepare(corpus, tokenizer_dir, out, languages=["en"])
    before = snapshot(out)
    other_tokenizer = train_tokenizer(tmp_path / "tok2", vocab_size=300)
    with pytest.raises(UsageError, match=r"another tokenizer.*--force"):
        prepare(corpus, other_tokenizer, out, languages=["en"])
    with pytest.raises(UsageError, match=r"other options \(languages\)"):
        prepare(corpus, tokenizer_dir, out, languages=["en", "tr"])
    with (corpus / "en.jsonl").open("a") as f:
        f.write(json.dumps({"text": "One more.", "lang": "en"}) + "\n")
    with pytest.raises(UsageError, match="input changed"):
        prepare(corpus, tokenizer_dir, out, languages=["en"])
    assert snapshot(out) == before
    rebuilt = prepare(corpus, tokenizer_dir, out, languages=["en"], overwrite=True)
    assert rebuilt.shards.stats["en"].documents == DOCS_PER_LANGUAGE + 1


# -- inputs -----------------------------------------------------------------------------------


def test_local_hf_dataset(tokenizer_dir: Path, tmp_path: Path) -> None:
    import datasets

    texts = {"en": ["Hello there.", "All human beings are born free."], "tr": ["Merhaba."]}
    rows = [(t, lang) for lang, ts in texts.items() for t in ts]
    data = datasets.Dataset.from_dict(
        {"text": [r[0] for r in rows], "language": [r[1] for r in rows]}
    )
    data.save_to_disk(str(tmp_path / "ds"))
    shards = prepare(tmp_path / "ds", tokenizer_dir, tmp_path / "shards").shards
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert [tok.decode(d.tolist()) for d in shards.iter_documents(["en"])] == texts["en"]
    assert shards.stats["tr"].documents == 1
    datasets.DatasetDict({"train": data, "test": data.select([2])}).save_to_disk(
        str(tmp_path / "dd")
    )
    test_split = prepare(
        tmp_path / "dd", tokenizer_dir, tmp_path / "s2", reading=SourceOptions(split="test")
    ).shards
    assert test_split.languages == ["tr"]


def test_hub_dataset_offline_is_one_line(
    tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="cannot load dataset someone/corpus") as info:
        prepare("someone/corpus", tokenizer_dir, tmp_path / "shards")
    assert "\n" not in str(info.value)
    assert str(info.value).endswith(
        "(HF_HUB_OFFLINE is set: unset it to read from the Hub, or set XELM_HUB_MIRROR to a "
        "folder holding a copy of it as someone/corpus/)"
    )
    assert not (tmp_path / "shards").exists()


def assert_only_work_kept(folder: Path, error: str) -> None:
    """No shards, no temporary files: at most the work read so far, which the error names."""
    left = sorted(p.name for p in folder.iterdir() if p.name.startswith((".shards", "shards")))
    assert left in ([], [".shards.prepare"])
    assert not left or f"kept in {folder / left[0]}: the same command continues" in error


def test_broken_record_names_file_and_line(
    tokenizer_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    with (corpus / "ru.jsonl").open("a") as f:
        f.write('{"text": "ok", "lang": "ru"}\n{"text": broken\n')
    out = tmp_path / "shards"
    with pytest.raises(FormatError, match=rf"ru\.jsonl:{DOCS_PER_LANGUAGE + 2}: ") as info:
        prepare(corpus, tokenizer_dir, out)
    assert_only_work_kept(tmp_path, str(info.value))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "no documents in"),
        ("missing-language", "no documents in de in"),
        ("bad-code", "unknown language code"),
        ("not-a-tokenizer", "not a tokenizer directory"),
        ("cap-language", "no documents in sw in"),
        ("negative-seed", r"^--seed must be 0 or more \(got -1\)$"),
    ],
)
def test_bad_input_is_one_line_and_writes_no_shards(
    case: str, message: str, tokenizer_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    source, tokenizer = corpus, tokenizer_dir
    kwargs: dict[str, Any] = {}
    if case == "empty":
        source = tmp_path / "empty.jsonl"
        source.write_text("")
    elif case == "missing-language":
        kwargs = {"languages": ["en", "de"]}
    elif case == "bad-code":
        kwargs = {"languages": ["english!"]}
    elif case == "not-a-tokenizer":
        tokenizer = tmp_path / "nothing"
        tokenizer.mkdir()
        (tokenizer / "config.json").write_text("{}")
    elif case == "cap-language":
        kwargs = {"token_caps": {"sw": 10}}
    elif case == "negative-seed":  # was a traceback after the whole reading, its work deleted
        kwargs = {"seed": -1, "token_caps": {"en": 10}}
    out = tmp_path / "shards"
    with pytest.raises(UsageError, match=message) as info:
        prepare(source, tokenizer, out, **kwargs)
    assert "\n" not in str(info.value)
    assert_only_work_kept(tmp_path, str(info.value))


# -- tokenizer training -------------------------------------------------------------------------


def test_tokenizer_training_is_balanced_across_languages(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    for lang, n in (("en", 400), ("tr", 40), ("ar", 40), ("ru", 40)):
        write_jsonl(root / f"{lang}.jsonl", shared_records(lang, n))
    trained = train_tokenizer_on_corpus(
        root, tmp_path / "tok", vocab_size=600, chars_per_language=3000
    )
    tok = AutoTokenizer.from_pretrained(trained.path)
    assert len(tok) == 600
    assert set(trained.characters) == {"en", "tr", "ar", "ru"}
    assert max(trained.characters.values()) < 3 * min(trained.characters.values())
    for lang in ("en", "tr", "ar", "ru"):
        text = " ".join(r["text"] for r in shared_records(lang, 10))
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(text.encode()) / len(ids) > 1.5, lang  # merges beyond single bytes
        assert tok.decode(ids) == text


# -- CLI --------------------------------------------------------------------------------------


def test_cli_prepare_inspect_and_up_to_date(
    tokenizer_dir: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shards"
    args = ["data", "prepare", str(corpus), "--tokenizer", str(tokenizer_dir), "-o", str(out)]
    assert run([*args, "--cap", "ar=300", "--seed", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["up_to_date"] is False
    assert report["languages"]["ar"]["tokens"] <= 300
    assert report["options"]["token_caps"] == {"ar": 300}
    assert run([*args, "--cap", "ar=300", "--seed", "1"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert run([*args, "--cap", "ar=400"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "--force" in errors[0]
    assert run(["data", "inspect", str(out), "--verify", "--json"]) == 0
    inspected = json.loads(capsys.readouterr().out)
    assert inspected["problems"] == [] and inspected["digest"] == report["digest"]
    assert run(["data", "inspect", str(out)]) == 0
    assert "ru" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(
        [
            "data",
            "prepare",
            str(tmp_path / "nope"),
            "--tokenizer",
            str(tmp_path),
            "-o",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1


@pytest.mark.parametrize(
    "command",
    [
        ["prepare", "--batch-size", "0"],
        ["prepare", "--workers", "0"],
        ["tokenizer", "--chars-per-language", "0"],
        ["tokenizer", "--vocab-size", "259"],
        ["fetch", "--valid-docs", "0"],
    ],
)
def test_cli_counts_below_their_least_are_refused_in_one_line(
    tokenizer_dir: Path,
    corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    """Refused before anything is read (--batch-size 0 read no document, forever)."""
    name, option, value = command
    where = {
        "prepare": [str(corpus), "-t", str(tokenizer_dir), "-o", str(tmp_path / "o")],
        "tokenizer": [str(corpus), "-o", str(tmp_path / "o")],
        "fetch": ["-o", str(tmp_path / "o")],
    }[name]
    assert run(["data", name, *where, option, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"'{option}'" in err and f"xelm data {name} -h" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("count", "line"),
    [
        ({"batch_size": 0}, "--batch-size must be at least 1, not 0"),
        ({"workers": 0}, "--workers must be at least 1, not 0"),
    ],
)
def test_prepare_refuses_counts_below_their_least(
    tokenizer_dir: Path, corpus: Path, tmp_path: Path, count: dict[str, int], line: str
) -> None:
    """As the command line does (``prepare(batch_size=0)`` read no document, forever)."""
    out = tmp_path / "o"
    with pytest.raises(UsageError, match=f"^{line}$"):
        prepare(corpus, tokenizer_dir, out, **count)
    assert not out.exists() and not (tmp_path / ".o.prepare").exists()


def test_cli_tokenizer_reports_the_tokens_it_has_when_the_text_runs_out_of_merges(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    write_jsonl(root / "en.jsonl", shared_records("en", 5))
    out = tmp_path / "tok"
    assert (
        run(["data", "tokenizer", str(root), "-o", str(out), "--vocab-size", "5000", "--json"]) == 0
    )
    captured = capsys.readouterr()
    reported = json.loads(captured.out)
    has = len(AutoTokenizer.from_pretrained(out))
    assert reported["vocab_size"] == has < 5000 and reported["requested_vocab_size"] == 5000
    assert f"the tokenizer has {has:,} tokens, fewer than --vocab-size 5,000" in captured.err


def test_cli_tokenizer_and_help(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    for lang in ("en", "tr"):
        write_jsonl(root / f"{lang}.jsonl", shared_records(lang, 20))
    assert (
        run(
            [
                "data",
                "tokenizer",
                str(root),
                "-o",
                str(tmp_path / "tok"),
                "--vocab-size",
                "300",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["vocab_size"] == 300
    assert AutoTokenizer.from_pretrained(tmp_path / "tok") is not None
    for command in ("prepare", "tokenizer", "inspect"):
        assert run(["data", command, "--help"]) == 0
        assert "Example:" in capsys.readouterr().out


def test_alpha_help_says_how_a_streamed_language_cut_short_is_weighed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(["data", "prepare", "--help"]) == 0
    words = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "cut at its read limit is weighed by the tokens read" in words
    assert "a --cap per language avoids it" in words


def _assert_loads_as_auto_tokenizer(path: Path, texts: list[str]) -> None:
    info, auto = load_tokenizer(path), AutoTokenizer.from_pretrained(path)
    assert info.vocab_size == len(auto) and info.backend.to_str() == auto.backend_tokenizer.to_str()
    assert info.special_tokens == {
        "bos": auto.bos_token_id, "eos": auto.eos_token_id, "pad": auto.pad_token_id,
    }  # fmt: skip
    encoded = [e.ids for e in info.backend.encode_batch(texts)]
    assert encoded == [auto(text)["input_ids"] for text in texts]


def _imports_torch(code: str) -> bool:
    import subprocess
    import sys

    probe = f"import sys; {code}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip() == "True"


def _loads_without_torch(path: Path) -> bool:
    """load_tokenizer leaves torch unimported wherever transformers' fast tokenizer class does
    (5.24's does; 5.17's imports torch itself, so there nothing can be left out)."""
    loaded = (
        f"from xelm_cli.data.tokenizer_loading import load_tokenizer; load_tokenizer({str(path)!r})"
    )
    if _imports_torch("import transformers; transformers.TokenizersBackend"):
        return True  # nothing xelm can leave out
    return not _imports_torch(loaded)


def _sample_texts() -> list[str]:
    return [r["text"] for lang in LANGS for r in shared_records(lang, 2)]


def test_generic_tokenizers_load_as_auto_tokenizer_would_without_torch(tmp_path: Path) -> None:
    """xelm's own tokenizers name the generic fast class: loaded directly, they give what
    AutoTokenizer gives, without importing the model configurations and torch (start-up of
    every `data prepare`)."""
    generic = train_tokenizer(tmp_path / "tok")
    _assert_loads_as_auto_tokenizer(generic, _sample_texts())
    assert _loads_without_torch(generic)


def _llama_style_tokenizer(out: Path) -> Path:
    """A tiny Llama-style tokenizer (Metaspace BPE, byte fallback) trained on the sample text,
    saved by LlamaTokenizer, which names itself in tokenizer_config.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    texts = [r["text"] for lang in LANGS for r in shared_records(lang, 20)]
    specials = ["<unk>", "<s>", "</s>"]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=specials))
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(merge) for merge in model["merges"]]
    LlamaTokenizer(vocab=model["vocab"], merges=merges).save_pretrained(out)
    return out


def _tiny_gpt2(out: Path) -> Path:
    from transformers import GPT2Tokenizer

    GPT2Tokenizer(vocab=TINY_GPT2_VOCAB, merges=[]).save_pretrained(out)
    return out


def test_a_models_own_tokenizer_class_loads_as_auto_tokenizer_would(tmp_path: Path) -> None:
    """A tokenizer directory naming its model's class (Llama's, GPT-2's) is loaded with that
    class, as AutoTokenizer loads it, without torch; beside a model's config.json (a seed
    bundle), AutoTokenizer itself decides, and the result is the same."""
    from xelm_cli.bundle.seed import init_from_config

    tokenizer = _llama_style_tokenizer(tmp_path / "llama")
    llama = init_from_config("tiny", tokenizer, tmp_path / "seed", languages=["en"]).path
    config = json.loads((llama / "tokenizer_config.json").read_text())
    # what transformers writes: the model's class (5.24) or the generic one (5.0)
    assert config["tokenizer_class"] in ("LlamaTokenizer", "TokenizersBackend")
    assert json.loads((llama / "config.json").read_text())["model_type"] == "llama"
    for path in (tokenizer, llama, _tiny_gpt2(tmp_path / "gpt2")):
        _assert_loads_as_auto_tokenizer(path, [*_sample_texts(), "hello world"])
    assert _loads_without_torch(tokenizer) and _loads_without_torch(tmp_path / "gpt2")
    assert load_tokenizer(llama).special_tokens == {"bos": 1, "eos": 2, "pad": None}


def test_a_model_type_that_overrides_the_named_class_is_followed(tmp_path: Path) -> None:
    """Beside a Qwen2 config, AutoTokenizer loads Qwen2Tokenizer (digits one by one) though
    tokenizer_config.json names the generic class: data prepare tokenizes as the model's
    training and evaluation will, not as the named class would."""
    from transformers import Qwen2Config, TokenizersBackend

    model_dir = train_tokenizer(tmp_path / "qwen2", vocab_size=600)  # merges " 1" into "Ġ1"
    Qwen2Config(vocab_size=600).save_pretrained(model_dir)
    text = "In 2024 about 123456 people"
    chosen = type(AutoTokenizer.from_pretrained(model_dir)).__name__
    if chosen != "Qwen2Tokenizer":
        version = transformers.__version__
        pytest.skip(f"transformers {version} loads {chosen} beside a Qwen2 config: no override")
    _assert_loads_as_auto_tokenizer(model_dir, [text, *_sample_texts()])
    named = TokenizersBackend.from_pretrained(model_dir)
    assert "Ġ1" in named.convert_ids_to_tokens(named(text)["input_ids"])
    assert "Ġ1" not in load_tokenizer(model_dir).backend.encode(text).tokens


def test_a_tokenizer_its_named_class_would_rebuild_differently_goes_through_auto_tokenizer(
    tmp_path: Path,
) -> None:
    """A byte-level tokenizer.json named LlamaTokenizer: LlamaTokenizer rebuilds it as Metaspace
    (drops the "Ġ" of the space); AutoTokenizer loads it as it is in transformers 5.24 (as the
    named class in 5.17); data prepare gets AutoTokenizer's either way."""
    from transformers import LlamaTokenizer

    path = _tiny_gpt2(tmp_path / "byte-level")
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(
        json.dumps({**config, "tokenizer_class": "LlamaTokenizer"})
    )
    _assert_loads_as_auto_tokenizer(path, ["hello world"])
    assert 1 not in LlamaTokenizer.from_pretrained(path)("hello world")["input_ids"]  # no "Ġ"
    auto = AutoTokenizer.from_pretrained(path)("hello world")["input_ids"]
    letters = [TINY_GPT2_VOCAB[c] for c in "hello world".replace(" ", "Ġ")]
    assert auto == letters or 1 not in auto  # one of the two pipelines, whole
    assert load_tokenizer(path).backend.encode("hello world").ids == auto
