"""benchmarks/gpu.sh, the one script a lent GPU runs (issue 15), checked on the CPU at tiny
sizes: a GPU session is short, so the script must not fail there for reasons a CPU can show."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, SHARED_DATA

HEADINGS = (
    "## Training throughput",
    "## `xelm demo --preset gpu`",
    "## Peak memory of one training step",
    "## Ensemble evaluation, k = 8",
)


def gpu_sh(*args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHON": sys.executable}
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
    assert list(results["section_seconds"]) == ["training", "preset", "memory", "ensemble"]
    rows = results["training"]["rows"]
    assert rows["xelm train"]["tokens_per_s"] > 0
    bare = rows["bare loop, same optimisations"]["tokens_per_s"]
    assert rows["xelm train"]["vs_bare_loop"] == rows["xelm train"]["tokens_per_s"] / bare
    preset = results["preset"]
    assert preset["expected_seconds"] == preset["training_tokens"] / preset["tokens_per_s"]
    assert set(results["memory"]["gib"]) == {"chunked loss", "plain loss"}
    assert results["ensemble"]["single_seconds"] > 0


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
