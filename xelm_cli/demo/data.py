"""Where ``xelm demo`` reads its data: ``--data``; else the sample data beside this repository
(``../shared/data``, the development layout) when it holds the text the preset asks; else xelm's
cache, fetched from the Hub first when it lacks something.

The sample data stands in for a default fetch (``DEFAULT_SIZE`` of text a language, which it
about matches): a preset that asks more text a language than that (gpu-large's 128 MB) reads it
only if it holds that much in every language, by its ``corpus/stats.json`` (else the compressed
files' sizes, a lower bound); otherwise the cache, fetched at the preset's size."""

from collections.abc import Callable
from pathlib import Path

from xelm_cli.common.digest import sha256_bytes, sha256_file
from xelm_cli.common.errors import UsageError
from xelm_cli.common.jsonio import canonical_json, read_json_object
from xelm_cli.common.progress import byte_progress
from xelm_cli.data.fetch import (
    DEFAULT_SIZE,
    default_data_dir,
    describe_download,
    fetch,
    missing_parts,
    plan_fetch,
)
from xelm_cli.data.sources import SourceUnavailable
from xelm_cli.demo.presets import NEW_LANGUAGES, TRAIN_LANGUAGES, Preset

DEVELOPMENT_DATA = Path("..") / "shared" / "data"
SIB200_READ = ("train.tsv", "test.tsv")  # the icl evaluator's demonstrations and examples


def demo_files() -> list[str]:
    """Every file of a data directory that a demo run reads (the presets differ in how much of
    them, not in which): each language's training text and FLORES-200 devtest sentences, and
    SIB-200 of the training languages (NTREX-128, the MoE's gate text, is used where present)."""
    languages = [*TRAIN_LANGUAGES, *NEW_LANGUAGES]
    return [
        *(f"corpus/train/{lang}.jsonl.zst" for lang in languages),
        *(f"eval/flores200-devtest/{lang}.txt" for lang in languages),
        *(f"tasks/sib200/{lang}/{name}" for lang in TRAIN_LANGUAGES for name in SIB200_READ),
    ]


def missing_files(path: Path) -> list[str]:
    """The files of ``demo_files`` that ``path`` lacks."""
    return [name for name in demo_files() if not (path / name).is_file()]


def has_layout(path: Path) -> bool:
    """Whether ``path`` holds every file the demo reads."""
    return not missing_files(path)


def text_bytes(path: Path) -> dict[str, int]:
    """Bytes of training text ``path`` holds per demo language, at least: its
    ``corpus/stats.json``'s ``train_bytes`` (the sample data's record), else the size of the
    compressed file (0 when absent)."""
    stats_file = path / "corpus" / "stats.json"
    stats = read_json_object(stats_file, "corpus statistics") if stats_file.is_file() else {}
    held = {}
    for language in (*TRAIN_LANGUAGES, *NEW_LANGUAGES):
        entry = stats.get(language)
        if isinstance(entry, dict) and isinstance(entry.get("train_bytes"), int):
            held[language] = entry["train_bytes"]
        else:
            corpus = path / "corpus" / "train" / f"{language}.jsonl.zst"
            held[language] = corpus.stat().st_size if corpus.is_file() else 0
    return held


def sample_holds(path: Path, size: int) -> bool:
    """Whether the sample data at ``path`` serves a preset that asks ``size`` bytes of text a
    language: every file the demo reads, and (above a default fetch's size) that much text."""
    if not has_layout(path):
        return False
    return size <= DEFAULT_SIZE or min(text_bytes(path).values()) >= size


def evaluation_files(path: Path) -> list[str]:
    """The files of ``path`` that the demo reads after its corpus step (which copies its sample
    of the training text into the run folder): FLORES-200, SIB-200 and NTREX-128 (the MoE's
    gate text, where present)."""
    ntrex = [f"eval/ntrex128/{lang}.txt" for lang in TRAIN_LANGUAGES]
    return [
        *(name for name in demo_files() if not name.startswith("corpus/")),
        *(name for name in ntrex if (path / name).is_file()),
    ]


def data_digest(path: Path) -> str:
    """The identity of the data a run's steps after the corpus read in ``path``: a digest of
    ``evaluation_files``' names and contents (a few MB; the training text is not read)."""
    files = {name: sha256_file(path / name) for name in evaluation_files(path)
             if (path / name).is_file()}  # fmt: skip
    return sha256_bytes(canonical_json(files))


def check_data(data: Path, preset: Preset) -> None:
    """Refuse, in one line before any work, a data directory that lacks a file the demo reads
    (it would otherwise fail at the step that reads it, perhaps hours into the run)."""
    missing = missing_files(data)
    if missing:
        more = f" and {len(missing) - 1} more of the files xelm demo reads" if missing[1:] else ""
        bigger = preset.corpus_bytes > DEFAULT_SIZE  # the text xelm demo fetches for it
        size = f" --size {preset.corpus_bytes // 10**6}M" if bigger else ""
        raise UsageError(
            f"{data} lacks {missing[0]}{more}: fetch them with `xelm data fetch{size} -o "
            f"{data}`, or pass another --data"
        )


def demo_data(
    data: Path | None, *, size: int = DEFAULT_SIZE, say: Callable[[str], None] = print
) -> Path:
    """The data directory a demo run reads (``size``: training bytes per language the preset
    asks, and fetches when the sample data does not hold them; ``say`` is told what is fetched
    before it starts)."""
    if data is not None:
        if not data.is_dir():
            raise UsageError(
                f"--data {data} is not a directory: fetch the demo's data there with `xelm data "
                f"fetch -o {data}`, or leave --data out to fetch it to the default place"
            )
        if not has_layout(data) and has_layout(data.parent):
            raise UsageError(
                f"--data {data} lacks the demo's files, which {data.parent} holds: pass "
                f"--data {data.parent}"
            )
        return data
    if sample_holds(DEVELOPMENT_DATA, size):
        return DEVELOPMENT_DATA
    cache = default_data_dir()
    languages = [*TRAIN_LANGUAGES, *NEW_LANGUAGES]
    parts = plan_fetch(languages, size)
    missing = missing_parts(cache, parts)
    if not missing:
        return cache
    if has_layout(DEVELOPMENT_DATA):  # a preset that asks more text than it holds
        why = f"{DEVELOPMENT_DATA} holds less than {size / 1e6:g} MB of training text a language"
        sample = why
    else:
        why, sample = f"no sample data at {DEVELOPMENT_DATA}", f"{DEVELOPMENT_DATA} is absent"
    say(f"{why}: {describe_download(missing, cache)}")
    try:
        with byte_progress("fetching", sum(p.estimate for p in missing)) as advance:
            fetch(cache, languages, size, progress=advance)
    except SourceUnavailable:
        command = "xelm data fetch" + (f" --size {size // 10**6}M" if size > DEFAULT_SIZE else "")
        raise UsageError(
            f"no demo data: {sample}, {cache} is incomplete and the Hugging Face Hub cannot be "
            f"reached: run `{command}` with network access (XELM_HOME chooses where it goes), "
            "or pass --data DIR"
        ) from None
    return cache
