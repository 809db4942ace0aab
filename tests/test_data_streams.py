"""Streams of datasets laid out like Hub repositories: a capped stream whose languages are not
named stops at its cap, weights without sizes are said before reading, rows that cannot be read
are skipped or refused without promising a rerun, and the Hub's and the network's failures
say what to do about them."""

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from corpus_helpers import Counting, valid_texts
from datasets.exceptions import DatasetNotFoundError
from hub_fixtures import c4_like, write_readme, write_rows
from huggingface_hub.utils import hf_raise_for_status

from xelm_cli.common.errors import FormatError, UsageError
from xelm_cli.data import prepare_work
from xelm_cli.data.corpus import iter_documents
from xelm_cli.data.labels import language_code
from xelm_cli.data.prepare import prepare
from xelm_cli.data.sampling import sample_documents
from xelm_cli.data.shards import Shards
from xelm_cli.data.source_plan import SourceOptions
from xelm_cli.data.sources import (
    DamagedDataFile,
    DatasetSource,
    SourceUnavailable,
    _translated,
)
from xelm_cli.data.tokenizer import train_tokenizer_on_corpus

try:  # the HTTP client huggingface_hub raises from: httpx2 from its 2.0, httpx before
    import httpx2 as http
except ImportError:
    import httpx as http  # type: ignore[no-redef]

ISO3 = {"de": "deu", "tr": "tur"}  # fineweb-2's language column


def fineweb2_like(root: Path, configs: dict[str, list[dict[str, Any]]]) -> Path:
    """fineweb-2's layout: configuration CONFIG's train files under ``data/CONFIG/train/``,
    parquet rows carrying ``language`` (ISO 639-3) and ``language_script``. After each
    configuration's rows comes a second train file cut in half: a stream read to its end fails
    there, so a test sees whether reading stopped before it (a stream is read ahead by a few
    batches, not a file)."""
    for config, rows in configs.items():
        folder = root / "data" / config / "train"
        write_rows(folder / "000_00000.parquet", rows)
        cut = write_rows(folder / "001_00000.parquet", rows[:50])
        cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    write_readme(root, {config: {"train": f"data/{config}/train/*"} for config in configs})
    return root


def rows_of(lang: str, texts: list[str]) -> list[dict[str, Any]]:
    return [
        {"text": t, "id": str(i), "language": ISO3[lang], "language_script": "Latn"}
        for i, t in enumerate(texts)
    ]


def tokens_of(shards: Shards, lang: str) -> list[list[int]]:
    return [ids.tolist() for ids in shards.iter_documents([lang])]


# -- 1. a capped stream whose languages are not named stops at the cap ---------------------------


def test_a_capped_stream_of_one_language_stops_at_its_cap_without_langs(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    """fineweb-2's deu_Latn, read without --langs: its rows say "deu", so its language is known
    only once read; the stream is left a few batches after de is full, not read to its end."""
    repo = fineweb2_like(tmp_path / "fw", {"deu_Latn": rows_of("de", valid_texts("de", 400))})
    options: dict[str, Any] = {
        "token_caps": "2K",
        "batch_size": 10,
        "reading": SourceOptions(config="deu_Latn"),
    }
    unnamed = prepare(repo, tokenizer_dir, tmp_path / "unnamed", **options).shards
    named = prepare(repo, tokenizer_dir, tmp_path / "named", languages="de", **options).shards
    entry = unnamed.manifest["languages"]["de"]
    assert entry["read_to_limit"] and 0 < entry["documents"] < 100
    assert tokens_of(unnamed, "de") == tokens_of(named, "de")


def test_a_capped_stream_of_several_languages_stops_once_each_is_full(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    de, tr = valid_texts("de", 300), valid_texts("tr", 300)
    mixed = [row for pair in zip(rows_of("de", de), rows_of("tr", tr), strict=True) for row in pair]
    repo = fineweb2_like(tmp_path / "fw", {"default": mixed})
    shards = prepare(
        repo, tokenizer_dir, tmp_path / "s", token_caps="2K", batch_size=10
    ).shards  # reading to the end would meet the cut file
    assert shards.languages == ["de", "tr"]
    assert all(entry["read_to_limit"] for entry in shards.manifest["languages"].values())


@pytest.fixture(scope="module")
def five_thousand_rows(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    texts = [f"Satz {i}: {t[:80]}" for i, t in enumerate(valid_texts("de", 100) * 50)]
    root = tmp_path_factory.mktemp("fw") / "fineweb-2"
    return fineweb2_like(root, {"deu_Latn": rows_of("de", texts)}), texts


def test_a_sample_of_a_stream_stops_without_langs(
    five_thousand_rows: tuple[Path, list[str]],
) -> None:
    """``sample_documents`` (what clusterers fit on) reads as prepare does."""
    repo, texts = five_thousand_rows
    sample = sample_documents(repo, per_language=5, reading=SourceOptions(config="deu_Latn"))
    assert [(d.text, d.language) for d in sample] == [(t, "de") for t in texts[:5]]


def test_a_tokenizer_of_a_stream_stops_without_langs(
    five_thousand_rows: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """``xelm data tokenizer`` reads batches of 1,000 rows: 4 of the 5 at most."""
    repo, _ = five_thousand_rows
    trained = train_tokenizer_on_corpus(
        repo,
        tmp_path / "tok",
        vocab_size=300,
        chars_per_language=500,
        reading=SourceOptions(config="deu_Latn"),
    )
    assert list(trained.characters) == ["de"]


# -- 2. weights without sizes are said before reading -------------------------------------------


WEIGHED = (
    "xelm: warning: --alpha weighs de, sw by the tokens read up to the read limit (--cap, else "
    "--tokens), not by size; give --sizes (en=3.07B,de=397M: documents, bytes or tokens) to "
    "weigh each language by its size and read only its share"
)


def test_languages_weighed_without_sizes_are_named_before_reading(
    tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The warning came in pass 2, after the whole reading (hours, on mC4); it comes before
    the first batch now: a run stopped at its first batch has said it."""
    c4 = c4_like(tmp_path / "c4", {lang: valid_texts(lang, 40) for lang in ("de", "sw")})
    options: dict[str, Any] = {
        "languages": "de,sw",
        "reading": SourceOptions(config="{lang}"),
        "alpha": 0.3,
        "tokens": "3K",
        "batch_size": 5,
    }
    with pytest.raises(KeyboardInterrupt):
        prepare(c4, tokenizer_dir, tmp_path / "s", progress=Counting(stop_after=1), **options)
    assert capsys.readouterr().err.splitlines() == [WEIGHED]
    shards = prepare(c4, tokenizer_dir, tmp_path / "s", **options).shards  # said once, not twice
    assert capsys.readouterr().err.splitlines() == [WEIGHED]
    assert shards.languages == ["de", "sw"]
    sized = prepare(c4, tokenizer_dir, tmp_path / "sized", sizes="de=2,sw=1", **options)
    assert sized.shards.manifest["options"]["sizes"] == {"de": 2, "sw": 1}
    assert "weighs" not in capsys.readouterr().err


def test_a_dataset_read_without_langs_says_its_languages_are_weighed_by_tokens(
    tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = fineweb2_like(tmp_path / "fw", {"deu_Latn": rows_of("de", valid_texts("de", 200))})
    with pytest.raises(KeyboardInterrupt):
        prepare(
            repo,
            tokenizer_dir,
            tmp_path / "s",
            reading=SourceOptions(config="deu_Latn"),
            alpha=0.3,
            token_caps="2K",
            batch_size=10,
            progress=Counting(stop_after=1),
        )
    assert capsys.readouterr().err.splitlines() == [
        f"xelm: warning: --alpha weighs the languages of {repo} by the tokens read up to the "
        "read limit (--cap, else --tokens), not by size; give --langs and --sizes "
        "(en=3.07B,de=397M: documents, bytes or tokens) to weigh each language by its size and "
        "read only its share"
    ]


# -- 3. rows that cannot be read ----------------------------------------------------------------


def test_rows_without_text_or_with_an_unknown_language_are_skipped_and_said_once(
    tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A null text is a blank document; a row of an unknown code (``und``) is one of a language
    not wanted, --langs or not. Each is said once, naming a row; neither stops the reading."""
    de, tr = valid_texts("de", 6), valid_texts("tr", 6)
    rows: list[dict[str, Any]] = [
        *({"text": t, "lang": "de"} for t in de[:3]),
        {"text": None, "lang": "de"},  # row 4
        {"text": "Ne dilde?", "lang": "und"},  # row 5
        *({"text": t, "lang": "tr"} for t in tr[:3]),
        {"lang": "tr"},  # no text at all
        {"text": "Ahoj.", "lang": "xx-YY"},
        *({"text": t, "lang": "de"} for t in de[3:]),
        *({"text": t, "lang": "tr"} for t in tr[3:]),
    ]
    repo = tmp_path / "repo"
    write_rows(repo / "data" / "train-00000.jsonl", rows)
    write_readme(repo, {"default": {"train": "data/train-*.jsonl"}})
    said = [
        f"xelm: warning: {repo} [train] row 4: its 'text' is null: rows without text are "
        "skipped, as blank documents are",
        f"xelm: warning: {repo} [train] row 5: unknown language code 'und' in its 'lang' "
        "column: rows of unknown languages are skipped, as those of languages not wanted are",
    ]
    counted = [  # at the end, per language wanted (was none: blank rows went unsaid)
        f"xelm: warning: {repo}: 1 row of {lang} skipped as blank (empty, whitespace only or "
        "null text; is --text-column right?)"
        for lang in ("de", "tr")
    ]
    every = prepare(repo, tokenizer_dir, tmp_path / "every", batch_size=4).shards
    assert capsys.readouterr().err.splitlines() == said + counted
    some = prepare(repo, tokenizer_dir, tmp_path / "some", languages="de").shards
    assert capsys.readouterr().err.splitlines() == said + counted[:1]
    plain = {
        lang: prepare(
            write_rows(tmp_path / lang / f"{lang}.jsonl", [{"text": t} for t in texts]).parent,
            tokenizer_dir,
            tmp_path / f"plain-{lang}",
        ).shards
        for lang, texts in (("de", de), ("tr", tr))
    }
    assert every.languages == ["de", "tr"] and some.languages == ["de"]
    for lang in ("de", "tr"):
        assert tokens_of(every, lang) == tokens_of(plain[lang], lang)
    assert tokens_of(some, "de") == tokens_of(plain["de"], "de")


def test_an_unknown_language_code_is_a_language_not_wanted(
    tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was refused before --langs was asked whether the row is wanted."""
    texts = valid_texts("de", 4)
    rows = [{"text": t, "lang": "de"} for t in texts[:2]]
    rows += [{"text": "?", "lang": "und"}] * 3 + [{"text": t, "lang": "de"} for t in texts[2:]]
    repo = tmp_path / "repo"
    write_rows(repo / "train.parquet", rows)
    write_readme(repo, {"default": {"train": "train.parquet"}})
    shards = prepare(repo, tokenizer_dir, tmp_path / "s", languages="de").shards
    assert shards.stats["de"].documents == 4
    assert capsys.readouterr().err.splitlines() == [
        f"xelm: warning: {repo} [train] row 3: unknown language code 'und' in its 'lang' column: "
        "rows of unknown languages are skipped, as those of languages not wanted are"
    ]


def test_a_row_that_cannot_be_read_keeps_no_work_and_promises_no_rerun(
    tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Broken data is met again where the work stopped: the error does not say that the same
    command continues, and no work is left behind for it."""
    monkeypatch.setattr(prepare_work, "CHECKPOINT_SECONDS", 0.0)  # documents recorded at once
    repo = tmp_path / "repo"
    write_rows(repo / "de-0.jsonl", [{"text": t, "lang": "de"} for t in valid_texts("de", 20)])
    write_rows(repo / "de-1.jsonl", [{"text": ["not", "text"], "lang": "de"}])
    write_readme(repo, {"default": {"train": "de-*.jsonl"}})
    out = tmp_path / "out" / "s"
    with pytest.raises(FormatError) as info:
        prepare(repo, tokenizer_dir, out, batch_size=5)
    message = str(info.value)
    assert message.startswith(f"cannot read {repo} [train]: ")  # its type is not its column's
    assert "continues" not in message and "\n" not in message
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_row_language_codes_are_normalised_through_the_cache(tmp_path: Path) -> None:
    rows = [{"text": f"Satz {i}.", "lang": "deu"} for i in range(50)]
    repo = tmp_path / "repo"
    write_rows(repo / "train.parquet", rows)
    write_readme(repo, {"default": {"train": "train.parquet"}})
    language_code.cache_clear()
    batches = list(DatasetSource(str(repo)).open(batch_size=20))
    assert [lang for batch in batches for lang in batch.languages] == ["de"] * 50
    info = language_code.cache_info()
    assert (info.misses, info.hits) == (1, 49)


# -- 4. the Hub's refusals and the network's failures -------------------------------------------

HUB_FILE = "https://huggingface.co/datasets/acme/corpus/resolve/v9/data/train-00000.parquet"


def hub_error(status: int, code: str | None = None) -> Exception:
    """The error huggingface_hub raises for an answer of ``status`` (``X-Error-Code``:
    ``code``), made by huggingface_hub itself."""
    headers = {"X-Error-Code": code} if code else {}
    response = http.Response(status, headers=headers, request=http.Request("GET", HUB_FILE))
    try:
        hf_raise_for_status(response)
    except Exception as exc:
        return exc
    raise AssertionError(f"{status} raised nothing")


def raised_from(outer: Exception, inner: Exception) -> Exception:
    """``outer`` raised from ``inner``, as ``datasets`` raises its own errors from the Hub's."""
    try:
        try:
            raise inner
        except Exception as exc:
            raise outer from exc
    except Exception as exc:
        return exc
    raise AssertionError


def transport(kind: type[http.TransportError], message: str) -> Exception:
    return kind(message, request=http.Request("GET", HUB_FILE))


GATED = r"it is gated on the Hugging Face Hub: accept its terms on its page, then log in \(`hf "
NOT_FOUND = r"not found on the Hub \(or private: log in with `hf auth login` or set HF_TOKEN\)"
REVISION = r"it has no revision 'v9' on the Hugging Face Hub; check --revision"
NETWORK = r"\(offline\? run the same command again to continue, or set XELM_HUB_MIRROR"
FAILURES: dict[str, tuple[Callable[[], Exception], type[Exception], str]] = {
    "gated (403)": (lambda: hub_error(403, "GatedRepo"), UsageError, GATED),
    "gated (401)": (lambda: hub_error(401, "GatedRepo"), UsageError, GATED),
    "gated, by datasets": (
        lambda: raised_from(
            DatasetNotFoundError(
                "Dataset 'acme/corpus' is a gated dataset on the Hub. You must be authenticated "
                "to access it."
            ),
            hub_error(401, "GatedRepo"),
        ),
        UsageError,
        GATED,
    ),
    "forbidden": (lambda: hub_error(403), UsageError, r"refused access \(403\): log in \(`hf"),
    "private or missing": (lambda: hub_error(401, "RepoNotFound"), UsageError, NOT_FOUND),
    "no such revision": (lambda: hub_error(404, "RevisionNotFound"), UsageError, REVISION),
    "no such revision, by datasets": (
        lambda: raised_from(
            DatasetNotFoundError(
                "Revision 'v9' doesn't exist for dataset 'acme/corpus' on the Hub."
            ),
            hub_error(404, "RevisionNotFound"),
        ),
        UsageError,
        REVISION,
    ),
    "no such dataset, by datasets": (
        lambda: raised_from(
            DatasetNotFoundError(
                "Dataset 'acme/corpus' doesn't exist on the Hub or cannot be accessed."
            ),
            hub_error(404, "RepoNotFound"),
        ),
        UsageError,
        NOT_FOUND + r"; check the name and --revision",
    ),
    "no such file": (
        lambda: hub_error(404, "EntryNotFound"),
        UsageError,
        r"one of its files is not on the Hugging Face Hub \(404\); check --revision",
    ),
    "server error": (lambda: hub_error(502), SourceUnavailable, NETWORK),
    "too many requests": (lambda: hub_error(429), SourceUnavailable, NETWORK),
    "cut short (httpx)": (
        lambda: transport(
            http.RemoteProtocolError,
            "peer closed connection without sending complete message body (incomplete chunked "
            "read)",
        ),
        SourceUnavailable,
        NETWORK,
    ),
    "cut short, wrapped": (
        lambda: raised_from(
            RuntimeError("An error occurred while generating the dataset"),
            transport(http.ReadError, "[Errno 104] Connection reset by peer"),
        ),
        SourceUnavailable,
        NETWORK,
    ),
    "gzip cut short": (
        lambda: EOFError("Compressed file ended before the end-of-stream marker was reached"),
        SourceUnavailable,
        NETWORK,
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_hub_and_network_failures_say_what_to_do(case: str) -> None:
    make, error, message = FAILURES[case]
    source = DatasetSource("xelm-tests/nowhere-on-this-machine", revision="v9")
    with pytest.raises(error) as info, _translated(source):
        raise make()
    assert type(info.value) is error  # a refusal is no SourceUnavailable: rerunning cannot help
    assert re.search(message, str(info.value)), str(info.value)
    assert "\n" not in str(info.value)


CORPUS_FAILURES = {
    "gated (401)": (lambda: hub_error(401, "GatedRepo"), GATED),
    "no such dataset": (lambda: hub_error(404, "RepoNotFound"), NOT_FOUND),
    "server error": (lambda: hub_error(502), r"\(offline\? run the command again, or pass a"),
}


@pytest.mark.parametrize("case", list(CORPUS_FAILURES))
@pytest.mark.parametrize("when", ["loading", "reading"])
def test_a_hub_dataset_given_as_a_corpus_says_what_to_do(
    case: str, when: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Hub id passed where a corpus goes (``iter_documents``) is read by the same rules as a
    streamed source: a refusal says what to do, not "offline?"; only the network's failure
    suggests running again."""
    import datasets

    make, message = CORPUS_FAILURES[case]

    def rows() -> Any:
        raise make()
        yield

    def load_dataset(*args: Any, **kwargs: Any) -> Any:
        if when == "loading":
            raise make()
        return datasets.IterableDataset.from_generator(rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(UsageError) as info:
        list(iter_documents("xelm-tests/nowhere-on-this-machine", language="de"))
    assert re.search(message, str(info.value)), str(info.value)
    assert "\n" not in str(info.value)


def test_a_local_gzip_file_cut_short_is_broken_data(tmp_path: Path) -> None:
    """Only a download is cut short by the network: a local file that ends early is broken
    (here the only file, read for the dataset's columns before any row)."""
    repo = tmp_path / "repo"
    path = write_rows(repo / "train.jsonl.gz", [{"text": "Hallo.", "lang": "de"}] * 2000)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    write_readme(repo, {"default": {"train": "train.jsonl.gz"}})
    with pytest.raises(FormatError, match=rf"^cannot read {repo} \[train\]: ") as info:
        list(DatasetSource(str(repo)).open())
    assert json.dumps(str(info.value)).count("\\n") == 0


def _cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _a_line_cut_short(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[3] = lines[3][: len(lines[3]) // 2] + "\n"
    path.write_text("".join(lines), encoding="utf-8")


@pytest.mark.parametrize(
    ("suffix", "damage", "said"),
    [
        ("parquet", _cut_in_half, "Parquet magic bytes not found"),
        ("jsonl", _a_line_cut_short, "JSON parse error"),
    ],
)
def test_a_damaged_parquet_or_json_lines_file_is_named_and_the_work_kept(
    tmp_path: Path, tokenizer_dir: Path, suffix: str, damage: Callable[[Path], None], said: str
) -> None:
    """As a compressed file that ends early (below): a parquet file cut short (FineWeb-2's and
    the Hub's conversions are parquet) or a JSON line that ends mid-value used to fail with
    Arrow's words alone, the file unnamed and the work thrown away."""
    texts = valid_texts("de", 60)
    repos = {}
    for name in ("good", "bad"):
        repos[name] = repo = tmp_path / name
        for i in range(2):
            rows = [{"text": text} for text in texts[i * 30 : (i + 1) * 30]]
            write_rows(repo / "de" / f"part-{i:05d}.{suffix}", rows)
        write_readme(repo, {"de": {"train": f"de/part-*.{suffix}"}})
    damaged = repos["bad"] / "de" / f"part-00001.{suffix}"
    intact = damaged.read_bytes()
    damage(damaged)
    options: dict[str, Any] = {"languages": "de", "reading": SourceOptions(config="{lang}"),
                               "batch_size": 5}  # fmt: skip
    with pytest.raises(DamagedDataFile) as info:
        prepare(repos["bad"], tokenizer_dir, tmp_path / "s", **options)
    assert str(info.value).startswith(
        f"cannot read {repos['bad']} [de/train] after row 30: its data file {damaged} is damaged ("
    ) and said in str(info.value), str(info.value)
    assert (tmp_path / ".s.prepare").is_dir() and not (tmp_path / "s").exists()
    damaged.write_bytes(intact)
    continued = prepare(repos["bad"], tokenizer_dir, tmp_path / "s", **options).shards
    whole = prepare(repos["good"], tokenizer_dir, tmp_path / "whole", **options).shards
    assert [continued.document("de", i).tolist() for i in range(60)] == [
        whole.document("de", i).tolist() for i in range(60)
    ]


@pytest.mark.parametrize("suffix", ["parquet", "jsonl"])
def test_an_empty_configuration_is_one_line_naming_the_way_out(
    tmp_path: Path, tokenizer_dir: Path, suffix: str
) -> None:
    """datasets cannot stream a data file of no rows: it failed with its own words alone
    ("BatchSize must be greater than 0, got 0", "StopIteration")."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo = tmp_path / "repo"
    write_rows(repo / "de" / f"part-00000.{suffix}", [{"text": t} for t in valid_texts("de", 5)])
    empty = repo / "az" / f"part-00000.{suffix}"
    empty.parent.mkdir(parents=True)
    if suffix == "parquet":
        pq.write_table(pa.table({"text": pa.array([], pa.string())}), empty)
    else:
        empty.write_text("")
    write_readme(repo, {code: {"train": f"{code}/part-*.{suffix}"} for code in ("de", "az")})
    with pytest.raises(FormatError) as info:
        prepare(repo, tokenizer_dir, tmp_path / "s", languages="de,az",
                reading=SourceOptions(config="{lang}"))  # fmt: skip
    assert re.fullmatch(
        rf"cannot read {re.escape(str(repo))} \[az/train\]: (its data file .*az.*|one of its "
        r"data files) holds no rows \(datasets cannot stream an empty file\): remove it, or "
        r"leave its language out of --langs",
        str(info.value),
    ), str(info.value)
    assert not (tmp_path / "s").exists() and not (tmp_path / ".s.prepare").exists()


def test_a_damaged_data_file_keeps_the_work_for_the_same_command_once_replaced(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    """mC4 spreads a language over up to thousands of files: the one that cannot be read is
    named, what was read before it is kept, and once it is replaced the same command gives the
    shards of a run that never met it."""
    texts = {"de": valid_texts("de", 60)}
    good, bad = c4_like(tmp_path / "good", texts), c4_like(tmp_path / "bad", texts)
    damaged = next((bad / "multilingual").glob("c4-de.tfrecord-00001-*"))
    intact = damaged.read_bytes()
    damaged.write_bytes(intact[: len(intact) // 2])
    options: dict[str, Any] = {
        "languages": "de",
        "reading": SourceOptions(config="{lang}"),
        "batch_size": 5,
    }
    with pytest.raises(DamagedDataFile) as info:
        prepare(bad, tokenizer_dir, tmp_path / "s", **options)
    assert str(info.value).startswith(
        f"cannot read {bad} [de/train] after row 30: its data file {damaged} is damaged ("
    )
    assert (tmp_path / ".s.prepare").is_dir() and not (tmp_path / "s").exists()
    damaged.write_bytes(intact)
    continued = prepare(bad, tokenizer_dir, tmp_path / "s", **options).shards
    whole = prepare(good, tokenizer_dir, tmp_path / "whole", **options).shards
    assert continued.stats["de"].documents == 60
    assert [continued.document("de", i).tolist() for i in range(60)] == [
        whole.document("de", i).tolist() for i in range(60)
    ]
