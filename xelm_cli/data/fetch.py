"""``xelm data fetch``: the demo's data layout built from non-gated Hugging Face datasets.

Per language, into xelm's cache (``$XELM_HOME/data``, default ``~/.cache/xelm/data``):

- ``corpus/train/{lang}.jsonl.zst``: mC4 (``allenai/c4``, the shipped ``mc4`` recipe's
  configuration for the language), train split, streamed until ``size`` bytes of text;
- ``corpus/valid/{lang}.jsonl.zst``: the first ``valid_documents`` of mC4's validation split;
- ``eval/flores200-devtest/{lang}.txt`` and ``tasks/sib200/{lang}/{train,dev,test}.tsv``: the
  FLORES-200 sentences of SIB-200 (``Davlan/sib200``) and its topic labels. FLORES+ itself is
  gated, so the folder named like the sample data's holds SIB-200's 1004 FLORES sentences
  (test, validation, train) rather than the 1012 of devtest (the fetched README says so).

Every file is written atomically, when its part is complete. ``fetch.json`` records each
finished part with its cap; a re-run skips what is recorded (without touching the network), and
asking for more text re-fetches only what is short. A part streamed from mC4 is read through
``xelm data prepare``'s resumable work directory (``prepare_work``): its JSON lines are
appended to a hidden ``.KIND-LANG.prepare/`` beside the data, the stream position recorded
with them every few seconds; a killed or network-interrupted fetch, run again, continues the
stream from there and compresses the whole part when it is complete.
"""

import csv
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from xelm_cli.common.atomic import atomic_file, output_lock, write_bytes_atomic
from xelm_cli.common.digest import sha256_bytes
from xelm_cli.common.errors import UsageError
from xelm_cli.common.jsonio import canonical_json, pretty_json, read_json_object
from xelm_cli.common.outputs import refuse_inside_bundle
from xelm_cli.common.units import parse_byte_size
from xelm_cli.data import prepare_work
from xelm_cli.data.evalsets import SIB200_TEXT
from xelm_cli.data.prepare_work import LanguageCount, ResumableDirectory, open_at
from xelm_cli.data.recipes import load_recipe
from xelm_cli.data.sources import DatasetSource, require_hub
from xelm_cli.lang.codes import normalize_language, parse_language_list

HOME_VARIABLE = "XELM_HOME"
STATE = "fetch.json"
STATE_FORMAT = "xelm-fetch"
DEFAULT_SIZE = 2_000_000  # bytes of training text per language
DEFAULT_VALID_DOCUMENTS = 500
MC4_DOCUMENT_BYTES = 2_000  # rough mean size of an mC4 document, for the estimate only
SIB200_BYTES = 250_000  # the three SIB-200 splits of one language, about
SIB200_FILES = {"train": "train", "validation": "dev", "test": "test"}  # split -> file stem
SIB200_COLUMNS = ("index_id", "category", "text")
CORPUS_SOURCE = "mc4"
ZSTD_LEVEL = 10
BATCH_ROWS = 200  # rows per streamed batch: a resumed fetch re-reads at most the last batch
WORK_DOCUMENTS = "documents.jsonl.work"  # a part's uncompressed JSON lines while streaming


def xelm_home() -> Path:
    """``$XELM_HOME``, else ``xelm`` under the user's cache directory (``$XDG_CACHE_HOME``
    or ``~/.cache``)."""
    if os.environ.get(HOME_VARIABLE):
        return Path(os.environ[HOME_VARIABLE]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "xelm"


def default_data_dir() -> Path:
    return xelm_home() / "data"


def fetch_languages() -> list[str]:
    """The languages fetch knows: the paper's 20 (the ``mc4`` recipe's)."""
    return load_recipe(CORPUS_SOURCE).languages


@dataclass(frozen=True)
class Part:
    """One piece of the layout: a language's training text, held-out text, or SIB-200."""

    kind: str  # train, valid, sib200
    language: str
    cap: int  # bytes (train), documents (valid); 0: the whole split (sib200)

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.language}"

    @property
    def files(self) -> list[str]:
        if self.kind == "sib200":
            folder = f"tasks/sib200/{self.language}"
            return [f"eval/flores200-devtest/{self.language}.txt"] + [
                f"{folder}/{stem}.tsv" for stem in SIB200_FILES.values()
            ]
        return [f"corpus/{self.kind}/{self.language}.jsonl.zst"]

    @property
    def estimate(self) -> int:
        """Bytes of text this part reads, about (from its cap)."""
        if self.kind == "train":
            return self.cap
        if self.kind == "valid":
            return self.cap * MC4_DOCUMENT_BYTES
        return SIB200_BYTES

    @property
    def split(self) -> str:
        """mC4's split of a corpus part."""
        return "train" if self.kind == "train" else "validation"

    @property
    def dataset(self) -> str:
        """The Hub dataset the part is read from."""
        if self.kind == "sib200":
            return SIB200_TEXT.dataset
        return _mc4(self.language, self.split).dataset

    def source(self) -> str:
        if self.kind == "sib200":
            return f"{SIB200_TEXT.dataset} [{SIB200_TEXT.config_for(self.language)}]"
        return _mc4(self.language, self.split).describe()

    def full(self, count: LanguageCount) -> bool:
        """Whether ``count`` reached the cap (bytes of training text, held-out documents)."""
        return (count.bytes if self.kind == "train" else count.documents) >= self.cap


def _mc4(language: str, split: str) -> DatasetSource:
    source = load_recipe(CORPUS_SOURCE).source(language, split=split)
    assert isinstance(source, DatasetSource)
    return source


def plan_fetch(
    languages: list[str] | str | None = None,
    size: int = DEFAULT_SIZE,
    valid_documents: int = DEFAULT_VALID_DOCUMENTS,
) -> list[Part]:
    """The parts a fetch of ``languages`` (default: all 20) consists of."""
    known = fetch_languages()
    if isinstance(languages, str):  # "en,tr", as --langs takes it
        languages = parse_language_list(languages)
    chosen = [normalize_language(code) for code in languages or known]
    unknown = [code for code in chosen if code not in known]
    if unknown:
        raise UsageError(
            f"xelm data fetch knows {', '.join(known)}; not {', '.join(unknown)} "
            "(for other languages, use `xelm data prepare` with a dataset or recipe)"
        )
    if size < 1 or valid_documents < 1:
        raise UsageError("the training size and held-out documents must be at least 1")
    return [
        Part(kind, language, cap)
        for language in dict.fromkeys(chosen)
        for kind, cap in (("train", size), ("valid", valid_documents), ("sib200", 0))
    ]


def _read_state(out: Path) -> dict[str, Any]:
    path = out / STATE
    if not path.is_file():
        return {"format": STATE_FORMAT, "parts": {}}
    state = read_json_object(path, "fetch record")
    if state.get("format") != STATE_FORMAT or not isinstance(state.get("parts"), dict):
        raise UsageError(f"{path} is not a fetch record: remove it to fetch again")
    return state


def is_done(part: Part, out: Path, state: dict[str, Any]) -> bool:
    """Recorded with at least this cap (or its source held less), and its files present."""
    record = state["parts"].get(part.key)
    if not record or not all((out / name).is_file() for name in part.files):
        return False
    return bool(record.get("exhausted")) or record.get("cap", -1) >= part.cap


def missing_parts(out: Path, parts: list[Part]) -> list[Part]:
    """The parts ``out`` does not hold yet (read from its record, no network); ``out`` in a
    bundle, or a bundle itself, is refused first (as :func:`fetch` refuses it)."""
    refuse_inside_bundle(out, "the data", into=True)
    state = _read_state(out) if out.is_dir() else {"parts": {}}
    return [part for part in parts if not is_done(part, out, state)]


def fetch(
    out: Path | None = None,
    languages: list[str] | str | None = None,
    size: int | str = DEFAULT_SIZE,
    valid_documents: int = DEFAULT_VALID_DOCUMENTS,
    *,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Fetch what ``out`` (default: xelm's cache) lacks; the fetch record of every part asked
    for. ``progress(n)`` is told the bytes of text read. ``languages``: a list or ``"en,tr"``;
    ``size``: bytes of text a language, or their text (``"2M"``)."""
    if isinstance(size, str):
        size = parse_byte_size(size, "--size")
    out = Path(out) if out is not None else default_data_dir()
    # it fills the folder: unlisted files in a bundle, or in the bundle ``out`` itself
    refuse_inside_bundle(out, "the data", into=True)
    parts = plan_fetch(languages, size, valid_documents)
    advance = progress or (lambda n: None)
    with output_lock(out):
        state = _read_state(out)
        fetched = []
        todo = [part for part in parts if not is_done(part, out, state)]
        require_hub(part.dataset for part in todo)
        for part in todo:
            record = _FETCHERS[part.kind](part, out, advance)
            state["parts"][part.key] = {"cap": part.cap, "source": part.source(), **record}
            write_bytes_atomic(out / STATE, pretty_json(state))
            fetched.append(part.key)
        text = readme().encode()
        if not (out / "README.md").is_file() or (out / "README.md").read_bytes() != text:
            write_bytes_atomic(out / "README.md", text)
    return {
        "path": str(out),
        "fetched": fetched,
        "parts": {part.key: state["parts"][part.key] for part in parts},
    }


def describe_download(parts: list[Part], out: Path) -> str:
    """The line said before a fetch starts: how much, from where, into where."""
    total = sum(part.estimate for part in parts)
    languages = len({part.language for part in parts})
    return (
        f"fetching {len(parts)} parts for {languages} language(s) into {out}: about "
        f"{total / 1e6:,.1f} MB of text (an estimate from the caps, before compression) from "
        f"allenai/c4 and {SIB200_TEXT.dataset}"
    )


def _fetch_corpus(part: Part, out: Path, advance: Callable[[int], None]) -> dict[str, Any]:
    """mC4 documents up to the cap: streamed into a work directory that a re-run continues
    from, then compressed into place (memory stays flat in --size)."""
    source = _mc4(part.language, part.split)
    key = {"part": part.key, "cap": part.cap, "source": source.record()["digest"]}
    work = ResumableDirectory(
        out / f"{part.kind}-{part.language}", sha256_bytes(canonical_json(key)), fresh=False
    )
    with work.removed_unless_resumable():
        count = work.counts.setdefault(part.language, LanguageCount())
        exhausted = _stream_documents(part, source, work, count, advance)
        if not count.documents:
            raise UsageError(f"{part.source()} has no text")
        _compress(work.path / WORK_DOCUMENTS, out / part.files[0])
    return {"documents": count.documents, "bytes": count.bytes, "exhausted": exhausted}


def _stream_documents(
    part: Part,
    source: DatasetSource,
    work: ResumableDirectory,
    count: LanguageCount,
    advance: Callable[[int], None],
) -> bool:
    """Append the documents after the work directory's position until the cap; whether the
    source ended first. Every few seconds (prepare's checkpoint interval) the documents are
    synced to disk and the position after them recorded."""
    position = work.position(part.key) or {"stream": None, "written": 0}
    synced = time.monotonic()
    with open_at(work.path / WORK_DOCUMENTS, position["written"]) as documents:
        stream = source.open(position["stream"], batch_size=BATCH_ROWS)
        for batch in stream:
            for text in batch.texts:
                if part.full(count):
                    return False
                record = {"text": text, "lang": part.language, "source": CORPUS_SOURCE}
                documents.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
                count.documents += 1
                count.bytes += len(text.encode())
                advance(len(text.encode()))
            if time.monotonic() - synced >= prepare_work.CHECKPOINT_SECONDS:
                documents.flush()
                os.fsync(documents.fileno())
                work.checkpoint(part.key, {"stream": stream.position, "written": documents.tell()})
                synced = time.monotonic()  # not before the work directory's: it writes each time
    return True


def _compress(documents: Path, target: Path) -> None:
    """``documents`` zstd-compressed into ``target``, atomically."""
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    with (
        atomic_file(target, overwrite=True) as tmp,
        documents.open("rb") as src,
        tmp.open("wb") as dst,
    ):
        compressor.copy_stream(src, dst)


def _tsv(rows: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    writer.writerow(SIB200_COLUMNS)
    writer.writerows([row[c] for c in SIB200_COLUMNS] for row in rows)
    return buffer.getvalue().encode()


def _fetch_sib200(part: Part, out: Path, advance: Callable[[int], None]) -> dict[str, Any]:
    config = SIB200_TEXT.config_for(part.language)
    splits: dict[str, list[dict[str, Any]]] = {}
    for split in SIB200_FILES:
        source = DatasetSource(SIB200_TEXT.dataset, config=config, split=split)
        rows = []
        for row in source.rows():
            missing = [c for c in SIB200_COLUMNS if c not in row]
            if missing:
                raise UsageError(f"{source.describe()}: rows lack {', '.join(missing)}")
            rows.append({**row, "text": " ".join(str(row["text"]).split())})
            advance(len(rows[-1]["text"].encode()))
        splits[split] = rows
    text = "".join(row["text"] + "\n" for split in SIB200_TEXT.splits for row in splits[split])
    devtest, *tasks = part.files
    write_bytes_atomic(out / devtest, text.encode())
    for (split, _), name in zip(SIB200_FILES.items(), tasks, strict=True):
        write_bytes_atomic(out / name, _tsv(splits[split]))
    sizes = {split: len(rows) for split, rows in splits.items()}
    return {"documents": sum(sizes.values()), "splits": sizes, "bytes": len(text.encode())}


_FETCHERS = {"train": _fetch_corpus, "valid": _fetch_corpus, "sib200": _fetch_sib200}


def readme() -> str:
    """The fetched folder's README: what each path holds, its source and licence."""
    mc4 = f"`allenai/c4` (mC4; {load_recipe(CORPUS_SOURCE).raw.get('licence', 'ODC-By 1.0')})"
    sib200 = f"`{SIB200_TEXT.dataset}` ({SIB200_TEXT.licence})"
    rows = [
        ("corpus/train/{lang}.jsonl.zst", "training documents: the first ones of mC4's train "
         "split (configuration per language, `en-multi` for English, `iw` for Hebrew) up to "
         "the cap", mc4),
        ("corpus/valid/{lang}.jsonl.zst", "held-out documents: the first ones of mC4's "
         "validation split", mc4),
        ("eval/flores200-devtest/{lang}.txt", "FLORES-200 sentences, one per line: SIB-200's "
         "test, validation and train splits (1004 per language), not FLORES devtest's 1012",
         sib200),
        ("tasks/sib200/{lang}/{train,dev,test}.tsv", "SIB-200 topic classification "
         "(index_id, category, text)", sib200),
    ]  # fmt: skip
    table = "".join(f"| {path} | {what} | {source} |\n" for path, what, source in rows)
    return f"""# Data fetched by `xelm data fetch`

The layout `xelm demo` reads, built from non-gated datasets on the Hugging Face Hub; what was
fetched (sources, caps, documents, bytes) is recorded in `{STATE}`. Records are
`{{"text", "lang", "source"}}` JSON lines, zstd-compressed.

| path | what | source (licence) |
|---|---|---|
{table}
FLORES+ devtest itself (`openlanguagedata/flores_plus`) is gated on the Hub: to evaluate on
it, accept its terms on its page, log in (`hf auth login`) and pass
`--data openlanguagedata/flores_plus` to the perplexity evaluator.
"""


__all__ = [
    "DEFAULT_SIZE",
    "DEFAULT_VALID_DOCUMENTS",
    "Part",
    "default_data_dir",
    "describe_download",
    "fetch",
    "fetch_languages",
    "missing_parts",
    "plan_fetch",
    "xelm_home",
]
