"""Crash safety: xelm commands SIGKILLed for real, at seeded random points (issue 7).

The operations (OPS): ``bundle init``, ``bundle branch``, ``bundle pack``, ``bundle unpack``,
``data prepare`` and ``train`` on tiny real inputs, and ``branch`` and ``pack`` with --force
over an existing target. Each runs as a real process and is killed with SIGKILL (no handler,
``finally`` or ``atexit`` runs) at two kinds of points:

- write events: ``tests/killpoint.py`` counts the process's audited writes under the output
  directory once (N=0), then kills it just before its N-th write, for seeded random N in
  [1, T], so every kill lands inside the write phase (start-up takes most of the wall time);
- times: SIGKILL a seeded random delay after the first change appears in the output directory,
  the delay drawn from [0, the write phase of an uninterrupted run] (start-up time varies too
  much with the machine's load to aim at from launch); these also reach writes made in Rust
  (safetensors, tokenizers), which raise no audit events.

After each kill: the target is absent or verifies; every file of the source has its sha256 and
mode; running the command again (in this process) succeeds, and ``xelm train`` resumes (or
restarts, before its first checkpoint) to weights bitwise equal to an uninterrupted run's.
Re-running is skipped when the killed process had already renamed its target into place, since
xelm refuses to overwrite without --force, except for ``data prepare``, whose rerun is a no-op.
Temporaries left by the killed process (``.NAME.*.partial``, ``.NAME.lock``) are allowed and
named in the outcome.

Every kill is recorded (``reliability.record``); ``XELM_RELIABILITY_SCALE`` multiplies the kill
points (``nox -s reliability``, ``benchmarks/reliability.py``).
"""

import hashlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, TEST_LANGS, same_weights
from hub_fixtures import c4_like
from reliability import record, scaled

from xelm_cli.bundle.archive import pack_bundle, unpack_bundle
from xelm_cli.bundle.branching import branch
from xelm_cli.bundle.store import verify_bundle
from xelm_cli.cli import run
from xelm_cli.common.errors import XelmError
from xelm_cli.data.corpus import iter_documents
from xelm_cli.data.prepare import prepare
from xelm_cli.data.shards import Shards
from xelm_cli.plugin.contracts import checkpoint_dir
from xelm_cli.training.checkpoints import list_checkpoints

KILLPOINT = Path(__file__).with_name("killpoint.py")
STREAMED_PREPARE = "data prepare --config"
TIMEOUT_S = 300
# One compute thread in every run (reruns in this process too): the tiny model gains nothing
# from more, idle threads spin on a shared machine, and all runs then compute alike.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# No timed checkpoints in `data prepare` (only those at a source's end): a slow run must not
# write more often than the baseline whose write events the kill points are drawn from.
NO_TIMED_CHECKPOINTS = {"XELM_TEST_CHECKPOINT_SECONDS": "1e9"}
# Outcomes that keep every promise (nothing lost, nothing corrupted); anything else is a failure.
GOOD = re.compile(
    r"(finished before the kill, )?"
    r"(target absent|target verifies|target verifies with identical weights"
    r"|(resumed|restarted) to identical weights), source unchanged"
    r"( \(left [^()]*\))?"
)


@dataclass
class Baseline:
    """One uninterrupted run under the counting harness."""

    events: int  # audited writes under the output directory
    writing_s: float  # from the first of them to exit
    target: Path


@dataclass
class World:
    root: Path
    tokenizer: Path
    seed: Path
    archive: Path
    corpus: Path
    shards: Path
    expert: Path  # a branch of seed: the version that --force replaces
    expert_archive: Path
    hub: Path  # a dataset laid out like allenai/c4, read by streaming
    baselines: dict[str, Baseline] = field(default_factory=dict)


@dataclass(frozen=True)
class Op:
    name: str
    target: str  # the output's name inside its kill directory
    args: Callable[[World], list[str]]  # xelm's arguments but ``-o TARGET``
    sources: Callable[[World], list[Path]]  # inputs that must not change
    check: Callable[[World, Path], list[str]]  # problems with a target that exists
    event_kills: int  # kill points per run at scale 1
    time_kills: int
    idempotent: bool = False  # re-running over a finished target succeeds (data prepare)
    weights: bool = False  # train: compare weights, resume after a kill
    previous: Callable[[World, Path], object] | None = None  # puts what --force replaces

    def argv(self, world: World, target: Path) -> list[str]:
        return [*self.args(world), "-o", str(target)]


# --- checks ----------------------------------------------------------------------------------


def bundle_problems(world: World, path: Path) -> list[str]:
    return verify_bundle(path)


def archive_problems(world: World, path: Path) -> list[str]:
    """An archive is whole when it unpacks (digests checked) to a bundle that verifies."""
    check = Path(tempfile.mkdtemp(dir=world.root, prefix="check-"))
    try:
        unpack_bundle(path, check / "bundle")
        return verify_bundle(check / "bundle")
    except XelmError as exc:
        return [str(exc)]
    finally:
        shutil.rmtree(check)


def shards_problems(world: World, path: Path) -> list[str]:
    try:
        return Shards.open(path).verify()
    except XelmError as exc:
        return [str(exc)]


def resumed_shards_problems(world: World, path: Path) -> list[str]:
    """Shards of a streamed preparation must verify and hold the uninterrupted run's tokens."""
    problems = shards_problems(world, path)
    if problems:
        return problems
    baseline = world.baselines[STREAMED_PREPARE].target
    data = sorted(p.name for p in baseline.glob("*.bin"))
    if sorted(p.name for p in path.glob("*.bin")) != data or any(
        (path / name).read_bytes() != (baseline / name).read_bytes() for name in data
    ):
        return ["token shards differ from the uninterrupted run's"]
    return []


def trained_problems(world: World, path: Path) -> list[str]:
    """A trained bundle must verify and hold the uninterrupted run's weights, bit for bit."""
    problems = verify_bundle(path)
    if problems:
        return problems
    if not same_weights(path, world.baselines["train"].target):
        return ["weights differ from the uninterrupted run's"]
    return []


# --- operations ------------------------------------------------------------------------------

INIT = ["bundle", "init", "--config", "tiny", "--langs", "en,tr"]
TRAIN_OPTIONS = ["--tokens", "2K", "--block-size", "32", "--batch-size", "4", "--lr", "3e-3"]
TRAIN_OPTIONS += ["--checkpoint-every", "4"]  # 15 steps: three checkpoints on the way

OPS = [
    Op(
        "bundle init",
        "seed",
        lambda w: [*INIT, "--tokenizer", str(w.tokenizer)],
        lambda w: [w.tokenizer],
        bundle_problems,
        event_kills=2,
        time_kills=1,
    ),
    Op(
        "bundle branch",
        "expert",
        lambda w: ["bundle", "branch", str(w.seed), "--langs", "tr"],
        lambda w: [w.seed],
        bundle_problems,
        event_kills=4,
        time_kills=1,
    ),
    Op(
        "bundle branch --force",
        "expert",
        lambda w: ["bundle", "branch", str(w.seed), "--langs", "tr", "--force"],
        lambda w: [w.seed],
        bundle_problems,
        event_kills=3,
        time_kills=1,
        idempotent=True,
        previous=lambda w, t: shutil.copytree(w.expert, t),
    ),
    Op(
        "bundle pack",
        "seed.xelm.tar.zst",
        lambda w: ["bundle", "pack", str(w.seed)],
        lambda w: [w.seed],
        archive_problems,
        event_kills=3,
        time_kills=1,
    ),
    Op(
        "bundle pack --force",
        "seed.xelm.tar.zst",
        lambda w: ["bundle", "pack", str(w.seed), "--force"],
        lambda w: [w.seed],
        archive_problems,
        event_kills=2,
        time_kills=1,
        idempotent=True,
        previous=lambda w, t: shutil.copy2(w.expert_archive, t),
    ),
    Op(
        "bundle unpack",
        "unpacked",
        lambda w: ["bundle", "unpack", str(w.archive)],
        lambda w: [w.archive],
        bundle_problems,
        event_kills=3,
        time_kills=1,
    ),
    Op(
        "data prepare",
        "shards",
        lambda w: ["data", "prepare", str(w.corpus), "--tokenizer", str(w.tokenizer)],
        lambda w: [w.corpus, w.tokenizer],
        shards_problems,
        event_kills=2,
        time_kills=1,
        idempotent=True,
    ),
    Op(
        STREAMED_PREPARE,
        "shards",
        lambda w: [
            "data",
            "prepare",
            str(w.hub),
            "--config",
            "{lang}",
            "--langs",
            ",".join(TEST_LANGS),
            "--cap",
            "2K",
            "--batch-size",
            "8",
            "--tokenizer",
            str(w.tokenizer),
        ],
        lambda w: [w.hub, w.tokenizer],
        resumed_shards_problems,
        event_kills=2,
        time_kills=1,
        idempotent=True,
    ),
    Op(
        "train",
        "trained",
        lambda w: ["train", str(w.seed), "--data", str(w.shards), *TRAIN_OPTIONS],
        lambda w: [w.seed, w.shards],
        trained_problems,
        event_kills=2,
        time_kills=1,
        weights=True,
    ),
]


# --- the world: tiny real inputs, copied so that nothing shared is at risk -------------------


def texts(lang: str, documents: int = 40) -> list[str]:
    source = SHARED_DATA / "corpus" / "valid" / f"{lang}.jsonl.zst"
    return [d.text for d in itertools.islice(iter_documents(source), documents)]


def write_corpus(out: Path, documents: int = 40) -> Path:
    out.mkdir()
    for lang in TEST_LANGS:
        lines = [json.dumps({"text": t, "lang": lang}, ensure_ascii=False) for t in texts(lang)]
        (out / f"{lang}.jsonl").write_text("".join(f"{line}\n" for line in lines))
    return out


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path, seed_bundle: Path
) -> World:
    root = tmp_path_factory.mktemp("crash")
    src = root / "src"
    src.mkdir()
    seed = Path(shutil.copytree(seed_bundle, src / "seed"))
    corpus = write_corpus(src / "corpus")
    shards = src / "shards"
    prepare(corpus, seed, shards)
    expert = branch(seed, src / "expert", languages=["en"]).path
    return World(
        root=root,
        tokenizer=Path(shutil.copytree(tokenizer_dir, src / "tok")),
        seed=seed,
        archive=pack_bundle(seed, src / "seed.xelm.tar.zst"),
        corpus=corpus,
        shards=shards,
        expert=expert,
        expert_archive=pack_bundle(expert, src / "expert.xelm.tar.zst"),
        hub=c4_like(src / "hub", {lang: texts(lang) for lang in TEST_LANGS}),
    )


# --- running, killing, judging ---------------------------------------------------------------


Snapshot = dict[str, tuple[int, str | None]]


def snapshot(paths: list[Path]) -> Snapshot:
    """Mode and sha256 of every file (mode of every directory) under ``paths``."""
    state: Snapshot = {}
    for root in paths:
        for path in [root, *(sorted(root.rglob("*")) if root.is_dir() else [])]:
            info = path.lstat()
            digest = None
            if stat.S_ISREG(info.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            state[str(path)] = (info.st_mode, digest)
    return state


def changes(before: Snapshot, after: Snapshot) -> list[str]:
    names = before.keys() | after.keys()
    return sorted(Path(name).name for name in names if before.get(name) != after.get(name))


def leftovers(directory: Path) -> list[str]:
    """Kinds of temporaries a killed writer left: ``.partial`` (files, directories), ``.lock``."""
    kinds = set()
    for path in directory.rglob("*"):
        for suffix in (".partial", ".lock"):
            if path.name.endswith(suffix):
                kinds.add(suffix)
    return sorted(kinds)


def launch(
    argv: list[str], work: Path, kill_at: int = 0, count_file: Path | None = None
) -> subprocess.Popen[bytes]:
    env = {**os.environ, **ONE_THREAD, **NO_TIMED_CHECKPOINTS, "XELM_KILL_UNDER": str(work)}
    env.pop("XELM_KILL_COUNT_FILE", None)
    if count_file is not None:
        env["XELM_KILL_COUNT_FILE"] = str(count_file)
    return subprocess.Popen(
        [sys.executable, str(KILLPOINT), str(kill_at), "--", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=work,  # not the checkout, whose stale xelm.egg-info would shadow the entry points
        env=env,
    )


def last_line(stderr: bytes | str) -> str:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no output)"


def baseline(world: World, op: Op) -> Baseline:
    """Run ``op`` once, uninterrupted, counting its writes and timing it (cached per module)."""
    if op.name in world.baselines:
        return world.baselines[op.name]
    work = world.root / "baseline" / op.name.replace(" ", "-")
    work.mkdir(parents=True)
    target = work / op.target
    count_file = world.root / f"{work.name}.count.json"
    if op.previous:
        op.previous(world, target)
    before = snapshot(op.sources(world))
    process = launch(op.argv(world, target), work, count_file=count_file)
    _, err = process.communicate(timeout=TIMEOUT_S)
    ended = time.time()
    assert process.returncode == 0, err.decode()
    counted = json.loads(count_file.read_text())
    assert counted["events"] > 0, f"{op.name}: no audited writes under {work}"
    result = Baseline(counted["events"], ended - counted["first_event_at"], target)
    world.baselines[op.name] = result
    if not op.weights:  # train's check compares with this very run
        assert op.check(world, target) == []
    else:
        assert verify_bundle(target) == []
    assert changes(before, snapshot(op.sources(world))) == []
    return result


def rerun(
    op: Op, argv: list[str], target: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """Run the command again in this process; returns (exit code, stderr, how it went on)."""
    how = ""
    if op.weights:
        resumable = bool(list_checkpoints(checkpoint_dir(target)))
        argv = [*argv, "--resume"] if resumable else argv
        how = "resumed" if resumable else "restarted"
    capsys.readouterr()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = run(argv)
    finally:
        torch.set_num_threads(threads)
    return code, capsys.readouterr().err, how


def inject(
    world: World,
    op: Op,
    work: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    kill_at: int = 0,
    delay: float | None = None,
) -> str:
    """Kill one run of ``op`` at its write event ``kill_at``, or ``delay`` s after its first
    write; returns the outcome (the test's own error as one, so that it is recorded too)."""
    try:
        return _inject(world, op, work, capsys, kill_at=kill_at, delay=delay)
    except Exception as exc:
        return f"the test failed: {type(exc).__name__}: {str(exc)[:300]}"


def _inject(
    world: World,
    op: Op,
    work: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    kill_at: int,
    delay: float | None,
) -> str:
    work.mkdir(parents=True)
    target = work / op.target
    argv = op.argv(world, target)
    if op.previous:
        op.previous(world, target)
    before = snapshot(op.sources(world))
    initial = set(os.listdir(work))
    process = launch(argv, work, kill_at=kill_at)
    if delay is not None:
        deadline = time.monotonic() + TIMEOUT_S
        while process.poll() is None and set(os.listdir(work)) == initial:  # still starting up
            assert time.monotonic() < deadline, f"{op.name} wrote nothing in {TIMEOUT_S} s"
            time.sleep(0.002)
    try:
        _, err = process.communicate(timeout=delay if delay is not None else TIMEOUT_S)
    except subprocess.TimeoutExpired:
        if delay is None:
            raise
        process.send_signal(signal.SIGKILL)
        _, err = process.communicate(timeout=TIMEOUT_S)
    failures = []
    prefix = ""
    if process.returncode == 0 and delay is not None:
        prefix = "finished before the kill, "
    elif process.returncode != -signal.SIGKILL:
        failures.append(f"exited {process.returncode} instead of dying: {last_line(err)}")
    left = leftovers(work)

    if target.exists() or target.is_symlink():
        problems = op.check(world, target)
        state = "target verifies" + (" with identical weights" if op.weights else "")
        if problems:
            state = f"target corrupt: {problems[0]}"
        again = op.idempotent
    elif op.previous is not None:  # --force swaps old for new in one step: never neither
        state, again = "LOST: neither the old nor the new version is there", False
    else:
        state, again = "target absent", True
    if again and not failures:
        code, err_text, how = rerun(op, argv, target, capsys)
        if code != 0:
            failures.append(f"rerun failed (exit {code}): {last_line(err_text)}")
        elif problems := op.check(world, target):
            failures.append(f"after the rerun: {problems[0]}")
        elif how:
            state = f"{how} to identical weights"
    changed = changes(before, snapshot(op.sources(world)))
    source = "source unchanged" if not changed else f"source changed: {', '.join(changed[:5])}"
    outcome = f"{prefix}{state}, {source}"
    if left:
        outcome += f" (left {', '.join(left)})"
    return "; ".join([outcome, *failures])


def judge(outcomes: list[tuple[str, str]]) -> None:
    bad = [(fault, outcome) for fault, outcome in outcomes if not GOOD.fullmatch(outcome)]
    assert not bad, "\n".join(f"{fault}: {outcome}" for fault, outcome in bad)


# --- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS, ids=[op.name.replace(" ", "-") for op in OPS])
def test_sigkill_at_random_write_events_loses_and_corrupts_nothing(
    world: World, op: Op, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = baseline(world, op)
    points = list(range(1, base.events + 1))
    random.Random(f"{op.name} write events").shuffle(points)  # a prefix per scale: seeds nest
    outcomes = []
    for i, n in enumerate(points[: scaled(op.event_kills)]):
        fault = f"SIGKILL during {op.name} (write event {n} of {base.events})"
        outcome = inject(world, op, tmp_path / f"event-{i}", capsys, kill_at=n)
        record("kill", fault, outcome)
        outcomes.append((fault, outcome))
    judge(outcomes)


@pytest.mark.parametrize("op", OPS, ids=[op.name.replace(" ", "-") for op in OPS])
def test_sigkill_at_random_times_loses_and_corrupts_nothing(
    world: World, op: Op, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = baseline(world, op)
    outcomes = []
    for seed in range(scaled(op.time_kills)):
        delay = random.Random(f"{op.name} time {seed}").uniform(0, base.writing_s)
        fault = f"SIGKILL during {op.name} (after {delay:.2f} s of writing)"
        outcome = inject(world, op, tmp_path / f"time-{seed}", capsys, delay=delay)
        record("kill", fault, outcome)
        outcomes.append((fault, outcome))
    judge(outcomes)


def test_killpoint_counts_only_writes_under_the_watched_directory(tmp_path: Path) -> None:
    """The harness itself: reads and writes elsewhere are not counted; N kills before write N."""
    watched, elsewhere = tmp_path / "watched", tmp_path / "elsewhere"
    watched.mkdir()
    elsewhere.mkdir()
    (watched / "keep").write_text("x")
    script = (
        "import os, shutil, sys\n"
        f"w, e = {str(watched)!r}, {str(elsewhere)!r}\n"
        "open(os.path.join(w, 'keep')).read()\n"  # a read: not counted
        "open(os.path.join(e, 'x'), 'w').close()\n"  # elsewhere: not counted
        "open(os.path.join(w, 'a'), 'w').close()\n"  # 1
        "os.rename(os.path.join(w, 'a'), os.path.join(w, 'b'))\n"  # 2
        "os.mkdir(os.path.join(w, 'd'))\n"  # 3
        "open(os.path.join(w, 'd', 'f'), 'w').close()\n"  # 4
        "shutil.rmtree(os.path.join(w, 'd'))\n"  # 5 (rmtree), 6 (unlink f by dir_fd), 7 (rmdir)
    )
    runner = (
        "import runpy, sys\n"
        f"sys.path.insert(0, {str(KILLPOINT.parent)!r})\n"
        "import killpoint\n"
        "point = killpoint.KillPoint(int(sys.argv[1]), sys.argv[2])\n"
        "sys.addaudithook(point.hook)\n"
        f"exec({script!r})\n"
        "point.report(sys.argv[3])\n"
    )
    count = tmp_path / "count.json"

    def go(n: int) -> int:
        return subprocess.run(
            [sys.executable, "-c", runner, str(n), str(watched), str(count)], check=False
        ).returncode

    assert go(0) == 0
    assert json.loads(count.read_text())["events"] == 7
    shutil.rmtree(watched / "d", ignore_errors=True)
    (watched / "b").unlink()
    count.unlink()
    assert go(2) == -signal.SIGKILL  # before the rename
    assert (watched / "a").exists() and not (watched / "b").exists() and not count.exists()


def test_a_run_killed_before_its_first_checkpoint_restarts_with_resume(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A preempted job is re-queued with the same command line, --resume included: killed before
    its first checkpoint, that command starts the run over (saying so in one line) and ends with
    the uninterrupted run's weights, bit for bit."""
    args = ["train", str(world.seed), "--data", str(world.shards), *TRAIN_OPTIONS, "--resume"]
    args += ["--log-every", "2"]  # a loss line before the first checkpoint (step 4)
    full, killed = tmp_path / "full", tmp_path / "killed"
    full.mkdir()
    killed.mkdir()
    log = tmp_path / "events.log"
    monkeypatch.setenv("XELM_KILL_LOG", str(log))
    # the uninterrupted run (--resume with nothing to resume from the start) and its writes
    process = launch([*args, "-o", str(full / "trained")], full)
    _, err = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, err.decode()
    assert "starting the run from the beginning" in err.decode()
    monkeypatch.delenv("XELM_KILL_LOG")
    events = [line.split("\t") for line in log.read_text().splitlines()]
    first = next(int(n) for n, _, paths in events if "step-" in paths)  # the first checkpoint
    assert any("metrics.jsonl" in paths for n, _, paths in events if int(n) < first)

    target = killed / "trained"
    process = launch([*args, "-o", str(target)], killed, kill_at=first)
    process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == -signal.SIGKILL
    assert not target.exists() and not list_checkpoints(checkpoint_dir(target))
    assert (checkpoint_dir(target) / "metrics.jsonl").is_file()  # killed well into the run

    capsys.readouterr()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the uninterrupted run computed (ONE_THREAD)
    try:
        code = run([*args, "-o", str(target)])
    finally:
        torch.set_num_threads(threads)
    stderr = capsys.readouterr().err
    assert code == 0, stderr
    lines = [line for line in stderr.splitlines() if "--resume" in line]
    assert lines == [
        f"xelm: --resume: no checkpoint in {checkpoint_dir(target)} yet; "
        "starting the run from the beginning"
    ]
    assert verify_bundle(target) == []
    assert same_weights(target, full / "trained")
    # the finished run removed its checkpoints; the hidden directory keeps only the loss log
    assert sorted(p.name for p in checkpoint_dir(target).iterdir()) == ["metrics.jsonl"]
