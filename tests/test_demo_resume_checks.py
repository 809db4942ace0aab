"""What a demo run reads and holds when it starts or resumes, without running one: the data a
folder was made from (and a resumed run's, without --data), the sample data against the
preset's size, the folder's lock, --plan without -o, and the plan's FLOP with the MoE's
active parameters."""

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED_DATA

from xelm_cli.cli import run
from xelm_cli.common.errors import UsageError
from xelm_cli.data.fetch import DEFAULT_SIZE
from xelm_cli.demo import Demo
from xelm_cli.demo import data as demo_data_module
from xelm_cli.demo.data import data_digest, demo_data
from xelm_cli.demo.folder import RECORD, record_folder, resumed_data
from xelm_cli.demo.plan import demo_plan, seed_parameters
from xelm_cli.demo.presets import NEW_LANGUAGES, PRESETS, TRAIN_LANGUAGES

SMOKE = PRESETS["smoke"]


def layout(root: Path, flores: str = "a sentence\n", train_bytes: int | None = None) -> Path:
    """Every file the demo reads (unreadable as training text: nothing here trains), FLORES
    lines ``flores``; with ``train_bytes``, a corpus/stats.json saying that much text a
    language."""
    languages = [*TRAIN_LANGUAGES, *NEW_LANGUAGES]
    for lang in languages:
        for name, text in ((f"corpus/train/{lang}.jsonl.zst", "x"),
                           (f"eval/flores200-devtest/{lang}.txt", flores)):  # fmt: skip
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
    for lang in TRAIN_LANGUAGES:
        for split in ("train", "test"):
            (root / "tasks" / "sib200" / lang).mkdir(parents=True, exist_ok=True)
            (root / "tasks" / "sib200" / lang / f"{split}.tsv").write_text("index_id\tcategory\n")
    if train_bytes is not None:
        stats = {lang: {"train_bytes": train_bytes} for lang in languages}
        (root / "corpus" / "stats.json").write_text(json.dumps(stats))
    return root


def started_on(out: Path, data: Path) -> None:
    """A folder smoke made from ``data`` whose corpus step finished."""
    out.mkdir(parents=True)
    record_folder(out, SMOKE, data)
    (out / "steps").mkdir()
    (out / "steps" / "corpus.json").write_text(json.dumps({"seconds": 1.0, "result": {}}))


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The data each `xelm demo` would run on: run_demo records it and stops."""
    seen: list[Path] = []

    def stop(preset: Any, data: Path, out: Path, *args: Any) -> Any:
        seen.append(Path(data))
        raise UsageError("stopped by the test")

    monkeypatch.setattr("xelm_cli.demo.run_demo", stop)
    return seen


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------ 1. the data of a folder


def test_a_resumed_run_refuses_other_data_and_rereads_its_own_from_anywhere(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    ran: list[Path],
) -> None:
    """Evaluation, routing, the MoE's gate, adaptation and in-context read --data on every
    run: another --data is refused once a step finished; without --data (from any working
    directory) the recorded data is read."""
    data, other = layout(tmp_path / "data"), layout(tmp_path / "other", flores="other\n")
    out = tmp_path / "run"
    started_on(out, data)
    files = sorted(out.rglob("*"))
    args = ["demo", "--preset", "smoke", "-o", str(out)]
    assert run([*args, "--data", str(other)]) == 2
    assert one_line(capsys).endswith(
        f"{out}/ was made from the data in {data.resolve()}, not {other}: pass --data "
        f"{data.resolve()} (or leave --data out), or another -o"
    )
    assert not ran and sorted(out.rglob("*")) == files
    with pytest.raises(UsageError, match="was made from the data in"):
        Demo(SMOKE, other, out)  # the Python API too
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # where ../shared/data is not, and the cache not fetched
    assert run([*args]) == 2 and ran == [data.resolve()]
    assert resumed_data(out) == data.resolve()
    made = json.loads((out / RECORD).read_text())
    assert made["data"] == str(data.resolve()) and made["data_digest"] == data_digest(data)


def test_data_that_moved_or_changed_is_checked_by_its_evaluation_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ran: list[Path]
) -> None:
    data, out = layout(tmp_path / "data"), tmp_path / "run"
    started_on(out, data)
    moved = data.rename(tmp_path / "moved")
    args = ["demo", "--preset", "smoke", "-o", str(out)]
    assert run(args) == 2  # gone: named, not replaced by the default data
    assert one_line(capsys).endswith(
        f"{out}/ was made from the data in {data.resolve()}, which is gone: pass --data DIR "
        "with the same data, or another -o"
    )
    assert run([*args, "--data", str(moved)]) == 2 and ran == [moved]  # the same files
    capsys.readouterr()
    (moved / "eval" / "flores200-devtest" / "en.txt").write_text("changed in place\n")
    assert run([*args, "--data", str(moved)]) == 2 and ran == [moved]
    assert one_line(capsys).endswith(
        f"{moved} is not the data {out}/ was made from: its evaluation files (FLORES-200, "
        "SIB-200, NTREX-128) differ from those recorded; pass the same data, or another -o"
    )


def test_before_a_step_finished_other_data_replaces_the_recorded_one(tmp_path: Path) -> None:
    """A first run that failed before its first step (bad data) may go on with other data."""
    data, other = layout(tmp_path / "data"), layout(tmp_path / "other", flores="other\n")
    out = tmp_path / "run"
    out.mkdir()
    record_folder(out, SMOKE, data)
    Demo(SMOKE, other, out)
    record_folder(out, SMOKE, other)
    made = json.loads((out / RECORD).read_text())
    assert made["data"] == str(other.resolve()) and made["data_digest"] == data_digest(other)


# ------------------------------------------------------------------ 3. the sample data's size


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache and no Hub (the probe's endpoint a closed local port); the cache."""
    import huggingface_hub.constants

    monkeypatch.setenv("XELM_HOME", str(tmp_path / "xelm-home"))
    monkeypatch.setenv("XELM_HUB_MIRROR", str(tmp_path / "no-mirror"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    return tmp_path / "xelm-home" / "data"


def test_the_sample_data_serves_a_preset_only_if_it_holds_its_text(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    offline: Path,
) -> None:
    """smoke, small and gpu read ../shared/data offline as before; gpu-large asks 128 MB a
    language, which it does not hold: the cache at that size, fetched (here offline: one line
    naming `xelm data fetch --size 128M`)."""
    monkeypatch.setattr(demo_data_module, "DEVELOPMENT_DATA", SHARED_DATA)
    for name in ("smoke", "small", "gpu"):
        size = max(DEFAULT_SIZE, PRESETS[name].corpus_bytes)
        assert demo_data(None, size=size) == SHARED_DATA, name
    large = PRESETS["gpu-large"].corpus_bytes
    with pytest.raises(UsageError) as refused:
        demo_data(None, size=large, say=lambda line: None)
    assert str(refused.value).startswith(
        f"no demo data: {SHARED_DATA} holds less than 128 MB of training text a language, "
        f"{offline} is incomplete and the Hugging Face Hub cannot be reached: run `xelm data "
        "fetch --size 128M` with network access"
    )
    out = tmp_path / "run"
    assert run(["demo", "--preset", "gpu-large", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"{SHARED_DATA} holds less than 128 MB of training text a language")
    assert "`xelm data fetch --size 128M`" in err[-1] and not out.exists()
    big = layout(tmp_path / "big", train_bytes=large)  # a sample that holds it: read
    monkeypatch.setattr(demo_data_module, "DEVELOPMENT_DATA", big)
    assert demo_data(None, size=large) == big


# ------------------------------------------------------------------ 4. one run per folder


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Path]:
    """A run folder whose lock another process holds."""
    out = tmp_path / "run"
    code = ("import sys, time\nfrom xelm_cli.common.atomic import output_lock\n"
            f"with output_lock({str(out)!r}):\n    print('held', flush=True)\n"
            "    time.sleep(120)\n")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield out
    finally:
        holder.kill()
        holder.wait()


def test_a_second_run_of_a_folder_is_refused_at_once(
    held: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], ran: list[Path]
) -> None:
    started = time.perf_counter()
    args = ["--preset", "smoke", "--data", str(SHARED_DATA), "-o", str(held)]
    assert run(["demo", *args]) == 2
    assert one_line(capsys).endswith(
        f"another process is writing {held} (it holds .{held.name}.lock); wait for it to "
        "finish or choose another output"
    )
    assert not ran and time.perf_counter() - started < 30
    data = layout(tmp_path / "data")  # unreadable: a run that went ahead would fail otherwise
    with pytest.raises(UsageError, match="another process is writing"):
        Demo(SMOKE, data, held).run()  # the Python API holds it too
    assert not held.exists()


# ------------------------------------------------------------------ 5. --plan without -o


def test_plan_without_o_lists_the_preset_whatever_demo_run_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It runs nothing, so the default folder (made by another preset here) is not checked;
    -o names a folder to check and measure."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo-run").mkdir()
    (tmp_path / "demo-run" / RECORD).write_text(json.dumps({"preset": "smoke"}))
    assert run(["demo", "--preset", "small", "--plan", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["preset"] == "small" and not any(step["done"] for step in plan["steps"])
    assert run(["demo", "--preset", "small", "--plan", "-o", "demo-run"]) == 2
    assert "demo-run/ was made by --preset smoke" in capsys.readouterr().err


# ------------------------------------------------------------------ 6. the MoE's FLOP


def test_plan_counts_the_moe_finetune_with_its_active_parameters(tmp_path: Path) -> None:
    """Smoke's MoE from 4 tiny experts, top-2: a token uses the seed's parameters plus a
    second MLP a layer (3 x 64 x 172 x 2) and the routers (4 x 64 x 2); its 8,192 tokens
    count that much in the FLOP and in the time left."""
    seed = seed_parameters(SMOKE)
    active = seed + 3 * 64 * 172 * 2 + 4 * 64 * 2
    plan = demo_plan("smoke")
    assert plan.as_dict()["flops"] == 6 * (seed * (172_032 - 8192) + active * 8192)
    assert {s.step: s.parameters for s in plan.steps}["moe-finetune"] == active
    out = tmp_path / "run"
    (out / "steps").mkdir(parents=True)
    record = {"seconds": 3.0, "result": "d", "training": {"tokens": 32768, "seconds": 2.0}}
    (out / "steps" / "seed.json").write_text(json.dumps(record))
    started = demo_plan("smoke", out)
    assert started.tokens_per_second == 16384
    left = (172_032 - 32768 - 8192) + 8192 * active / seed  # in tokens of the seed's size
    assert started.remaining_seconds == pytest.approx(left / 16384)


# ------------------------------------------------------------------ 7. the presets' help


def test_each_presets_help_quotes_its_plans_parameters_and_tokens() -> None:
    pattern = r"([\d.]+)M-parameter seed, ([\d.]+)([MB]) training tokens"
    for name, preset in PRESETS.items():
        quoted = re.search(pattern, preset.summary)
        if quoted is None:
            continue
        plan = demo_plan(name)
        digits = len(quoted[1].split(".")[-1]) if "." in quoted[1] else 0
        assert float(quoted[1]) == round(plan.parameters / 1e6, digits), name
        scale = 1e6 if quoted[3] == "M" else 1e9
        digits = len(quoted[2].split(".")[-1]) if "." in quoted[2] else 0
        assert float(quoted[2]) == round(plan.tokens / scale, digits), name


# ------------------------------------------------------------------ 6. a folder of other things


@pytest.mark.parametrize(
    ("held", "target", "message"),
    [
        ("xelm.json", ".", r"out is a bundle: the demo's run would be written into it"),
        ("xelm.json", "run", r"the demo's run would lie inside the bundle .*out"),
        ("notes.txt", ".", r"out/ holds other things and is no demo run: pass another -o"),
    ],
)
def test_a_folder_that_is_no_demo_run_is_refused_before_anything(
    tmp_path: Path, held: str, target: str, message: str
) -> None:
    """A bundle, a folder inside one, or a folder of other files: the run would write its
    steps, corpus and tokenizer among them (into a bundle: unlisted, it would not verify)."""
    data = layout(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    (out / held).write_text("{}")
    with pytest.raises(UsageError, match=message):
        Demo(SMOKE, data, out / target).run()
    assert [p.name for p in out.iterdir()] == [held]
