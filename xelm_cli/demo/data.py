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
from xelm_cli.demo.presets import NEW_LANGUAGES, TRAIN_LANGUAGES

DEVELOPMENT_DATA = Path("..") / "shared" / "data"
REQUIRED = ("corpus/train", "eval/flores200-devtest", "tasks/sib200")


def has_layout(path: Path) -> bool:
    """Whether ``path`` holds the folders the demo reads."""
    return all((path / needed).is_dir() for needed in REQUIRED)


def demo_data(
    data: Path | None, *, size: int = DEFAULT_SIZE, say: Callable[[str], None] = print
) -> Path:
    """The data directory a demo run reads (``size``: training bytes per language to fetch;
    ``say`` is told what is fetched before it starts)."""
    if data is not None:
        if not data.is_dir():
            raise UsageError(f"sample data not found at {data}: pass --data DIR")
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
