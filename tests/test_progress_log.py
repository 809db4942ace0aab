"""Progress where stderr is not a terminal (a batch job's log, a pipe): one plain line per
unfinished task every XELM_PROGRESS_SECONDS seconds, no bar, nothing when set to 0."""

import re
import subprocess
import sys
import time

import pytest

from xelm_cli.common.progress import count_progress, language_progress, log_seconds

SCRIPT = """
import time
from xelm_cli.common.progress import count_progress
with count_progress("expert 1/2 (x0)", 10_000, "sequences") as advance:
    for _ in range(3):
        advance(1_500)
        time.sleep(0.3)
    time.sleep(0.6)  # no move: no more lines
"""

STEPS = """
import time
from xelm_cli.common.progress import count_progress
for expert in range(6):  # each shorter than the interval: one clock for them all
    with count_progress(f"expert {expert}", 4, "sequences") as advance:
        for _ in range(3):
            advance(1)
            time.sleep(0.05)
"""


def logged(script: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    return done.stderr.splitlines()


def test_a_log_gets_a_plain_line_per_task_that_moved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XELM_PROGRESS_SECONDS", "0.2")
    lines = logged(SCRIPT)
    assert 1 <= len(lines) <= 3, lines  # one per interval while it moves, however loaded
    for line in lines:  # no bar, counts with separators, times labelled, no terminal codes
        assert re.fullmatch(
            r"expert 1/2 \(x0\)  [\d,]+/10,000  sequences  \d+ s elapsed(, \d+ s left)?", line
        ), line
        assert "━" not in line and "\x1b" not in line
    assert len(set(lines)) == len(lines)  # a task that did not move is not repeated
    monkeypatch.setenv("XELM_PROGRESS_SECONDS", "0")
    assert logged(SCRIPT) == []


def test_short_tasks_one_after_another_still_log_every_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XELM_PROGRESS_SECONDS", "0.3")
    lines = logged(STEPS)  # about 0.9 s in tasks of 0.15 s
    assert lines and all(re.match(r"expert \d  \d/4  sequences", line) for line in lines), lines


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
        time.sleep(1.5)
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["en  500/1,000  tokens  7 docs  2.0 MB"], lines


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
