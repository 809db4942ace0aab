"""One writer per output: a second process writing the same path fails at once, clearly."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SHARED_DATA, TEST_LANGS
from reliability import record

from xelm_cli.bundle.store import verify_bundle
from xelm_cli.cli import run
from xelm_cli.common.atomic import atomic_directory, atomic_file, output_lock
from xelm_cli.common.errors import UsageError
from xelm_cli.data.prepare import prepare

HOLD = (
    "import sys, time; from xelm_cli.common.atomic import output_lock\n"
    "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n"
)


def hold_lock(target: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def test_a_second_writer_fails_clearly_until_the_first_is_gone(
    seed_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "expert"
    holder = hold_lock(target)
    try:
        with (
            pytest.raises(UsageError, match="another process is writing"),
            atomic_directory(target),
        ):
            pass
        assert run(["bundle", "branch", str(seed_bundle), "-o", str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "another process is writing" in err, err
        record("lock", "second writer of a locked output", "refused in one line")
        assert not target.exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed holder's lock goes with it
        holder.wait()
    assert run(["bundle", "branch", str(seed_bundle), "-o", str(target)]) == 0
    assert verify_bundle(target) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expert"]  # no lock file, no temp


def test_an_evaluation_holds_its_results_file_from_the_start(
    seed_bundle: Path, tmp_path: Path
) -> None:
    """A second evaluation into the same results file is refused before it reads its data
    (here: none there), not after scoring everything, when its write would meet the lock."""
    from xelm_cli.api import evaluate

    target = tmp_path / "results.json"
    holder = hold_lock(target)
    try:
        with pytest.raises(UsageError, match="another process is writing"):
            evaluate([seed_bundle], data=tmp_path / "no-data", output=target)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not target.exists()


def test_stale_temporaries_of_the_target_are_removed(tmp_path: Path) -> None:
    mine = tmp_path / ".out.k3j_9x2a.partial"
    mine.mkdir()
    (mine / "half-written").write_bytes(b"x")
    old = tmp_path / ".out.aside-abcdefgh.partial"
    old.mkdir()
    other = tmp_path / ".out.b.abcdefgh.partial"  # a temporary of the target "out.b"
    other.mkdir()
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "file").write_bytes(b"done")
    assert not mine.exists() and not old.exists() and other.exists()
    assert (tmp_path / "out" / "file").read_bytes() == b"done"


def test_the_lock_is_reentrant_within_a_process(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    with output_lock(target), atomic_file(target) as tmp:
        tmp.write_bytes(b"{}")
    assert target.read_bytes() == b"{}"
    assert not (tmp_path / ".result.json.lock").exists()


def holds_flock(pid: int, path: Path) -> bool:
    """Whether process ``pid`` holds a flock on ``path`` now, read from /proc/locks: probing
    with a flock of our own could, for a moment, take the lock from under the process."""
    try:
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        return False
    held = ("FLOCK", str(pid), str(inode))  # 1: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE 0 EOF
    return any(  # a waiter's line reads "1: -> FLOCK ...": not held
        (fields[1], fields[4], fields[5].rsplit(":", 1)[-1]) == held
        for fields in map(str.split, Path("/proc/locks").read_text().splitlines())
    )


def test_two_trainings_of_one_output_one_wins(seed_bundle: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for lang in TEST_LANGS:
        text = (SHARED_DATA / "eval" / "udhr" / f"{lang}.txt").read_text()
        (corpus / f"{lang}.txt").write_text(text)
    prepare(corpus, seed_bundle, tmp_path / "shards")
    out = tmp_path / "trained"
    args = [str(seed_bundle), "--data", str(tmp_path / "shards"), "--tokens", "4K"]
    args += ["--block-size", "32", "--batch-size", "4", "-o", str(out)]
    first = subprocess.Popen(
        [sys.executable, "-m", "xelm_cli", "train", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 60
    while not holds_flock(first.pid, tmp_path / ".trained.lock"):  # not just created: held
        assert first.poll() is None and time.monotonic() < deadline, "first run never started"
        time.sleep(0.02)
    first.send_signal(signal.SIGSTOP)  # mid-run, holding the lock, however fast it trains
    try:
        second = subprocess.run(
            [sys.executable, "-m", "xelm_cli", "train", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=os.environ | {"COLUMNS": "200"},
        )
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait() == 0, first.stderr.read() if first.stderr else ""
    lines = second.stderr.strip().splitlines()
    outcome = (
        "one wins, the other refused in one line"
        if second.returncode == 2 and len(lines) == 1 and "another process is writing" in lines[0]
        else f"exit {second.returncode}: {second.stderr[-300:]}"
    )
    record("lock", "two trainings writing one output", outcome)
    assert outcome.startswith("one wins"), outcome
    assert verify_bundle(out) == []


def test_overwriting_swaps_old_for_new_in_one_step(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "version").write_text("1")
    old_inode = target.stat().st_ino
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "version").write_text("2")
        assert (target / "version").read_text() == "1"  # the old one stays until the swap
    assert (target / "version").read_text() == "2" and target.stat().st_ino != old_inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_version_moved_aside_by_a_killed_writer_is_put_back(tmp_path: Path) -> None:
    """Without an atomic exchange --force moves the old version aside, then renames the new
    one in: a writer killed between the two leaves no ``out``, and the next writer of ``out``
    puts the old version back before anything else (here it then fails: the old one stays)."""
    aside = tmp_path / ".out.aside-abcdefgh.partial"
    (aside / "x").mkdir(parents=True)
    (aside / "x" / "version").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "out", overwrite=True):
        assert (tmp_path / "out" / "version").read_text() == "1"
        raise RuntimeError("the command failed")
    assert (tmp_path / "out" / "version").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("exchange", [True, False], ids=["exchanged", "moved-aside"])
def test_force_replaces_an_output_of_the_other_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    """A file allocation written with --force over a directory one, and back: the new one
    takes the path, nothing of the old is left beside it (a file over a directory raised
    IsADirectoryError; a directory over a file left it as a .out.*.partial)."""
    import xelm_cli.common.atomic as atomic

    if not exchange:  # a file system without renameat2(RENAME_EXCHANGE)
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "version").write_text("1")
    with atomic_file(target, overwrite=True) as tmp:
        tmp.write_text("2")
    assert target.read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "version").write_text("3")
    assert (target / "version").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_write_removes_the_directories_it_made(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "new" / "deeper" / "out"):
        raise RuntimeError("the command failed")
    assert list(tmp_path.iterdir()) == []


def test_a_directory_is_on_disk_before_it_takes_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file written into an atomic directory is flushed (fsync) while it still has its
    temporary name: a crash after the rename cannot leave empty files under the final name
    (a checkpoint that lists as complete, whose weights are gone)."""
    import xelm_cli.common.atomic as atomic

    flushed: list[str] = []
    real_fsync = os.fsync

    def recording(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", recording)
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "a.bin").write_bytes(b"a")
        (tmp / "sub" / "b.bin").write_bytes(b"b")
    files = [Path(path) for path in flushed if path.endswith(".bin")]
    assert sorted(path.name for path in files) == ["a.bin", "b.bin"]
    assert all(target not in path.parents for path in files)  # before the rename
    assert (target / "sub" / "b.bin").read_bytes() == b"b"
