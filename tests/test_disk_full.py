"""A full disk mid-write (issue 7, item 5): one clear line, nothing half-written, inputs intact.

Two real faults, no mocks:

- ``RLIMIT_FSIZE``: the command runs with a file-size limit (and SIGXFSZ ignored), so the
  first write past the limit fails with EFBIG ("File too large") exactly as a write to a full
  disk fails. Always available. The limits sit between the small files a command writes
  (JSON, tokenizer) and its big one (weights, token shards, an archive), so it fails midway.
- A small tmpfs mounted in a user namespace: real ENOSPC ("No space left on device"). Skipped,
  with the reason, where the machine does not allow unprivileged user namespaces or mounts.

Each command must exit non-zero with exactly one ``xelm: error:`` line (the last on stderr,
no traceback, no "internal error") that gives the OS's reason; leave nothing at the target and
no ``.partial`` or lock file beside it; and leave its inputs byte-for-byte as they were. What
a command continues from is kept beside the target: ``train``'s checkpoints, and the work
directory of ``data prepare`` once it recorded documents (its error line says so), which the
same command, given room, completes into the shards an uninterrupted run makes.
"""

import hashlib
import itertools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED_DATA
from hub_fixtures import write_readme, write_rows
from reliability import record

from xelm_cli.cli import run
from xelm_cli.data.corpus import iter_documents
from xelm_cli.data.prepare import prepare
from xelm_cli.data.shards import Shards
from xelm_cli.data.source_plan import SourceOptions

AREA = "disk-full"
CLEAN = "clean one-line error, nothing left at target"
EFBIG = "File too large"
ENOSPC = "No space left on device"
WEIGHTS_LIMIT = 200_000  # below model.safetensors (~560 KB) and the packed bundle (~520 KB)
SHARDS_LIMIT = 6_000  # below a language's token shard (8-14 KB), above its offsets and JSON
TOKENIZER_LIMIT = 5_000  # below tokenizer.json (~10 KB), above tokenizer_config.json
# two optimiser steps on the languages of the shards
TRAIN = ["--tokens", "256", "--block-size", "32", "--batch-size", "4", "--langs", "en,tr"]


# --- inputs (module-wide, never written by a test) -------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> dict[str, Path]:
    """A small corpus (120 documents in each of two languages), token shards and an archive of
    the seed bundle."""
    root = tmp_path_factory.mktemp("disk-full-inputs")
    corpus = root / "corpus"
    corpus.mkdir()
    for lang in ("en", "tr"):
        docs = itertools.islice(
            iter_documents(SHARED_DATA / "corpus" / "valid" / f"{lang}.jsonl.zst"), 120
        )
        lines = [json.dumps({"text": d.text, "lang": lang}, ensure_ascii=False) for d in docs]
        (corpus / f"{lang}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shards = root / "shards"
    prepare(corpus, seed_bundle, shards)
    archive = root / "seed.xelm.tar.zst"
    assert run(["bundle", "pack", str(seed_bundle), "-o", str(archive)]) == 0
    return {"corpus": corpus, "shards": shards, "archive": archive, "seed": seed_bundle}


def snapshot(*paths: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mode of every file under ``paths``."""
    found: dict[str, tuple[str, int]] = {}
    for path in paths:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            info = file.stat()
            found[str(file)] = (hashlib.sha256(file.read_bytes()).hexdigest(), info.st_mode)
    return found


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XELM_DEBUG"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no .pyc written under the limit either
    return env


def file_size_limit(limit: int) -> None:
    """preexec_fn: writes past ``limit`` bytes fail with EFBIG instead of killing the process."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))


def run_limited(args: list[str], cwd: Path, limit: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xelm_cli", *args],
        preexec_fn=lambda: file_size_limit(limit),
        cwd=cwd,  # not the checkout, whose stale xelm.egg-info would shadow the entry points
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def describe_failure(
    code: int,
    stderr: str,
    reason: str,
    target: Path,
    left: list[str],
    before: dict[str, tuple[str, int]],
    after: dict[str, tuple[str, int]],
) -> str:
    """What the user saw and what stayed on disk, in words: ``CLEAN`` when all is as it should.

    ``before`` and ``after`` are snapshots of the command's inputs.
    """
    lines = stderr.splitlines()
    errors = [line for line in lines if line.startswith("xelm: error:")]
    last = lines[-1] if lines else ""
    if code == 0:
        return "exit status 0 on a failed write"
    if "Traceback" in stderr:
        return "Python traceback"
    if len(errors) != 1 or last != errors[0]:
        return f"{len(errors)} error lines, last stderr line {last!r}"
    if "internal error" in last:
        return f"reported as an internal error: {last}"
    if reason not in last:
        return f"error does not give the OS reason ({reason!r}): {last}"
    if not any(way in last for way in ("free space where the output goes", "same command")):
        return f"error names no way out: {last}"
    if target.exists():
        return "something left at the target"
    if left:
        return f"left beside the target: {', '.join(left)}"
    if after != before:
        return "an input changed"
    if any(name in last for name in before):
        return f"the error names an input file as the one it could not write: {last}"
    return CLEAN


def is_temporary(name: str) -> bool:
    return ".partial" in name or name.endswith(".lock")


def leftovers(parent: Path, allowed: tuple[str, ...] = ()) -> list[str]:
    """Entries of the (at first empty) ``parent`` other than ``allowed``, and any temporary
    anywhere below it."""
    found = {name for name in os.listdir(parent) if name not in allowed}
    found |= {str(p.relative_to(parent)) for p in parent.rglob("*") if is_temporary(p.name)}
    return sorted(found)


# --- RLIMIT_FSIZE: EFBIG, always available ---------------------------------------------------


def command_for(case: str, paths: dict[str, Path], target: Path) -> list[str]:
    seed, out = str(paths["seed"]), str(target)
    return {
        "bundle unpack": ["bundle", "unpack", str(paths["archive"]), "-o", out],
        "bundle pack": ["bundle", "pack", seed, "-o", out],
        "bundle init": ["bundle", "init", "--config", "tiny", "--tokenizer", seed,
                        "--langs", "en,tr", "-o", out],
        "data prepare": ["data", "prepare", str(paths["corpus"]), "--tokenizer", seed,
                         "-o", out],
        "data tokenizer": ["data", "tokenizer", str(paths["corpus"]), "-o", out,
                           "--vocab-size", "300"],
        "train": ["train", seed, "--data", str(paths["shards"]), *TRAIN, "-o", out],
    }[case]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "limit", "target_name"),
    [
        ("bundle unpack", WEIGHTS_LIMIT, "seed"),
        ("bundle pack", WEIGHTS_LIMIT, "seed.xelm.tar.zst"),
        ("bundle init", WEIGHTS_LIMIT, "seed"),
        ("data prepare", SHARDS_LIMIT, "shards"),
        ("data tokenizer", TOKENIZER_LIMIT, "tok"),
        ("train", WEIGHTS_LIMIT, "trained"),
    ],
)
def test_a_write_past_the_file_size_limit_is_one_clean_line(
    inputs: dict[str, Path], tmp_path: Path, case: str, limit: int, target_name: str
) -> None:
    parent = tmp_path / "out"
    parent.mkdir()
    target = parent / target_name
    before = snapshot(*inputs.values())
    args = command_for(case, inputs, target)
    result = run_limited(args, tmp_path, limit)
    # a failed run's checkpoint directory stays for --resume (the checkpoint itself failed
    # here); prepare keeps its work directory only once it recorded documents (see below)
    kept = {"train": f".{target_name}.ckpt", "data prepare": f".{target_name}.prepare"}
    left = leftovers(parent, allowed=(kept[case],) if case in kept else ())
    after = snapshot(*inputs.values())
    outcome = describe_failure(result.returncode, result.stderr, EFBIG, target, left, before, after)
    record(AREA, f"xelm {case}: a write past RLIMIT_FSIZE={limit} bytes (EFBIG)", outcome)
    # nothing the failed run left behind stands in the way of the same command with room
    assert run(args) == 0 and target.exists()
    assert outcome == CLEAN, result.stderr


def test_prepare_past_the_file_size_limit_keeps_its_work_for_the_same_command(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    # a dataset read one language at a time: en (small) is recorded as done before tr's
    # tokens outgrow the limit
    hub = tmp_path / "hub"
    for lang, n in (("en", 5), ("tr", 120)):
        docs = itertools.islice(
            iter_documents(SHARED_DATA / "corpus" / "valid" / f"{lang}.jsonl.zst"), n
        )
        write_rows(hub / "data" / f"{lang}.jsonl", [{"text": d.text} for d in docs])
    write_readme(hub, {lang: {"train": f"data/{lang}.jsonl"} for lang in ("en", "tr")})
    whole = prepare(
        hub,
        inputs["seed"],
        tmp_path / "whole",
        languages="en,tr",
        reading=SourceOptions(config="{lang}"),
    )
    parent = tmp_path / "out"
    parent.mkdir()
    target, work = parent / "shards", parent / ".shards.prepare"
    args = ["data", "prepare", str(hub), "--config", "{lang}", "--langs", "en,tr",
            "--tokenizer", str(inputs["seed"]), "-o", str(target)]  # fmt: skip
    before = snapshot(hub, inputs["seed"])
    result = run_limited(args, tmp_path, SHARDS_LIMIT)
    left = leftovers(parent, allowed=(work.name,))
    after = snapshot(hub, inputs["seed"])
    outcome = describe_failure(result.returncode, result.stderr, EFBIG, target, left, before, after)
    record(AREA, "xelm data prepare of a dataset past RLIMIT_FSIZE, work kept", outcome)
    assert outcome == CLEAN, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"xelm: error: {EFBIG}; what was read so far is kept in {work}: the same command "
        "continues from there (delete that directory to start afresh)"
    )
    state = json.loads((work / "state.json").read_text())
    assert state["sources"]["en"]["done"] and "tr" not in state["sources"]
    assert run(args) == 0
    assert Shards.open(target).digest == whole.shards.digest
    assert not work.exists()


# --- a full tmpfs: ENOSPC, where the machine lets us mount one ---------------------------------

# Runs inside the namespace, after the tmpfs is mounted: the steps of a JSON plan (commands,
# or a remount to another size), then a JSON report of each step's result and of what the
# tmpfs held afterwards.
DRIVER = """
import json, os, subprocess, sys
plan = json.loads(open(sys.argv[1]).read())
mount, steps = plan["mount"], []
for step in plan["steps"]:
    if "remount" in step:
        subprocess.run(["mount", "-o", "remount,size=" + step["remount"], mount], check=True)
        continue
    done = subprocess.run([sys.executable, "-m", "xelm_cli", *step["argv"]],
                          capture_output=True, text=True)
    files = sorted(os.path.relpath(os.path.join(d, n), mount)
                   for d, dirs, names in os.walk(mount) for n in dirs + names)
    steps.append({"code": done.returncode, "stdout": done.stdout, "stderr": done.stderr,
                  "files": files})
open(plan["report"], "w").write(json.dumps(steps))
"""


@pytest.fixture(scope="module")
def tmpfs_allowed(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip unless an unprivileged user may mount a tmpfs in a new user and mount namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed: no tmpfs to fill here")
    probe = tmp_path_factory.mktemp("probe")
    script = 'mount -t tmpfs -o size=64k xelm-probe "$1"'
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", str(probe)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        pytest.skip(
            "this machine does not let an unprivileged user mount a tmpfs in a user namespace "
            f"({done.stderr.strip() or done.returncode}); RLIMIT_FSIZE covers disk-full here"
        )


def in_tmpfs(work: Path, size: str, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mount a ``size`` tmpfs at ``work/mnt`` in a private namespace and run ``steps`` there."""
    mount, report = work / "mnt", work / "report.json"
    mount.mkdir()
    (work / "driver.py").write_text(DRIVER)
    plan = {"mount": str(mount), "report": str(report), "steps": steps}
    (work / "plan.json").write_text(json.dumps(plan))
    script = 'mount -t tmpfs -o size="$1" xelm-full "$2" && exec "$3" "$4" "$5"'
    argv = [size, str(mount), sys.executable, str(work / "driver.py"), str(work / "plan.json")]
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", *argv],
        cwd=work,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result: list[dict[str, Any]] = json.loads(report.read_text())
    return result


def tmpfs_outcome(
    step: dict[str, Any],
    allowed: tuple[str, ...],
    before: dict[str, tuple[str, int]],
    after: dict[str, tuple[str, int]],
) -> str:
    """``describe_failure`` of a step whose target lay in the tmpfs (``files``: what it held)."""
    left = [
        f for f in step["files"] if is_temporary(Path(f).name) or f.split("/")[0] not in allowed
    ]
    nowhere = Path("/nonexistent")  # the tmpfs is gone: what stayed at the target is in "left"
    return describe_failure(step["code"], step["stderr"], ENOSPC, nowhere, left, before, after)


def test_unpacking_onto_a_full_tmpfs_fails_cleanly_then_succeeds_with_room(
    tmpfs_allowed: None, inputs: dict[str, Path], tmp_path: Path
) -> None:
    before = snapshot(*inputs.values())
    target = str(tmp_path / "mnt" / "seed")
    unpack = ["bundle", "unpack", str(inputs["archive"]), "-o", target]
    full, retried, verified = in_tmpfs(
        tmp_path,
        "256k",  # the bundle unpacks to ~580 KB
        [
            {"argv": unpack},
            {"remount": "4m"},
            {"argv": unpack},
            {"argv": ["bundle", "verify", target]},
        ],
    )
    outcome = tmpfs_outcome(full, (), before, snapshot(*inputs.values()))
    record(AREA, "xelm bundle unpack onto a 256 KiB tmpfs (ENOSPC)", outcome)
    assert retried["code"] == 0 and verified["code"] == 0, (retried, verified)
    assert outcome == CLEAN, full


def test_branching_onto_a_full_tmpfs_fails_cleanly(
    tmpfs_allowed: None, inputs: dict[str, Path], tmp_path: Path
) -> None:
    # on another file system a branch copies the weights instead of hard-linking them
    before = snapshot(*inputs.values())
    target = str(tmp_path / "mnt" / "tr")
    (full,) = in_tmpfs(
        tmp_path,
        "256k",
        [{"argv": ["bundle", "branch", str(inputs["seed"]), "--langs", "tr", "-o", target]}],
    )
    outcome = tmpfs_outcome(full, (), before, snapshot(*inputs.values()))
    record(AREA, "xelm bundle branch onto a 256 KiB tmpfs on another file system (ENOSPC)", outcome)
    assert outcome == CLEAN, full


def test_training_onto_a_full_tmpfs_keeps_its_checkpoint_and_resumes(
    tmpfs_allowed: None, inputs: dict[str, Path], tmp_path: Path
) -> None:
    # The checkpoint after step 1 of 2 (weights and two AdamW moments: ~3x the weights) fits;
    # the trained bundle written after step 2 (the weights again) does not. (No checkpoint is
    # written after the last step: the bundle is the result.)
    weights = (inputs["seed"] / "model.safetensors").stat().st_size
    size = f"{(3 * weights + weights // 2) // 1024 + 64}k"
    before = snapshot(*inputs.values())
    target = str(tmp_path / "mnt" / "trained")
    train = ["train", str(inputs["seed"]), "--data", str(inputs["shards"]), *TRAIN,
             "--checkpoint-every", "1", "-o", target]  # fmt: skip
    full, resumed, verified = in_tmpfs(
        tmp_path,
        size,
        [
            {"argv": train},
            {"remount": "16m"},
            {"argv": [*train, "--resume", "--json"]},
            {"argv": ["bundle", "verify", target]},
        ],
    )
    outcome = tmpfs_outcome(full, (".trained.ckpt",), before, snapshot(*inputs.values()))
    record(
        AREA,
        "xelm train onto a tmpfs with room for the checkpoint, not the bundle (ENOSPC)",
        outcome,
    )
    # the checkpoint survived the failure and --resume finishes from it once there is room
    assert any(f.startswith(".trained.ckpt/step-") for f in full["files"]), full
    assert resumed["code"] == 0 and verified["code"] == 0, (resumed, verified)
    assert json.loads(resumed["stdout"])["steps"] == 2
    assert outcome == CLEAN, full
