"""Bad corpus input: one `xelm: error:` line on stderr, a non-zero exit, nothing written."""

import io
import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard
from conftest import SHARED_DATA

from xelm_cli.cli import run
from xelm_cli.common.errors import FormatError, UsageError
from xelm_cli.data.corpus import iter_documents, read_documents
from xelm_cli.data.shards import Shards
from xelm_cli.data.source_plan import SourceOptions
from xelm_cli.data.sources import Batch, FileSource

RECORDS = [{"text": "Merhaba dünya.", "lang": "tr"}, {"text": "Hello world.", "lang": "en"}]


def jsonl(records: Sequence[object]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def compressed(records: Sequence[object]) -> bytes:
    return zstandard.ZstdCompressor().compress(jsonl(records) * 200)


def hf_dataset(path: Path, columns: dict[str, list[str]]) -> Path:
    import datasets

    datasets.Dataset.from_dict(columns).save_to_disk(str(path))
    return path


# Each case writes its input under the test directory and returns (input, extra arguments).
Case = Callable[[Path], tuple[Path, list[str]]]


def _file(name: str, data: bytes, *args: str) -> Case:
    def make(root: Path) -> tuple[Path, list[str]]:
        (root / name).write_bytes(data)
        return root / name, list(args)

    return make


def _empty_directory(root: Path) -> tuple[Path, list[str]]:
    (root / "corpus").mkdir()
    return root / "corpus", []


def _unlabelled_dataset(root: Path) -> tuple[Path, list[str]]:
    return hf_dataset(root / "ds", {"text": ["Merhaba.", "Selam."]}), []


CASES: dict[str, tuple[Case, str]] = {
    "empty-file": (_file("tr.jsonl", b""), "no documents in"),
    "empty-directory": (_empty_directory, "no corpus files"),
    "non-utf8-jsonl": (_file("tr.jsonl", jsonl(RECORDS) + b'{"text": "\xff\xfe"}\n'), "UTF-8"),
    "non-utf8-txt": (_file("tr.txt", "Merhaba dünya.\n".encode() + b"caf\xe9\n"), "UTF-8"),
    "zst-garbage": (
        _file("tr.jsonl.zst", compressed(RECORDS)[:8] + b"\xffgarbage" * 64),
        "corrupt zstd",
    ),
    "zst-truncated": (
        _file("tr.jsonl.zst", compressed(RECORDS)[:-12]),
        "truncated zstd",
    ),
    "record-not-object": (_file("tr.jsonl", jsonl([*RECORDS, ["a", "list"]])), "tr.jsonl:3: "),
    "record-without-text": (_file("tr.jsonl", jsonl([{"body": "x"}])), "string field 'text'"),
    "unknown-record-language": (
        _file("c.jsonl", jsonl([{"text": "x", "lang": "xx-nowhere!"}])),
        "c.jsonl:1: ",
    ),
    "unlabelled-jsonl": (
        _file("corpus.jsonl", jsonl([{"text": "x"}])),
        "corpus.jsonl: documents have no language: add a 'lang' field or pass --lang",
    ),
    "unlabelled-txt": (_file("notes.txt", b"Merhaba.\n"), "notes.txt: documents have no"),
    "unlabelled-dataset": (_unlabelled_dataset, "ds: documents have no language"),
    "unknown-langs": (_file("tr.jsonl", jsonl(RECORDS), "--langs", "tr,klingon!"), "klingon"),
    "unknown-lang": (_file("notes.txt", b"Merhaba.\n", "--lang", "klingon!"), "klingon"),
    "not-a-corpus-file": (_file("data.parquet", b"PAR1"), "not a corpus file"),
}


def assert_one_error_line(err: str, message: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("xelm: error: "), err
    assert message in lines[0], err


@pytest.mark.parametrize("command", ["prepare", "tokenizer"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_writes_nothing(
    case: str,
    command: str,
    tokenizer_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make, message = CASES[case]
    source, extra = make(tmp_path)
    out = tmp_path / "out"
    args = ["data", command, str(source), "-o", str(out), *extra]
    if command == "prepare":
        args += ["--tokenizer", str(tokenizer_dir)]
    else:
        args += ["--vocab-size", "300"]
    capsys.readouterr()
    assert run(args) != 0
    assert_one_error_line(capsys.readouterr().err, message)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_lang_labels_an_unlabelled_dataset(
    tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = hf_dataset(tmp_path / "ds", {"text": ["Merhaba.", "Selam, dünya."]})
    out = tmp_path / "shards"
    prepare = ["data", "prepare", str(source), "-t", str(tokenizer_dir), "-o", str(out)]
    assert run([*prepare, "--lang", "tr", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["languages"]) == ["tr"]
    assert report["languages"]["tr"]["documents"] == 2
    assert report["options"]["lang"] == "tr"
    assert run([*prepare, "--lang", "tur"]) == 0  # same label, normalised: up to date
    assert "up to date" in capsys.readouterr().out
    assert run([*prepare, "--lang", "en"]) == 2  # another label is other content
    assert_one_error_line(capsys.readouterr().err, "other options (lang)")
    tokenizer = ["data", "tokenizer", str(source), "-o", str(tmp_path / "tok")]
    assert run([*tokenizer, "--vocab-size", "300", "--lang", "tr", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["characters"] == {"tr": 21}


def test_file_language_wins_over_lang(tmp_path: Path) -> None:
    (tmp_path / "tr.txt").write_text("Merhaba.\n")
    (tmp_path / "notes.txt").write_text("Hello.\n")
    (tmp_path / "mixed.jsonl").write_bytes(jsonl([{"text": "x", "lang": "ru"}, {"text": "y"}]))
    docs = iter_documents(tmp_path, language="en", require_language=True)
    assert [(d.text, d.language) for d in docs] == [
        ("x", "ru"),
        ("y", "en"),
        ("Hello.", "en"),
        ("Merhaba.", "tr"),
    ]


def test_zstd_reader_reads_multi_frame_files_and_refuses_truncation(tmp_path: Path) -> None:
    frame = zstandard.ZstdCompressor()
    path = tmp_path / "en.jsonl.zst"
    path.write_bytes(frame.compress(jsonl(RECORDS[:1])) + frame.compress(jsonl(RECORDS[1:])))
    assert [d.text for d in iter_documents(path)] == ["Merhaba dünya.", "Hello world."]
    path.write_bytes(b"")  # an empty file is an empty corpus, not a broken one
    assert list(iter_documents(path)) == []
    real = (SHARED_DATA / "corpus" / "valid" / "en.jsonl.zst").read_bytes()
    path.write_bytes(real[: len(real) // 2])
    with pytest.raises(FormatError, match="truncated zstd stream"):
        list(iter_documents(path))


def test_sample_corpus_shards_match_the_manifest(
    tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real slice of the sample corpus: the token files hold exactly what the manifest says."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for lang in ("az", "tr", "ar"):
        src = SHARED_DATA / "corpus" / "valid" / f"{lang}.jsonl.zst"
        (corpus / src.name).write_bytes(src.read_bytes())
    documents = {lang: 0 for lang in ("az", "tr", "ar")}
    for doc in iter_documents(corpus):
        documents[doc.language or ""] += bool(doc.text)
    out = tmp_path / "shards"
    args = ["data", "prepare", str(corpus), "-t", str(tokenizer_dir), "-o", str(out)]
    assert run(args) == 0
    shards = Shards.open(out)
    assert shards.verify() == []
    for lang, entry in shards.manifest["languages"].items():
        tokens = np.fromfile(out / f"{lang}.tokens.bin", dtype=shards.dtype)
        offsets = np.fromfile(out / f"{lang}.offsets.bin", dtype="<u8")
        assert len(tokens) == entry["tokens"] == entry["source_tokens"] > 0
        assert len(offsets) - 1 == entry["documents"] == documents[lang]
        assert offsets[-1] == len(tokens)
    other = tmp_path / "tok2"
    assert run(["data", "tokenizer", str(corpus), "-o", str(other), "--vocab-size", "300"]) == 0
    capsys.readouterr()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert run([*args[:3], "-t", str(other), "-o", str(out)]) == 2
    assert_one_error_line(capsys.readouterr().err, "another tokenizer")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_require_tokenizer(tokenizer_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "tr.txt").write_text("Merhaba dünya.\n")
    from xelm_cli.data.prepare import prepare

    shards = prepare(tmp_path / "tr.txt", tokenizer_dir, tmp_path / "shards").shards
    shards.require_tokenizer(shards.tokenizer_fingerprint, "bundle seed/")
    with pytest.raises(UsageError, match=r"^bundle seed/ has tokenizer sha256:0+, but ") as info:
        shards.require_tokenizer("sha256:" + "0" * 64, "bundle seed/")
    assert "\n" not in str(info.value)
    assert shards.tokenizer_fingerprint in str(info.value)


# -- the columnar file reader ------------------------------------------------------------------


def _by_hand(content: bytes, default: str | None) -> list[tuple[str, str | None]]:
    """The documents of JSON lines: their language the first of 'lang', 'language' that is
    neither null nor empty."""
    documents = []
    for line in io.StringIO(content.decode(), newline=None):
        if line.strip():
            record = json.loads(line)
            code = record.get("lang") or record.get("language") or default
            documents.append((record["text"], code))
    return documents


def test_columnar_reading_gives_the_line_by_line_documents() -> None:
    """Every file of the sample corpus's valid split, read in blocks (Arrow), holds the
    documents a json.loads per line gives, in order."""
    for path in sorted((SHARED_DATA / "corpus" / "valid").glob("*.jsonl.zst")):
        content = zstandard.ZstdDecompressor().stream_reader(path.read_bytes()).read()
        documents = [(d.text, d.language) for d in iter_documents(path)]
        assert documents == _by_hand(content, path.name.split(".")[0]), path.name


# Lines Arrow reads, and lines only the line-by-line reading gets right (a blank line, "\r\n",
# a null 'lang' beside a 'language' (which then counts), escapes, an empty and a blank text):
# blocks of both kinds.
UNUSUAL = [
    b'{"text": "a\\u00e9\\ud83d\\ude00 \\"q\\"", "lang": "tr", "source": {"n": [1, 2.5]}}\n',
    b"\n",
    b'{"text": "crlf", "lang": "de"}\r\n',
    b'{"text": "null lang", "lang": null, "language": "ru"}\n',
    b'{"text": "", "lang": "tr"}\n',
    b'{"text": "   ", "language": "de"}\n',
    b'{"text": "no label"}\n',
]


def _corpus(root: Path) -> Path:
    """Three files: a multi-frame zstd file and plain JSON lines in several languages, and
    text; 1,000 documents in all, with every kind of UNUSUAL line among them."""
    corpus = root / "corpus"
    corpus.mkdir()
    common = [json.dumps({"text": f"doc {i} ü", "lang": "tr"}).encode() + b"\n" for i in range(600)]
    frame = zstandard.ZstdCompressor()
    first, second = b"".join(common[:250]), b"".join(common[250:])
    (corpus / "a.jsonl.zst").write_bytes(frame.compress(first) + frame.compress(second))
    mixed = [
        json.dumps({"text": f"b {i}", "lang": ["en", "ja"][i % 2]}).encode() + b"\n"
        for i in range(300)
    ]
    for i, line in enumerate(UNUSUAL):
        mixed.insert(37 * i + 5, line)
    (corpus / "b.jsonl").write_bytes(b"".join(mixed))
    (corpus / "tr.txt").write_bytes(b"".join(f"line {i}\n\n".encode() for i in range(93)))
    return corpus


def _read_all(source: FileSource, position: object, batch_size: int) -> list[tuple[Batch, object]]:
    stream = source.open(position, batch_size=batch_size)
    return [(batch, stream.position) for batch in stream]


def test_a_file_stream_resumes_exactly_after_every_batch(tmp_path: Path) -> None:
    """Opening corpus files at the position after any batch continues with the next
    document, mid-file (a zstd frame boundary, a blank line, "\\r\\n") and across files, also
    with another batch size; the documents are those a json.loads per line gives."""
    corpus = _corpus(tmp_path)
    source = FileSource(str(corpus), language="sw")
    batches = _read_all(source, None, 64)
    texts = [text for batch, _ in batches for text in batch.texts]
    languages = [lang for batch, _ in batches for lang in batch.languages]
    expected = [
        (text, code or "sw")
        for name in ("a.jsonl.zst", "b.jsonl")
        for text, code in _by_hand(_content(corpus / name), None)
        if text.strip()  # blank documents are dropped
    ] + [(f"line {i}", "tr") for i in range(93)]
    assert list(zip(texts, languages, strict=True)) == expected
    assert len(batches) > 3 * 3  # several batches in every file
    for k, (_, position) in enumerate(batches):
        assert json.loads(json.dumps(position)) == position  # kept in state.json
        rest = [t for batch, _ in _read_all(source, position, 50) for t in batch.texts]
        assert rest == [t for batch, _ in batches[k + 1 :] for t in batch.texts], position
    assert batches[-1][1] == {"file": 2, "offset": (corpus / "tr.txt").stat().st_size, "line": 186}


def _content(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".zst":
        return zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True).read()
    return data


def test_a_position_of_an_earlier_version_skips_documents(tmp_path: Path) -> None:
    """A file position taken by an earlier xelm (a count of documents) still resumes."""
    source = FileSource(str(_corpus(tmp_path)), language="sw")
    texts = [t for batch, _ in _read_all(source, None, 100) for t in batch.texts]
    rest = [t for batch, _ in _read_all(source, 700, 100) for t in batch.texts]
    everything = [d.text for d in iter_documents(source.path, language="sw") if d.text.strip()]
    assert texts == everything
    assert rest == [
        d.text for d in list(iter_documents(source.path, language="sw"))[700:] if d.text.strip()
    ]


def test_an_interrupted_preparation_resumes_mid_file_to_the_same_shards(
    tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed in the middle of a file, the same command continues at the line after the last
    checkpoint (no line is read twice) and makes the shards an uninterrupted run makes."""
    from xelm_cli.data import blocks, prepare_work
    from xelm_cli.data.prepare import prepare

    source = _corpus(tmp_path)
    options: dict[str, Any] = {"reading": SourceOptions(language="sw"), "batch_size": 40}
    whole = prepare(source, tokenizer_dir, tmp_path / "whole", **options).shards
    monkeypatch.setattr(prepare_work, "CHECKPOINT_SECONDS", 0.0)
    real_parse, calls = blocks._jsonl_block, itertools.count()

    def interrupted(data: bytes, path: Path, before: int, default: str | None) -> Any:
        if path.name == "b.jsonl" and next(calls) == 3:
            raise KeyboardInterrupt  # what Ctrl-C (or a kill) does halfway through b.jsonl
        return real_parse(data, path, before, default)

    monkeypatch.setattr(blocks, "_jsonl_block", interrupted)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        prepare(source, tokenizer_dir, out, **options)
    state = json.loads((tmp_path / ".resumed.prepare" / "state.json").read_text())
    (entry,) = state["sources"].values()  # one source: the corpus
    position = entry["position"]
    assert position["file"] == 1 and 0 < position["line"] < 300
    read_again: list[tuple[str, int]] = []

    def counted(data: bytes, path: Path, before: int, default: str | None) -> Any:
        read_again.append((path.name, before))
        return real_parse(data, path, before, default)

    monkeypatch.setattr(blocks, "_jsonl_block", counted)
    resumed = prepare(source, tokenizer_dir, out, **options).shards
    assert read_again[0] == ("b.jsonl", position["line"])  # the first line not yet recorded
    assert all(name == "b.jsonl" for name, _ in read_again)  # a.jsonl.zst: not read again
    assert resumed.manifest["languages"] == whole.manifest["languages"]
    for path in whole.path.glob("*.bin"):
        assert (resumed.path / path.name).read_bytes() == path.read_bytes()


def test_read_documents_stops_once_every_language_has_its_limit(tmp_path: Path) -> None:
    """What follows the first ``limit`` documents of each wanted language is not read (here
    a broken file, which reading would report; files are read in blocks of lines)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    en = [json.dumps({"text": f"en {i}", "lang": "en"}) for i in range(3)]
    tr = [json.dumps({"text": f"tr {i}", "lang": "tr"}) for i in range(2)]
    (corpus / "a.jsonl").write_text("\n".join([en[0], tr[0], en[1], tr[1]]))
    (corpus / "b.jsonl").write_text("\n".join(["{broken", *en[2:]]))
    got = read_documents(corpus, languages=["en", "tr"], limit=2)
    assert [(d.text, d.language) for d in got] == [
        ("en 0", "en"), ("tr 0", "tr"), ("en 1", "en"), ("tr 1", "tr")
    ]  # fmt: skip
    with pytest.raises(FormatError, match=r"b\.jsonl:1: not a JSON object"):
        read_documents(corpus, languages=["en", "tr"], limit=3)


def test_every_reader_takes_the_first_language_label_that_is_not_empty(tmp_path: Path) -> None:
    """'lang', else 'language', skipping a null or empty one, whether the records are JSON
    lines read as Arrow or line by line, a saved dataset or a dataset streamed from a
    Hub-layout directory (the streamed reader said tr for {"lang": "", "language": "tr"}, the
    others the --lang default or a refusal)."""
    from hub_fixtures import write_readme, write_rows

    records: list[dict[str, Any]] = [
        {"text": "a", "lang": "", "language": "tr"},
        {"text": "b", "lang": None, "language": "tr"},
        {"text": "c", "language": "ar"},
        {"text": "d", "lang": "en", "language": "tr"},
    ]
    expected = [("a", "tr"), ("b", "tr"), ("c", "ar"), ("d", "en")]
    arrow = tmp_path / "arrow"
    arrow.mkdir()
    (arrow / "docs.jsonl").write_bytes(jsonl(records))
    by_line = tmp_path / "by-line"
    by_line.mkdir()  # a blank line: the Arrow reading gives way to the line-by-line one
    (by_line / "docs.jsonl").write_bytes(jsonl(records[:2]) + b"\n" + jsonl(records[2:]))
    saved = hf_dataset(tmp_path / "saved", {
        "text": [r["text"] for r in records],
        "lang": [r.get("lang") for r in records],
        "language": [r["language"] for r in records],
    })  # fmt: skip
    hub = tmp_path / "hub"
    write_rows(hub / "data" / "train.jsonl", records)
    write_readme(hub, {"default": {"train": "data/train.jsonl"}})
    for source in (arrow, by_line, saved, hub):
        found = [(d.text, d.language) for d in iter_documents(source, language="ru")]
        assert found == expected, source.name
