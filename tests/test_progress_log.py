"""Progress where stderr is not a terminal (a batch job's log, a pipe): one plain line per
unfinished task every XELM_PROGRESS_SECONDS seconds, no bar, nothing when set to 0."""

import subprocess
import sys
import time

import pytest

from xelm_cli.common.progress import count_progress, language_progress, log_seconds

SCRIPT = """
import time
from xelm_cli.common.progress import count_progress
with count_progress("expert 1/2 (x0)", 10, "sequences") as advance:
    advance(3)
    time.sleep(0.6)
"""


def test_a_log_gets_a_plain_line_per_task_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XELM_PROGRESS_SECONDS", "0.2")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=120
    )
    lines = done.stderr.splitlines()
    assert 1 <= len(lines) <= 4, lines  # about 0.6 / 0.2, however loaded the machine is
    for line in lines:  # the columns' text, no bar characters, no terminal codes
        assert line.startswith("expert 1/2 (x0)  3/10  sequences  0:00:0"), line
        assert "━" not in line and "\x1b" not in line
    monkeypatch.setenv("XELM_PROGRESS_SECONDS", "0")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stderr == ""


def test_finished_tasks_drop_out_of_the_lines(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XELM_PROGRESS_SECONDS", "0.1")

    class Count:
        tokens, documents, bytes, full = 500, 7, 2_000_000, False

    with language_progress() as show:
        show("en", Count(), 1000)
        full = Count()
        full.full = True
        show("tr", full, 1000)  # read to its limit: finished
        time.sleep(0.35)
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line == "en  500/1000  tokens  7 docs  2.0 MB" for line in lines)


@pytest.mark.parametrize(
    ("value", "seconds"), [("", 60.0), ("5", 5.0), ("0", 0.0), ("-1", 0.0), ("soon", 60.0)]
)
def test_the_interval_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, seconds: float
) -> None:
    monkeypatch.setenv("XELM_PROGRESS_SECONDS", value)
    assert log_seconds() == seconds


def test_a_terminal_still_gets_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.progress import Progress

    from xelm_cli.common import progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = progress.stderr_progress("x")
    assert type(bar) is Progress and not bar.disable
    assert type(progress.stderr_progress("x", shown=False)) is progress.ProgressLog
    with count_progress("quiet", 2, "items") as advance:
        advance(1)
