"""Where ``xelm demo`` reads its data: ``--data``; else the sample data beside this repository
(``../shared/data``, the development layout); else xelm's cache, fetched from the Hub first
when it lacks something."""

from collections.abc import Callable
from pathlib import Path

from xelm_cli.common.errors import UsageError
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
    """The data directory a demo run reads (``size``: training bytes per language to fetch;
    ``say`` is told what is fetched before it starts)."""
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
    if has_layout(DEVELOPMENT_DATA):
        return DEVELOPMENT_DATA
    cache = default_data_dir()
    languages = [*TRAIN_LANGUAGES, *NEW_LANGUAGES]
    parts = plan_fetch(languages, size)
    missing = missing_parts(cache, parts)
    if not missing:
        return cache
    say(f"no sample data at {DEVELOPMENT_DATA}: {describe_download(missing, cache)}")
    try:
        with byte_progress("fetching", sum(p.estimate for p in missing)) as advance:
            fetch(cache, languages, size, progress=advance)
    except SourceUnavailable:
        raise UsageError(
            f"no demo data: {DEVELOPMENT_DATA} is absent, {cache} is incomplete and the Hugging "
            "Face Hub cannot be reached: run `xelm data fetch` with network access (XELM_HOME "
            "chooses where it goes), or pass --data DIR"
        ) from None
    return cache
