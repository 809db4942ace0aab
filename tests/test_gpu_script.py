"""benchmarks/gpu.sh, the one script a lent GPU runs (issue 15), checked on the CPU at tiny
sizes: a GPU session is short, so the script must not fail there for reasons a CPU can show."""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SHARED_DATA

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu
import train_throughput

HEADINGS = (
    "## Training throughput",
    "## `xelm demo --preset gpu`",
    "## Peak memory of one training step",
    "## Scoring's attention backend",
    "## Ensemble evaluation, k = 8",
    "## Multiple-choice scoring",
    "## Logit chunks",
    "## Training under torch.compile",
)
BARE, XELM = "bare loop, same optimisations", "xelm train"
COMPILED = {BARE: "bare loop + torch.compile", XELM: "xelm train --compile"}


def gpu_sh(*args: str, fail: str = "") -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHON": sys.executable, "XELM_GPU_FAIL": fail}
    command = ["sh", str(ROOT / "benchmarks" / "gpu.sh"), "--cpu-smoke", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


def test_the_gpu_script_measures_every_section_into_a_new_folder(tmp_path: Path) -> None:
    out = tmp_path / "not-yet" / "gpu.md"
    done = gpu_sh("--out", str(out), "--data", str(SHARED_DATA))
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    assert [text.index(h) for h in HEADINGS] == sorted(text.index(h) for h in HEADINGS)
    results = json.loads(out.with_suffix(".json").read_text())
    assert results["failed"] == {}
    sections = ["training", "preset", "memory", "attention", "ensemble", "choices", "chunks",
                "compile"]  # fmt: skip
    assert list(results["section_seconds"]) == sections
    assert results["training"]["failed"] == {}
    rows = results["training"]["rows"]
    assert rows[XELM]["tokens_per_s"] > 0
    bare = rows[BARE]["tokens_per_s"]
    assert rows[XELM]["vs_bare_loop"] == rows[XELM]["tokens_per_s"] / bare
    preset = results["preset"]
    assert preset["expected_seconds"] == preset["training_tokens"] / preset["tokens_per_s"]
    assert set(results["memory"]["gib"]) == {"chunked loss", "plain loss"}
    attention = results["attention"]
    assert set(attention["arms"]) == {"xelm", "default"}
    for arm in attention["arms"].values():  # the same documents and batches in both processes
        assert arm["batches"] == attention["arms"]["xelm"]["batches"] > 1
        assert arm["first_pass_s"] > 0 and arm["decode_s"] > 0
    ensemble = results["ensemble"]
    assert ensemble["single_seconds"] > 0
    for system in ("single", "posterior", "language"):  # loading is part of each timed run
        assert 0 < ensemble[f"{system}_load_seconds"] < ensemble[f"{system}_seconds"]
    assert "| of it loading experts: one expert / posterior / language router |" in text
    assert results["ensemble"]["docs"] == gpu.SIZES["cpu-smoke"]["docs"]
    for shape in results["choices"]["shapes"].values():  # batched scores equal one at a time
        assert shape["batched_per_s"] > 0 and shape["max_difference"] < 1e-5
    chunks = results["chunks"]  # the chunk changes no number
    assert list(chunks["median_seconds"]) == ["16", "128", "1024", str(2**22 // 2000)]
    assert chunks["vs_device_rows"][str(2**22 // 2000)] == 1
    assert chunks["max_difference"] < 1e-5 and min(chunks["median_seconds"].values()) > 0
    compiled = results["compile"]
    if compiled["skipped"] is None:  # torch.compile runs here (inductor has a C++ compiler)
        assert compiled["failed"] == {} and set(compiled["rows"]) == set(COMPILED.values())
        speedup = compiled["rows"][COMPILED[XELM]]["tokens_per_s"] / rows[XELM]["tokens_per_s"]
        assert compiled["speedup"][XELM] == speedup
    else:
        assert compiled["skipped"].startswith("torch.compile cannot run here: ")


def test_a_failed_section_is_reported_and_the_others_still_run(tmp_path: Path) -> None:
    """The ensemble section finds no FLORES sentences; the memory section after it runs and
    both are written, and the exit status says that something failed."""
    data = tmp_path / "data"
    (data / "eval" / "flores200-devtest").mkdir(parents=True)
    (data / "eval" / "udhr").symlink_to(SHARED_DATA / "eval" / "udhr")
    (data / "corpus").mkdir()
    (data / "corpus" / "valid").symlink_to(SHARED_DATA / "corpus" / "valid")
    out = tmp_path / "gpu.md"
    done = gpu_sh("--out", str(out), "--data", str(data), "--sections", "ensemble,memory")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "gpu.py: failed: ensemble (the rest written)"
    text = out.read_text()
    assert "## ensemble: failed" in text and "flores200-devtest" in text
    assert "| chunked loss |" in text
    results = json.loads(out.with_suffix(".json").read_text())
    assert list(results["failed"]) == ["ensemble"] and "memory" in results


def test_the_gpu_script_refuses_data_without_its_folders(tmp_path: Path) -> None:
    done = gpu_sh("--out", str(tmp_path / "gpu.md"), "--data", str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.strip().endswith("corpus/valid; pass --data DIR")
    assert not (tmp_path / "gpu.md").exists()


def test_a_failed_loop_is_named_in_its_row_and_the_other_loops_still_run(tmp_path: Path) -> None:
    """The bare loop (the others' yardstick) and one compiled loop fail: the other loops of
    both sections are timed and written, and the exit status says what failed."""
    out = tmp_path / "gpu.md"
    fail = f"training: {BARE};compile: {COMPILED[BARE]}"
    done = gpu_sh("--out", str(out), "--data", str(SHARED_DATA), "--sections",
                  "training,compile", fail=fail)  # fmt: skip
    assert done.returncode == 1
    failed = f"training: {BARE}, compile: {COMPILED[BARE]}"
    assert done.stderr.strip().splitlines()[-1] == f"gpu.py: failed: {failed} (the rest written)"
    results = json.loads(out.with_suffix(".json").read_text())
    assert results["failed"] == {}
    forced = f"RuntimeError: forced to fail by XELM_GPU_FAIL={fail}"
    training = results["training"]
    assert training["failed"] == {BARE: forced}
    assert set(training["rows"]) == {XELM, "transformers.Trainer"}
    assert training["rows"][XELM]["tokens_per_s"] > 0
    assert training["rows"][XELM]["vs_bare_loop"] is None
    text = out.read_text()
    assert f"| {BARE} | failed: `{forced}` | | | |" in text
    assert f"| {XELM} | " in text
    compiled = results["compile"]
    if compiled["skipped"] is None:
        assert compiled["failed"] == {COMPILED[BARE]: forced}
        assert list(compiled["rows"]) == [COMPILED[XELM]]
        assert compiled["speedup"][XELM] > 0
        assert f"| {COMPILED[BARE]} | failed: `{forced}` | | | |" in text


def test_the_compile_section_is_left_out_when_the_budget_is_spent(tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    done = gpu_sh("--out", str(out), "--data", str(SHARED_DATA), "--sections", "compile",
                  "--budget", "0")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    left = json.loads(out.with_suffix(".json").read_text())["compile"]["skipped"]
    assert left == "0 s of the 0-second budget (--budget) were left, under the 60 s it needs"
    assert f"Left out: {left}." in out.read_text()


def test_the_budget_stops_a_process_and_the_processes_it_started(tmp_path: Path) -> None:
    """What the compile section runs under: at the deadline its process and the compiler's
    worker processes (here one `sleep`) are killed."""
    pid = tmp_path / "pid"
    code = (
        "import pathlib, subprocess, time; "
        "child = subprocess.Popen(['sleep', '60']); "
        f"pathlib.Path({str(pid)!r}).write_text(str(child.pid)); time.sleep(60)"
    )
    started = time.perf_counter()
    assert gpu.run_within(code, 3) == "stopped when the time budget ran out (3 s were left for it)"
    assert time.perf_counter() - started < 20
    state = Path(f"/proc/{pid.read_text()}/stat")
    deadline = time.perf_counter() + 5  # the orphaned `sleep` is reaped by init
    while state.exists() and state.read_text().split()[2] != "Z" and time.perf_counter() < deadline:
        time.sleep(0.1)
    assert not state.exists() or state.read_text().split()[2] == "Z"
    assert gpu.run_within("import sys; sys.exit(3)", 30) == "its process ended with status 3"
    assert gpu.run_within("pass", 30) is None


def test_a_failed_xelm_train_raises_an_exception_that_a_section_catches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not SystemExit, which would end gpu.py and every section after this one; with
    XELM_DEBUG=1 (gpu.py sets it) xelm's own error, traceback and all."""
    run = argparse.Namespace(steps=2, batch_size=1, block_size=8, lr=1e-4, device="cpu",
                             log_every=1)  # fmt: skip
    seed = tmp_path / "no-seed"
    monkeypatch.delenv("XELM_DEBUG", raising=False)
    with pytest.raises(RuntimeError, match=r"^xelm train failed with exit status 2 \(its error"):
        train_throughput.xelm_train(seed, tmp_path / "no-shards", tmp_path / "out", run)
    monkeypatch.setenv("XELM_DEBUG", "1")
    with pytest.raises(Exception, match=f"not a bundle: {seed} does not exist"):
        train_throughput.xelm_train(seed, tmp_path / "no-shards", tmp_path / "out", run)


def test_the_demo_section_runs_the_whole_preset_on_the_data_it_is_carried_with(
    tmp_path: Path,
) -> None:
    """gpu_demo_data.py keeps of each language's text only the documents the preset samples
    (the same ones, so the demo trains on what it would with all the data); the demo section,
    named only, runs the preset from start to end on that folder and reports every step."""
    from xelm_cli.demo.documents import sampled_documents
    from xelm_cli.demo.presets import PRESETS

    data = tmp_path / "demo-data"
    script = ROOT / "benchmarks" / "gpu_demo_data.py"
    made = subprocess.run([sys.executable, str(script), "--data", str(SHARED_DATA), "--preset",
                           "smoke", "-o", str(data)], capture_output=True, text=True)  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    smoke = PRESETS["smoke"]
    for language in ("de", "sw"):
        corpus = Path("corpus") / "train" / f"{language}.jsonl.zst"
        kept, whole = (
            sampled_documents(root / corpus, language, smoke.document_bytes, smoke.corpus_bytes)
            for root in (data, SHARED_DATA)
        )
        assert (
            sorted(kept) == sorted(whole)
            and (data / corpus).stat().st_size < (SHARED_DATA / corpus).stat().st_size
        )
    out = tmp_path / "gpu.md"
    done = gpu_sh("--out", str(out), "--data", str(SHARED_DATA), "--sections", "demo",
                  "--demo-data", str(data))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.with_suffix(".json").read_text())
    demo = results["demo"]
    assert demo["preset"] == "smoke" and results["failed"] == {}
    assert list(demo["steps"]) == [
        "corpus", "tokenizer", "shards", "seed", "dense", "typology-k4", "tfidf-k4", "evaluate",
        "average", "moe", "moe-finetune", "adapt", "icl",
    ]  # fmt: skip
    assert "## `xelm demo --preset smoke` from start to end" in out.read_text()
    assert f"| icl | {demo['steps']['icl']:,.1f} |" in out.read_text()


def test_a_demo_that_outlasts_the_budget_is_stopped_with_the_steps_it_finished(
    tmp_path: Path,
) -> None:
    """A device call can end before the demo does: the demo section stops it when --budget
    runs out and still reports the steps it finished and the one it was in, each step's
    seconds as its progress lines said (the log holds those lines as they came)."""
    out = tmp_path / "gpu.md"
    done = gpu_sh("--out", str(out), "--data", str(SHARED_DATA), "--sections", "demo",
                  "--demo-data", str(SHARED_DATA), "--budget", "12")  # fmt: skip
    assert done.returncode == 1 and "failed: demo: stopped by --budget" in done.stderr
    demo = json.loads(out.with_suffix(".json").read_text())["demo"]
    order = ["corpus", "tokenizer", "shards", "seed", "dense", "typology-k4", "tfidf-k4"]
    finished = list(demo["steps"])
    assert finished == order[: len(finished)]
    assert demo["stopped"]["in_step"] in (order[len(finished)], None)  # None: between steps
    assert 12 <= demo["wall_seconds"] < 40
    for step, seconds in demo["steps"].items():
        assert f"] {step}: {seconds:.1f} s" in done.stderr
    assert f"in step {demo['stopped']['in_step']}; the steps it finished" in out.read_text()


def test_the_cuda_tests_section_reads_pytests_counts_and_failed_tests() -> None:
    stdout = "\n".join([
        "..F.s",
        "=========================== short test summary info ============================",
        "SKIPPED [1] tests/test_ensemble.py:221: no CUDA device",
        "FAILED tests/test_ensemble.py::test_x[cuda] - AssertionError: 0.1 != 0.2",
        "ERROR tests/test_moe_gate.py::test_y - RuntimeError: CUDA out of memory",
        "2 failed, 40 passed, 1 skipped, 1 error in 12.50s",
    ])  # fmt: skip
    outcome = gpu.pytest_outcome(stdout)
    assert outcome["counts"] == {"failed": 2, "passed": 40, "skipped": 1, "error": 1}
    assert outcome["failed"] == {
        "tests/test_ensemble.py::test_x[cuda]": "AssertionError: 0.1 != 0.2",
        "tests/test_moe_gate.py::test_y": "RuntimeError: CUDA out of memory",
    }
    results = {"failed": {}, "cuda-tests": outcome}
    assert gpu.failures(results) == [
        "cuda-tests: tests/test_ensemble.py::test_x[cuda]",
        "cuda-tests: tests/test_moe_gate.py::test_y",
    ]
    report = "\n".join(gpu.cuda_tests_report(outcome | {"files": ["t.py"]}, argparse.Namespace()))
    assert "2 failed, 40 passed, 1 skipped, 1 error in 12.50s." in report
    assert "- tests/test_moe_gate.py::test_y: RuntimeError: CUDA out of memory" in report
