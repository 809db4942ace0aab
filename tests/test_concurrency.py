"""Several processes at once (issue 7, item 6): an ensemble evaluated from several processes
together, and a bundle read while another process branches it, work and give identical results.

Every process is a real ``python -m xelm_cli``; they share one verified-digest cache
(``$XELM_CACHE_DIR``), which they all write, so its concurrent use is exercised too.
"""

import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED_DATA
from reliability import record, scaled
from xelm_trainer import CausalLMTrainer

from xelm_cli.bundle.branching import branch
from xelm_cli.data.corpus import iter_documents
from xelm_cli.data.prepare import prepare
from xelm_cli.plugin.contracts import TrainRequest

AREA = "concurrency"
LANGS = ("en", "tr", "ar", "ru")
TIMEOUT = 300
PROCESSES = 4  # evaluating at once (long runs repeat the wave, not widen it)


# --- inputs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> dict[str, Path]:
    """Two experts with different weights (a branch of the seed for en/tr, a branch trained a
    few steps for ar/ru), a bundle to branch while it is read, and a small evaluation set."""
    root = tmp_path_factory.mktemp("concurrency")
    seed = root / "seed"
    shutil.copytree(seed_bundle, seed)  # the session's seed stays untouched (no new links)
    pool = root / "pool"
    branch(seed, pool / "expert-a", languages=["en", "tr"])
    corpus = root / "corpus"
    corpus.mkdir()
    for lang in ("ar", "ru"):
        source = SHARED_DATA / "corpus" / "valid" / f"{lang}.jsonl.zst"
        docs = itertools.islice(iter_documents(source), 40)
        lines = [json.dumps({"text": d.text, "lang": lang}, ensure_ascii=False) for d in docs]
        (corpus / f"{lang}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare(corpus, seed, root / "shards", token_caps=1000)
    branch(seed, root / "b-untrained", languages=["ar", "ru"])
    options = {"block_size": 32, "batch_size": 4, "lr": 3e-3}
    request = TrainRequest(
        root / "b-untrained", root / "shards", pool / "expert-b", tokens=256, options=options
    )
    CausalLMTrainer().train(request)
    evalset = root / "flores"
    evalset.mkdir()
    for lang in LANGS:
        text = (SHARED_DATA / "eval" / "flores200-devtest" / f"{lang}.txt").read_text()
        (evalset / f"{lang}.txt").write_text("\n".join(text.splitlines()[:4]) + "\n")
    read = root / "read"
    shutil.copytree(seed_bundle, read)
    return {"root": root, "pool": pool, "evalset": evalset, "read": read}


# --- helpers -----------------------------------------------------------------------------------


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "xelm_cli", *args]


def environment(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XELM_DEBUG"}
    env["XELM_CACHE_DIR"] = str(cache)
    return env


def xelm(cwd: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args),
        cwd=cwd,  # not the checkout, whose stale xelm.egg-info would shadow the entry points
        env=environment(cache),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def at_once(
    cwd: Path, cache: Path, commands: list[list[str]]
) -> list[subprocess.CompletedProcess[str]]:
    """Start every command before waiting for any; return how each ended."""
    logs = [(cwd / f"at-once-{i}.out", cwd / f"at-once-{i}.err") for i in range(len(commands))]
    started = []
    for args, (out, err) in zip(commands, logs, strict=True):
        with open(out, "wb") as stdout, open(err, "wb") as stderr:  # files: no pipe to fill
            started.append(
                subprocess.Popen(
                    command(*args), cwd=cwd, env=environment(cache), stdout=stdout, stderr=stderr
                )
            )
    finished = []
    for process, (out, err) in zip(started, logs, strict=True):
        code = process.wait(timeout=TIMEOUT)
        finished.append(
            subprocess.CompletedProcess(process.args, code, out.read_text(), err.read_text())
        )
    return finished


def without_timings(value: Any) -> Any:
    """``value`` without its timings (``seconds`` and the like: what differs by run)."""
    if isinstance(value, dict):
        timings = ("seconds", "load_seconds", "tokens_per_second")
        return {k: without_timings(v) for k, v in value.items() if k not in timings}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def results(done: subprocess.CompletedProcess[str]) -> Any:
    return without_timings(json.loads(done.stdout)) if done.returncode == 0 else None


def snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mode of every entry of ``directory`` (the names too)."""
    return {
        p.name: (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "",
            p.stat().st_mode,
        )
        for p in sorted(directory.iterdir())
    }


def cache_problems(cache: Path) -> list[str]:
    """Temporaries left in the cache, or entries that are not whole JSON documents."""
    problems = []
    for path in sorted(p for p in cache.rglob("*") if p.is_file()):
        if ".partial" in path.name or path.name.endswith(".lock"):
            problems.append(f"{path.name}: left behind")
            continue
        try:
            json.loads(path.read_bytes())
        except ValueError:
            problems.append(f"{path.name}: not JSON")
    return problems


# --- an ensemble evaluated by several processes at once ----------------------------------------


def test_an_ensemble_evaluated_by_several_processes_at_once_gives_identical_results(
    work: dict[str, Path], tmp_path: Path
) -> None:
    evaluate = [
        "ensemble", "eval", str(work["pool"] / "expert-*"), "--data", str(work["evalset"]),
        "--each", "--format", "json",
    ]  # fmt: skip
    alone = xelm(tmp_path, tmp_path / "cache-alone", *evaluate)
    assert alone.returncode == 0, alone.stderr
    expected = results(alone)
    experts = [s for s in expected["systems"] if s["kind"] == "expert"]
    a, b = (s["metrics"]["languages"] for s in experts)
    assert all(a[lang]["nll"] != b[lang]["nll"] for lang in LANGS)  # the weights differ

    # The first wave finds the shared cache empty: every process verifies every expert and
    # writes its entry at the same time. Later waves (long runs) find it filled.
    shared = tmp_path / "cache-shared"
    outcomes = []
    for wave in range(scaled(1)):
        finished = at_once(tmp_path, shared, [evaluate] * PROCESSES)
        failed = [done.stderr for done in finished if done.returncode != 0]
        differ = sum(results(done) != expected for done in finished if done.returncode == 0)
        problems = cache_problems(shared)
        outcome = (
            "identical results"
            if not failed and not differ and not problems
            else f"{len(failed)} failed, {differ} differ from a run alone, cache: {problems}"
        )
        cache_state = "an empty" if wave == 0 else "a filled"
        fault = f"{PROCESSES} processes evaluate one ensemble at once, sharing {cache_state} cache"
        record(AREA, fault, outcome)
        outcomes.append((outcome, failed))
    assert all(outcome == "identical results" for outcome, _ in outcomes), outcomes
    assert list(shared.rglob("*.json")), "no verification was remembered in the shared cache"


# --- a bundle read while another process branches it -------------------------------------------


def test_a_bundle_read_while_another_process_branches_it(
    work: dict[str, Path], tmp_path: Path
) -> None:
    parent = work["read"]
    before = snapshot(parent)
    cache = tmp_path / "cache"
    evaluate = ["ensemble", "eval", str(parent), "--data", str(work["evalset"]), "--format", "json"]
    reference = xelm(tmp_path, tmp_path / "cache-alone", *evaluate)
    assert reference.returncode == 0, reference.stderr
    expected = results(reference)

    branches = [tmp_path / "branches" / f"b-{i}" for i in range(scaled(6))]
    writing = threading.Event()
    writing.set()
    log: dict[str, list[tuple[float, subprocess.CompletedProcess[str]]]] = {
        "branch": [],
        "eval": [],
        "verify": [],
    }

    def branch_all() -> None:
        try:
            for out in branches:
                log["branch"].append(
                    (
                        time.monotonic(),
                        xelm(tmp_path, cache, "bundle", "branch", str(parent), "-o", str(out)),
                    )
                )
        finally:
            writing.clear()

    def read_while_writing(kind: str, args: list[str], at_least: int) -> None:
        while writing.is_set() or len(log[kind]) < at_least:
            log[kind].append((time.monotonic(), xelm(tmp_path, cache, *args)))

    threads = [
        threading.Thread(target=branch_all),
        threading.Thread(target=read_while_writing, args=("eval", evaluate, scaled(2))),
        threading.Thread(
            target=read_while_writing,
            args=("verify", ["bundle", "verify", str(parent), "--json"], 3),
        ),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=2 * TIMEOUT)
    assert not any(thread.is_alive() for thread in threads)

    last_branch_started = log["branch"][-1][0]
    overlapping = {
        kind: sum(started < last_branch_started for started, _ in log[kind])
        for kind in ("eval", "verify")
    }
    failed = [
        done.stderr for entries in log.values() for _, done in entries if done.returncode != 0
    ]
    evals_differ = sum(results(done) != expected for _, done in log["eval"] if done.returncode == 0)
    verifies_not_ok = sum(
        json.loads(done.stdout).get("ok") is not True
        for _, done in log["verify"]
        if done.returncode == 0
    )
    final = xelm(tmp_path, cache, "bundle", "verify", *map(str, branches), "--json")
    changed = snapshot(parent) != before
    problems = cache_problems(cache)
    outcome = (
        "identical results, every branch verifies, parent unchanged"
        if not failed
        and not evals_differ
        and not verifies_not_ok
        and final.returncode == 0
        and not changed
        and not problems
        else (
            f"{len(failed)} failed, {evals_differ} evaluations differ, {verifies_not_ok} "
            f"verifications not ok, branches verify: {final.returncode == 0}, "
            f"parent changed: {changed}, cache: {problems}"
        )
    )
    fault = (
        f"a bundle evaluated and verified while another process branches it {len(branches)} times"
    )
    record(AREA, fault, outcome)
    assert outcome.startswith("identical results"), (outcome, failed, final.stdout)
    assert overlapping["eval"] >= 1 and overlapping["verify"] >= 1, overlapping
    assert json.loads(final.stdout)["ok"] is True
