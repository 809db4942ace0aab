"""Corpus files as `xelm data prepare` reads them: every common JSON-lines name and compression
(.json, .ndjson, .gz) read and resumable, unrecognised files named, files named like a language
code read when their records say otherwise, special-token strings in text kept as text, and a
recipe's local entry taking narrower language tags."""

import gzip
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import zstandard
from corpus_helpers import valid_texts

from xelm_cli.cli import run
from xelm_cli.common.errors import FormatError
from xelm_cli.data.corpus import iter_documents, read_documents
from xelm_cli.data.shards import Shards
from xelm_cli.data.sources import FileSource
from xelm_cli.data.tokenizer_loading import load_tokenizer

TESTS = Path(__file__).resolve().parent


def lines(texts: Sequence[str], lang: str | None = None, **fields: Any) -> bytes:
    """JSON lines of ``texts``, labelled ``lang`` (None: no label)."""
    label = {"lang": lang} if lang else {}
    records = [{"text": text, **label, **fields} for text in texts]
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def gzipped(data: bytes, members: int = 1) -> bytes:
    """``data`` gzip-compressed in ``members`` members (as concatenated .gz files are)."""
    step = -(-len(data) // members)
    return b"".join(gzip.compress(data[i : i + step]) for i in range(0, len(data), step))


def prepare(args: list[str], tokenizer: Path, out: Path) -> list[str]:
    """Run `xelm data prepare` and return what the shards' source lists as read."""
    assert run(["data", "prepare", *args, "-t", str(tokenizer), "-o", str(out)]) == 0
    return [f["name"] for f in Shards.open(out).manifest["source"].get("files", [])]


def documents(out: Path) -> dict[str, int]:
    return {lang: entry.documents for lang, entry in Shards.open(out).stats.items()}


def texts_in(out: Path, lang: str, tokenizer: Path) -> list[str]:
    backend = load_tokenizer(tokenizer).backend
    return [backend.decode(list(map(int, ids))) for ids in Shards.open(out).iter_documents([lang])]


# --- A: a file named like a language code -------------------------------------------------------


def test_a_file_named_like_a_language_code_is_read_when_its_records_are_of_a_wanted_one(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    """`raw`, `dev`, `mix`, `all` are ISO 639-3 codes too: under --langs a file so named whose
    records carry wanted labels is read, not skipped for its name. A file named for another
    language whose records are that language's (labelled or not) is still left unread."""
    corpus = tmp_path / "c2"
    corpus.mkdir()
    en, tr = valid_texts("en", 160), valid_texts("tr", 40)
    (corpus / "en.jsonl").write_bytes(lines(en[:100], "en"))
    (corpus / "raw.jsonl").write_bytes(lines(en[100:150], "en"))
    (corpus / "dev.jsonl.gz").write_bytes(gzipped(lines(en[150:], "eng")))
    (corpus / "tr.jsonl").write_bytes(lines(tr[:20], "tr"))
    (corpus / "tur.jsonl").write_bytes(lines(tr[20:], "tur"))
    (corpus / "mix.txt").write_text("one\ntwo\n")  # text: its documents are of `mix`
    everything = prepare([str(corpus)], tokenizer_dir, tmp_path / "all")
    assert documents(tmp_path / "all") == {"en": 160, "mix": 2, "tr": 40}
    read = prepare([str(corpus), "--langs", "en"], tokenizer_dir, tmp_path / "en")
    assert documents(tmp_path / "en") == {"en": 160}  # 100 before
    assert read == ["dev.jsonl.gz", "en.jsonl", "raw.jsonl"]
    assert set(everything) - set(read) == {"mix.txt", "tr.jsonl", "tur.jsonl"}
    assert texts_in(tmp_path / "en", "en", tokenizer_dir) == en[150:] + en[:100] + en[100:150]
    reading = read_documents(corpus, languages=["en"])
    assert sorted(d.text for d in reading) == sorted(en)


def test_a_file_named_for_a_broader_tag_is_read_for_a_narrower_one(tmp_path: Path) -> None:
    """sw.jsonl of records labelled swh holds Swahili as --langs swh names it."""
    (tmp_path / "sw.jsonl").write_bytes(lines(["Habari ya leo.", "Asante."], "swh"))
    (tmp_path / "en.jsonl").write_bytes(lines(["Hello."], "en"))
    assert [d.text for d in read_documents(tmp_path, languages=["swh"])] == [
        "Habari ya leo.",
        "Asante.",
    ]


# --- B: .json, .ndjson and .gz files --------------------------------------------------------


def test_json_ndjson_and_gzip_files_are_read_like_the_others(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "c3"
    corpus.mkdir()
    texts = {lang: valid_texts(lang, 60) for lang in ("en", "de", "sw", "tr", "ar", "ru")}
    (corpus / "en.jsonl").write_bytes(lines(texts["en"], "en"))
    (corpus / "de.json").write_bytes(lines(texts["de"], "de"))
    (corpus / "sw.jsonl.gz").write_bytes(gzipped(lines(texts["sw"], "sw"), members=3))
    (corpus / "tr.txt.gz").write_bytes(gzip.compress("\n".join(texts["tr"]).encode()))
    (corpus / "ar.ndjson.zst").write_bytes(zstandard.compress(lines(texts["ar"])))
    (corpus / "ru.json.gz").write_bytes(gzipped(lines(texts["ru"], "ru")))
    read = prepare([str(corpus)], tokenizer_dir, tmp_path / "shards")
    assert len(read) == 6
    assert documents(tmp_path / "shards") == dict.fromkeys(sorted(texts), 60)
    for lang in ("de", "sw", "ru"):
        assert texts_in(tmp_path / "shards", lang, tokenizer_dir) == texts[lang]


def test_raw_c4_json_gz_files_are_read_with_a_language_given(
    tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder of mC4's own files (c4-sw.tfrecord-*.json.gz, records without a language)."""
    folder = tmp_path / "gzdir"
    folder.mkdir()
    texts = valid_texts("sw", 90)
    for i in range(3):
        part = lines(texts[i * 30 : (i + 1) * 30], None, timestamp="2020", url="http://x")
        (folder / f"c4-sw.tfrecord-{i:05d}-of-00003.json.gz").write_bytes(gzipped(part))
    capsys.readouterr()
    out = tmp_path / "shards"
    base = ["data", "prepare", str(folder), "-t", str(tokenizer_dir), "-o", str(out)]
    assert run(base) == 2
    assert_one_error_line(capsys.readouterr().err, "documents have no language")
    assert len(prepare([str(folder), "--lang", "sw"], tokenizer_dir, out)) == 3
    assert documents(out) == {"sw": 90}
    one = folder / "c4-sw.tfrecord-00001-of-00003.json.gz"
    assert prepare([str(one), "--lang", "sw"], tokenizer_dir, tmp_path / "one") == [one.name]
    assert documents(tmp_path / "one") == {"sw": 30}


def assert_one_error_line(err: str, message: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("xelm: error: "), err
    assert message in lines[0], err


def test_unrecognised_files_are_named_in_one_warning_and_json_documents_are_not_read(
    tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "train").mkdir(parents=True)
    (corpus / "train" / "en.jsonl").write_bytes(lines(valid_texts("en", 5), "en"))
    (corpus / "train" / "tr.jsonl.bz2").write_bytes(b"BZh9")
    (corpus / "stats.json").write_text(json.dumps({"en": {"documents": 5}}, indent=1))
    (corpus / "config.json").write_text(json.dumps({"documents": 5}))  # one line, no text
    (corpus / "README.md").write_text("# notes\n")  # documentation: never named
    (corpus / "LICENSE-CC-BY-SA").write_text("licence\n")
    (corpus / ".cache").mkdir()
    (corpus / ".cache" / "x.lock").write_text("")
    capsys.readouterr()
    assert prepare([str(corpus)], tokenizer_dir, tmp_path / "shards") == ["train/en.jsonl"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [
        f"xelm: warning: {corpus}: not reading config.json (not JSON lines), stats.json (not "
        "JSON lines), train/tr.jsonl.bz2 (corpus files are *.jsonl, *.json, *.ndjson, *.txt, each "
        "optionally .gz or .zst; a .json file of JSON lines)"
    ]


def test_a_file_of_another_type_is_refused_with_a_way_out_that_works(
    tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not the loop of before: "pass its directory" only where the directory is a dataset."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = valid_texts("tr", 10)
    dataset = tmp_path / "pq"
    dataset.mkdir()
    pq.write_table(pa.table({"text": texts, "lang": ["tr"] * 10}), dataset / "000.parquet")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(dataset / "000.parquet", mixed / "000.parquet")
    (mixed / "en.jsonl").write_bytes(lines(["Hello."], "en"))
    (tmp_path / "tr.jsonl.bz2").write_bytes(b"BZh9")
    out = tmp_path / "out"
    cases = {
        dataset / "000.parquet": f"; pass its directory {dataset} to read it as a dataset",
        mixed / "000.parquet": "; move it to a directory of its own and pass that",
        tmp_path / "tr.jsonl.bz2": "; convert it to one of these",
    }
    for path, way in cases.items():
        capsys.readouterr()
        assert run(["data", "prepare", str(path), "-t", str(tokenizer_dir), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert_one_error_line(err, f"{path}: not a corpus file (*.jsonl, *.json, *.ndjson, ")
        assert way in err
    prepare([str(dataset)], tokenizer_dir, out)  # the way out given for it works
    assert documents(out) == {"tr": 10}


def test_a_directory_without_corpus_files_names_what_it_holds(
    tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "tr.jsonl.xz").write_bytes(b"\xfd7zXZ")
    out = str(tmp_path / "out")
    capsys.readouterr()
    assert run(["data", "prepare", str(tmp_path / "sub"), "-t", str(tokenizer_dir), "-o", out]) == 2
    assert_one_error_line(
        capsys.readouterr().err,
        f"no corpus files (*.jsonl, *.json, *.ndjson, *.txt, each optionally .gz or .zst) in "
        f"{tmp_path / 'sub'} (it has tr.jsonl.xz): convert them",
    )


def test_broken_gzip_files_are_one_line_errors(tmp_path: Path) -> None:
    data = gzipped(lines(valid_texts("en", 200), "en"), members=2)
    cases = {
        "truncated.jsonl.gz": (data[: len(data) // 2], "truncated gzip stream"),
        "garbage-after.jsonl.gz": (data + b"garbage", "corrupt gzip stream"),
        "not-gzip.jsonl.gz": (lines(["Hello."], "en"), "corrupt gzip stream"),
        "bad-crc.jsonl.gz": (data[:-8] + bytes([data[-8] ^ 1]) + data[-7:], "corrupt gzip"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(FormatError, match=f"^{tmp_path / name}: {message}"):
            list(iter_documents(tmp_path / name))


def test_a_json_document_in_a_json_file_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "en.json"
    path.write_text(json.dumps([{"text": "Hello.", "lang": "en"}], indent=1))
    with pytest.raises(FormatError, match=r"en.json:1: not a JSON object \(one JSON document, not"):
        list(iter_documents(path))


# --- B: resuming in a .gz file -------------------------------------------------------------


def _resumable_corpus(root: Path) -> Path:
    corpus = root / "corpus"
    corpus.mkdir()
    en, tr = valid_texts("en", 400), valid_texts("tr", 400)
    (corpus / "a.jsonl").write_bytes(lines(en[:30], "en"))
    mixed = [t for pair in zip(en[30:], tr, strict=False) for t in pair]
    labels = ["en", "tr"] * (len(mixed) // 2)
    records = "".join(
        json.dumps({"text": t, "lang": lang}, ensure_ascii=False) + ("\r\n" if i % 7 else "\n\n")
        for i, (t, lang) in enumerate(zip(mixed, labels, strict=True))
    )
    (corpus / "b.jsonl.gz").write_bytes(gzipped(records.encode(), members=4))
    (corpus / "tr.txt.gz").write_bytes(gzip.compress("\n".join(tr[:50]).encode()))
    return corpus


def test_a_gzip_file_stream_resumes_exactly_after_every_batch(tmp_path: Path) -> None:
    """A position inside a .gz file (bytes of its decompressed content, lines) continues at
    the next line, across gzip members, with another batch size too."""
    source = FileSource(str(_resumable_corpus(tmp_path)))
    stream = source.open(None, batch_size=64)
    batches = [(batch.texts, stream.position) for batch in stream]
    texts = [t for batch, _ in batches for t in batch]
    assert texts == [d.text for d in iter_documents(source.path) if d.text.strip()]
    inside = [position for _, position in batches if position["file"] == 1]
    assert len(inside) > 5 and inside[-1]["offset"] > 0
    for k, (_, position) in enumerate(batches):
        rest = [t for batch in source.open(position, batch_size=50) for t in batch.texts]
        assert rest == [t for batch, _ in batches[k + 1 :] for t in batch], position


KILLPOINT = TESTS / "killpoint.py"


def _killed_prepare(argv: list[str], work: Path, kill_at: int, count: Path | None = None) -> int:
    """`xelm ARGV` in a process that checkpoints after every batch and is SIGKILLed at its
    ``kill_at``-th write under ``work`` (tests/killpoint.py; 0: not killed, writes counted)."""
    env = {**os.environ, "XELM_KILL_UNDER": str(work), "OMP_NUM_THREADS": "1"}
    env["XELM_TEST_CHECKPOINT_SECONDS"] = "0"
    env.pop("XELM_KILL_COUNT_FILE", None)
    if count is not None:
        env["XELM_KILL_COUNT_FILE"] = str(count)
    command = [sys.executable, str(KILLPOINT), str(kill_at), "--", *argv]
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, timeout=300)
    return done.returncode


def test_a_prepare_killed_inside_a_gzip_file_resumes_to_the_same_shards(
    tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = _resumable_corpus(tmp_path)
    options = ["--batch-size", "40", "-t", str(tokenizer_dir)]
    whole = tmp_path / "whole"
    assert run(["data", "prepare", str(corpus), *options, "-o", str(whole)]) == 0
    work = tmp_path / "work"
    work.mkdir()
    out = work / "shards"
    argv = ["data", "prepare", str(corpus), *options, "-o", str(out)]
    counted = tmp_path / "count.json"
    assert _killed_prepare(argv, work, 0, counted) == 0  # counts the writes of a whole run
    events = json.loads(counted.read_text())["events"]
    shutil.rmtree(out)
    assert _killed_prepare(argv, work, events // 2, None) == -9  # SIGKILL, midway
    assert not out.exists()
    state = json.loads((work / ".shards.prepare" / "state.json").read_text())
    (entry,) = state["sources"].values()
    position = entry["position"]
    assert position["file"] == 1 and position["offset"] > 0 and position["line"] > 0  # b.jsonl.gz
    capsys.readouterr()
    assert run(argv) == 0
    assert "discarding" not in capsys.readouterr().err  # continued, not started afresh
    data = sorted(p.name for p in whole.glob("*.bin"))
    assert data and sorted(p.name for p in out.glob("*.bin")) == data
    for name in data:
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name
    assert Shards.open(out).manifest["languages"] == Shards.open(whole).manifest["languages"]


# --- C: special-token strings in document text ----------------------------------------------


HTML = "code: <s>strike</s> and <pad> here"


def test_special_token_strings_in_text_are_text_in_the_shards(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = [HTML, "plain <unk> text </s>", *valid_texts("en", 20)]
    (corpus / "en.jsonl").write_bytes(lines(texts, "en"))
    prepare([str(corpus)], tokenizer_dir, tmp_path / "shards")
    shards = Shards.open(tmp_path / "shards")
    specials = {i for i in shards.special_tokens.values() if i is not None}
    assert len(specials) == 3
    ids = shards.tokens("en").tolist()
    assert specials.isdisjoint(ids)
    auto = AutoTokenizer.from_pretrained(tokenizer_dir)
    unk = auto.unk_token_id
    assert unk not in ids
    assert texts_in(tmp_path / "shards", "en", tokenizer_dir) == texts  # round trip
    plain = auto(texts[2:], add_special_tokens=False)["input_ids"]
    assert [list(map(int, d)) for d in shards.iter_documents(["en"])][2:] == plain


def _xglm(out: Path) -> Path:
    """A SentencePiece (Unigram) tokenizer as XGLM's: <s>, </s> pieces scored above any other,
    documents framed `</s> doc`."""
    from transformers import XGLMTokenizer

    pieces = ["▁hello", "▁world", "▁", *"helowrdsap<>/"]
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    XGLMTokenizer(vocab=vocab + [(p, -1.0) for p in pieces]).save_pretrained(out)
    return out


def _word_level(out: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, "<pad>": 2, "<unk>": 3, "hello": 4, "world": 5}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    specials = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    PreTrainedTokenizerFast(tokenizer_object=words, **specials).save_pretrained(out)
    return out


def _bpe_that_merges_specials(out: Path) -> Path:
    """A BPE over whitespace-split words whose merges build <s>, </s> and <pad>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(vocab_size=60, special_tokens=list(specials.values()))
    bpe.train_from_iterator([HTML] * 50 + ["hello world"] * 5, trainer)
    PreTrainedTokenizerFast(tokenizer_object=bpe, **specials).save_pretrained(out)
    return out


@pytest.mark.parametrize("make", [_xglm, _word_level, _bpe_that_merges_specials])
def test_no_model_makes_special_tokens_out_of_document_text(make: Any, tmp_path: Path) -> None:
    """Whatever makes `<s>` a special id (the added vocabulary, or a model holding it as a
    piece: a Unigram model scores it 0.0), document text encodes to no special id; text
    without such strings encodes as AutoTokenizer encodes it, and the tokens a tokenizer adds
    itself (XGLM's `</s>` before a document) are still added."""
    from transformers import AutoTokenizer

    path = make(tmp_path / "tok")
    auto = AutoTokenizer.from_pretrained(path)
    specials = {auto.bos_token_id, auto.eos_token_id, auto.pad_token_id}
    assert not specials.isdisjoint(auto(HTML, add_special_tokens=False)["input_ids"])  # before
    backend = load_tokenizer(path).backend
    for encode in (
        lambda texts, **kw: [backend.encode(t, **kw) for t in texts],
        backend.encode_batch,
        backend.encode_batch_fast,
    ):
        document, plain = encode([HTML, "hello world"], add_special_tokens=False)
        assert specials.isdisjoint(document.ids), document.tokens
        assert plain.ids == auto("hello world", add_special_tokens=False)["input_ids"]
        framed, plain = encode([HTML, "hello world"], add_special_tokens=True)
        assert plain.ids == auto("hello world")["input_ids"]
        # the tokens the tokenizer adds, around the document as around any text (transformers
        # 5.4 converts XGLM's with a `</s>` after it too, later releases only before it)
        bare = auto("hello world", add_special_tokens=False)["input_ids"]
        start = next(i for i in range(len(plain.ids)) if plain.ids[i : i + len(bare)] == bare)
        before, after = plain.ids[:start], plain.ids[start + len(bare) :]
        assert framed.ids == before + document.ids + after
    if make is _xglm:
        assert auto("hello")["input_ids"][0] == auto.eos_token_id  # XGLM: `</s> doc`


# --- D: a recipe's local entry ----------------------------------------------------------------


def test_a_recipes_local_entry_takes_narrower_tags_of_its_language(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    recipe = tmp_path / "r1"
    (recipe / "ar").mkdir(parents=True)
    sw, ar = valid_texts("sw", 30), valid_texts("ar", 20)
    (recipe / "sw_local.jsonl").write_bytes(lines(sw, "swh"))
    (recipe / "ar" / "arb.jsonl").write_bytes(lines(ar, "arb_Arab"))
    (recipe / "ar" / "en.jsonl").write_bytes(lines(["Hello."], "en"))  # named for another
    languages = {"sw": {"path": "sw_local.jsonl"}, "ar": {"path": "ar"}}
    document = {"format": "xelm-corpus-recipe", "format_version": "1.0.0"}
    (recipe / "recipe.json").write_text(json.dumps({**document, "languages": languages}))
    prepare([str(recipe / "recipe.json")], tokenizer_dir, tmp_path / "shards")
    assert documents(tmp_path / "shards") == {"ar": 20, "sw": 30}
    assert texts_in(tmp_path / "shards", "sw", tokenizer_dir) == sw


@pytest.mark.parametrize("name", ["en.jsonl", "en.txt", "en.jsonl.zst", "en.txt.gz"])
def test_a_byte_order_mark_at_the_start_of_a_file_is_no_text(tmp_path: Path, name: str) -> None:
    """A UTF-8 BOM (Windows tools write one) was "not a JSON object (plain text? name the file
    .txt)" in JSON lines, and the start of the first document in text. Read in blocks of one
    line (Arrow's and the line reader) and record by record, from the start and from a
    position past it: the same documents, the mark in none."""
    texts = [f"hello world {i}" for i in range(3)]
    body = lines(texts, "en") if ".jsonl" in name else "".join(t + "\n" for t in texts).encode()
    data = b"\xef\xbb\xbf" + body
    if name.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    elif name.endswith(".gz"):
        data = gzipped(data)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / name).write_bytes(data)
    assert [d.text for d in iter_documents(corpus)] == texts
    source = FileSource(str(corpus))
    for batch_size in (1, 1000):
        read = [t for batch in source.open(batch_size=batch_size) for t in batch.texts]
        assert read == texts, batch_size
    stream = source.open(batch_size=1)
    first = next(iter(stream))
    rest = [t for batch in source.open(stream.position, batch_size=2) for t in batch.texts]
    assert first.texts + rest == texts
