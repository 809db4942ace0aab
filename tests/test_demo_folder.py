"""A demo run folder records the preset that made it and refuses another one before any work;
--device is checked before any work too; demo_plan takes a preset's name."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA

from xelm_cli.cli import run
from xelm_cli.common.errors import UsageError
from xelm_cli.demo import Demo
from xelm_cli.demo.data import data_digest
from xelm_cli.demo.folder import RECORD, preset_settings
from xelm_cli.demo.plan import demo_plan
from xelm_cli.demo.presets import NEW_LANGUAGES, PRESETS, TRAIN_LANGUAGES

SMOKE_SEED = json.dumps({"seconds": 1.0, "result": "d", "training": {"tokens": 32768,
                                                                     "seconds": 2.0}})  # fmt: skip


def empty_data(root: Path) -> Path:
    """A data directory with every file the demo reads, each damaged: its corpus step fails."""
    languages = [*TRAIN_LANGUAGES, *NEW_LANGUAGES]
    files = [*(f"corpus/train/{lang}.jsonl.zst" for lang in languages),
             *(f"eval/flores200-devtest/{lang}.txt" for lang in languages),
             *(f"tasks/sib200/{lang}/{split}.tsv" for lang in TRAIN_LANGUAGES
               for split in ("train", "test"))]  # fmt: skip
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"damaged")
    return root


def started_by_smoke(out: Path) -> None:
    """A folder whose seed step smoke finished (its record as the demo writes it)."""
    (out / "steps").mkdir(parents=True)
    (out / "steps" / "seed.json").write_text(SMOKE_SEED)


def test_the_first_run_records_its_preset_before_its_first_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The corpus step fails on empty data, after the record is written; another preset is
    then refused in one line, and the same one goes on (and fails at the same step)."""
    data, out = empty_data(tmp_path / "data"), tmp_path / "run"
    args = ["--data", str(data), "-o", str(out)]
    assert run(["demo", "--preset", "smoke", *args]) != 0
    made = json.loads((out / RECORD).read_text())
    assert made == {"preset": "smoke", "settings": preset_settings(PRESETS["smoke"]),
                    "data": str(data.resolve()), "data_digest": data_digest(data)}  # fmt: skip
    assert made["settings"]["budget"] == 32768 and "summary" not in made["settings"]
    assert not list(out.glob(".*"))  # no temporary or lock left beside it
    capsys.readouterr()
    assert run(["demo", "--preset", "small", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{out}/ was made by --preset smoke: pass that preset, or another -o")
    assert len(err.splitlines()) == 1
    assert run(["demo", "--preset", "smoke", *args]) != 0
    assert "[ 1] corpus ..." in capsys.readouterr().err


@pytest.mark.parametrize(
    ("removed", "said"),
    [
        ("eval/flores200-devtest/sv.txt", "eval/flores200-devtest/sv.txt"),  # read after adapt
        ("tasks/sib200/zh/test.tsv", "tasks/sib200/zh/test.tsv"),  # read by the last step
        ("corpus", "corpus/train/ar.jsonl.zst and 17 more of the files xelm demo reads"),
    ],
)
def test_data_lacking_a_file_the_demo_reads_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], removed: str, said: str
) -> None:
    """Not hours later at the step that reads it, with demo.json already written."""
    data, out = empty_data(tmp_path / "data"), tmp_path / "run"
    shutil.rmtree(data / removed) if (data / removed).is_dir() else (data / removed).unlink()
    assert run(["demo", "--preset", "smoke", "--data", str(data), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"xelm: error: {data} lacks {said}: fetch them with `xelm data fetch -o {data}`, or pass "
        "another --data\n"
    )
    assert not out.exists()
    with pytest.raises(UsageError, match=r"`xelm data fetch --size 128M -o "):
        Demo(PRESETS["gpu-large"], data, out)  # a preset that reads more than fetch's default


def test_plan_of_a_folder_made_by_another_preset_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    started_by_smoke(out)
    (out / RECORD).write_text(json.dumps({"preset": "smoke"}))
    assert run(["demo", "--preset", "small", "--plan", "-o", str(out)]) == 2
    assert "was made by --preset smoke: pass that preset, or another -o" in capsys.readouterr().err
    with pytest.raises(UsageError, match="made by --preset smoke"):
        demo_plan("small", out)
    assert demo_plan("smoke", out).steps[0].done


def test_a_same_named_preset_with_other_settings_is_refused(tmp_path: Path) -> None:
    """A record written by an xelm whose smoke preset trained the dense model longer; a
    setting the record lacks (added by a later xelm) is not compared."""
    settings = preset_settings(PRESETS["smoke"])
    settings["budget"] = 65536
    del settings["moe_tokens"]
    out = tmp_path / "run"
    out.mkdir()
    (out / RECORD).write_text(json.dumps({"preset": "smoke", "settings": settings}))
    with pytest.raises(UsageError) as refused:
        demo_plan("smoke", out)
    assert str(refused.value) == (
        f"{out}/ was made by another xelm's preset smoke, with other budget: pass another -o"
    )


def test_a_folder_from_before_the_record_is_checked_by_its_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """steps/ without a record: the preset its report's results name, if any, else accepted."""
    out = tmp_path / "run"
    started_by_smoke(out)
    assert run(["demo", "--preset", "small", "--plan", "--json", "-o", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["steps"][0]["done"]  # nothing to tell: accepted
    (out / "report").mkdir()
    (out / "report" / "results.json").write_text(json.dumps({"preset": {"name": "smoke"}}))
    assert run(["demo", "--preset", "small", "--plan", "-o", str(out)]) == 2
    assert "was made by --preset smoke" in capsys.readouterr().err
    assert run(["demo", "--preset", "smoke", "--plan", "-o", str(out)]) == 0


def test_demo_plan_takes_a_preset_name_as_the_readme_shows() -> None:
    by_name = demo_plan("smoke", None, devices=8)
    assert by_name == demo_plan(PRESETS["smoke"], None, devices=8)
    assert by_name.preset == "smoke" and sum(step.runs for step in by_name.steps) == 15
    with pytest.raises(UsageError, match="unknown preset 'huge'"):
        demo_plan("huge")


@pytest.mark.parametrize("device", ["tpu", "cuda"])
def test_a_device_that_cannot_run_is_refused_before_any_work(
    device: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "run"
    args = ["--preset", "smoke", "--data", str(SHARED_DATA), "-o", str(out)]
    assert run(["demo", *args, "--device", device]) == 2
    err = capsys.readouterr().err.strip()
    expected = "unknown device 'tpu'" if device == "tpu" else "CUDA is not available"
    assert expected in err and len(err.splitlines()) == 1
    assert not out.exists()
    with pytest.raises(UsageError, match=expected):
        Demo(PRESETS["smoke"], SHARED_DATA, out, device)


def test_auto_device_is_accepted(tmp_path: Path) -> None:
    demo = Demo(PRESETS["smoke"], SHARED_DATA, tmp_path / "run", "auto")
    assert demo.device == "auto" and not (tmp_path / "run").exists()


def test_readme_presets_table_has_each_presets_runs_and_tokens_from_its_plan() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text().splitlines()
    header = readme.index(
        "| preset | seed parameters | training runs | training tokens | tokens a step | where |"
    )
    rows = {}
    for line in readme[header + 2 :]:
        if not line.startswith("| `"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0].split("`")[1]] = [int(cell.replace(",", "")) for cell in cells[1:5]]
    for name, preset in PRESETS.items():
        plan = demo_plan(name)
        runs = sum(step.runs for step in plan.steps)
        assert rows[name] == [plan.parameters, runs, plan.tokens, preset.batch_tokens], name


def test_every_presets_x_elms_train_exactly_what_its_dense_model_trains() -> None:
    """Equal compute in whole steps: each expert of every X-ELM trains B / k in whole steps
    (`xelm train` rounds a run down to them), so the k experts together train the dense
    model's tokens; small's B = 4M would give its dense run 1,953 steps of 2,048 tokens and its
    k = 8 experts 8 x 244 = 1,952."""
    for name, preset in PRESETS.items():
        runs = preset.training_runs()
        experts = [step for step in runs if step.startswith(("typology-", "tfidf-"))]
        assert experts, name
        for step in experts:
            assert sum(runs[step]) == runs["dense"][0], (name, step)
        for k in (*preset.typology_ks, preset.tfidf_k):  # B / k is whole steps: nothing cut
            assert (
                preset.equal_budget % k == 0 and preset.equal_budget // k % preset.batch_tokens == 0
            )
    assert PRESETS["small"].equal_budget == 1_952 * 2_048
