"""Readers of xelm's own JSON formats refuse, in one line, what two readers could take two ways:
a key given twice in one object (allocation, ensemble file, plan, checkpoint state), an expert's
`index` other than its position, a plan run whose `-o` has no path or whose `output` is not the
path its last command writes, and a `format_version` that is not the integer 1 (`true`, `1.0`).
What xelm writes itself still reads."""

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import xelm
from train_helpers import TRAIN_ARGS

from xelm_cli.cluster.allocation import read_allocation, write_allocation
from xelm_cli.common.errors import FormatError
from xelm_cli.ensemble.create import create_ensemble
from xelm_cli.ensemble.ensemble_file import EnsembleSpec
from xelm_cli.plugin.conformance import TinyExperts
from xelm_cli.training.checkpoints import load_checkpoint, read_checkpoint_state, save_checkpoint
from xelm_cli.training.plan_runner import check_plan, plan_dry_run, read_plan
from xelm_cli.training.planning import make_plan

REMAKE_PLAN = "make the plan again with `xelm plan ... --json > {}`"


def refused(message: str) -> str:
    """``message`` as a whole-message pattern for ``pytest.raises(match=...)``."""
    assert "\n" not in message
    return f"^{re.escape(message)}$"


def with_key_twice(path: Path, key: str, first: Any) -> None:
    """Put ``"key": first`` before the first member of the JSON object in ``path``, which
    already has ``key``: the key twice in one object, the first value another."""
    text = path.read_text()
    assert text.startswith("{") and f'"{key}"' in text
    path.write_text("{" + json.dumps(key) + ": " + json.dumps(first) + ", " + text[1:])


# --- allocations --------------------------------------------------------------------------------


def test_an_allocation_with_a_key_twice_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "alloc.json"
    write_allocation(path, clusterer="typology", experts=[["en"], ["tr"]])
    assert read_allocation(path).experts == [["en"], ["tr"]]  # as xelm writes it: read
    with_key_twice(path, "experts", [{"index": 0, "languages": ["tr"]},
                                     {"index": 1, "languages": ["en"]}])  # fmt: skip
    message = f"allocation {path}: key 'experts' appears twice in one object"
    with pytest.raises(FormatError, match=refused(message)):
        read_allocation(path)


def test_an_allocation_directory_with_a_key_twice_is_refused(tmp_path: Path) -> None:
    import numpy as np

    out = tmp_path / "fitted"
    write_allocation(out, clusterer="tfidf", experts=[["en"], ["tr"]],
                     arrays={"centroids": np.zeros((2, 3), dtype=np.float32)})  # fmt: skip
    assert read_allocation(out).experts == [["en"], ["tr"]]
    with_key_twice(out / "allocation.json", "clusterer", "typology")
    message = f"allocation {out / 'allocation.json'}: key 'clusterer' appears twice in one object"
    with pytest.raises(FormatError, match=refused(message)):
        read_allocation(out)


def test_an_experts_index_other_than_its_position_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "alloc.json"
    write_allocation(path, clusterer="typology", experts=[["en"], ["tr"]])
    data = json.loads(path.read_text())
    data["experts"] = [{"index": 5, "languages": ["en"]}, {"index": 0, "languages": ["tr"]}]
    path.write_text(json.dumps(data))
    message = (
        f"{path}: experts[0] has index 5 but is expert 0 (its position in the array); put each "
        "expert at the position of its index, or remove 'index'"
    )
    with pytest.raises(FormatError, match=refused(message)):
        read_allocation(path)
    data["experts"] = [{"index": 0, "languages": ["en"]}, {"index": 0, "languages": ["tr"]}]
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match=r": experts\[1\] has index 0 but is expert 1 \("):
        read_allocation(path)
    data["experts"] = [{"languages": ["en"]}, {"index": 1, "languages": ["tr"]}]  # optional
    path.write_text(json.dumps(data))
    assert read_allocation(path).experts == [["en"], ["tr"]]


# --- ensemble files -----------------------------------------------------------------------------


@pytest.fixture
def ensemble_file(tiny_experts: TinyExperts, tmp_path: Path) -> Path:
    """An ensemble file as `xelm ensemble create` writes it, beside copies of two tiny experts."""
    root = tmp_path / "ensdir"
    copies = []
    for bundle in tiny_experts.bundles[:2]:
        shutil.copytree(bundle.path, root / bundle.name)
        copies.append(str(root / bundle.name))
    create_ensemble(copies, root / "ens.json", router="uniform")
    return root / "ens.json"


def test_an_ensemble_file_xelm_writes_reads_and_combine_defaults_to_mixture(
    ensemble_file: Path,
) -> None:
    assert EnsembleSpec.read(ensemble_file).combine == "mixture"
    data = json.loads(ensemble_file.read_text())
    del data["combine"]  # OPTIONAL: mixture
    ensemble_file.write_text(json.dumps(data))
    assert EnsembleSpec.read(ensemble_file).combine == "mixture"


def test_an_ensemble_file_with_a_key_twice_is_refused_naming_the_key(
    ensemble_file: Path,
) -> None:
    with_key_twice(ensemble_file, "combine", "logits")
    message = f"ensemble file {ensemble_file}: key 'combine' appears twice in one object"
    with pytest.raises(FormatError, match=refused(message)):
        EnsembleSpec.read(ensemble_file)


@pytest.mark.parametrize("version", [True, 1.0, "1", 2])
def test_an_ensemble_file_whose_format_version_is_not_the_integer_1_is_refused(
    ensemble_file: Path, version: object
) -> None:
    data = json.loads(ensemble_file.read_text())
    ensemble_file.write_text(json.dumps(data | {"format_version": version}))
    message = (
        f"{ensemble_file}: ensemble format_version {version!r} is not supported (this xelm reads 1)"
    )
    with pytest.raises(FormatError, match=refused(message)):
        EnsembleSpec.read(ensemble_file)


# --- plans --------------------------------------------------------------------------------------

RUN = {"name": "dense", "output": "out", "commands": [["xelm", "train", "seed", "-o", "out"]]}


def a_plan(folder: Path, *runs: dict[str, Any]) -> dict[str, Any]:
    return {"format": "xelm-train-plan", "format_version": 1, "directory": str(folder),
            "runs": list(runs or [RUN])}  # fmt: skip


def test_plans_xelm_writes_pass(
    seed_bundle: Path, train_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The experts, the dense run, average and moe, with -o absolute and relative."""
    monkeypatch.chdir(tmp_path)
    write_allocation(tmp_path / "alloc.json", clusterer="typology", experts=[["en"], ["tr"]])
    for out in (tmp_path / "runs", Path("runs")):
        plan = make_plan("8K", "alloc.json", seed_bundle, train_shards, out,
                         train_args=TRAIN_ARGS, moe_tokens="2K")  # fmt: skip
        names = [run["name"] for run in plan["runs"]]
        assert names == ["expert-0", "expert-1", "dense", "average", "moe"]
        assert check_plan(plan) is plan
        plan_file = tmp_path / "plan.json"
        plan_file.write_text(json.dumps(plan, indent=2))
        assert read_plan(plan_file) == plan
        assert len(plan_dry_run(plan_file)) == 5


def test_a_plan_with_a_key_twice_is_refused_naming_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(a_plan(tmp_path)))
    with_key_twice(plan_file, "runs", [RUN | {"output": "elsewhere"}])
    code, stdout, stderr = xelm(capsys, "train-all", plan_file, "--dry-run")
    assert (code, stdout) == (3, "")
    assert stderr == f"xelm: error: plan {plan_file}: key 'runs' appears twice in one object\n"


@pytest.mark.parametrize(
    "command",
    [["xelm", "train", "seed", "-o"], ["xelm", "train", "seed", "-o", ""],
     ["xelm", "train", "seed", "-o", "--resume"]],
)  # fmt: skip
def test_a_plan_run_whose_o_has_no_path_is_refused_naming_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: list[str]
) -> None:
    plan_file = tmp_path / "plan.json"
    branch = ["xelm", "bundle", "branch", "seed", "--langs", "en", "-o", "start"]
    plan_file.write_text(json.dumps(a_plan(tmp_path, RUN | {"commands": [branch, command]})))
    for how in (["--dry-run"], []):
        code, stdout, stderr = xelm(capsys, "train-all", plan_file, *how)
        assert (code, stdout) == (3, "")
        assert stderr == (
            f"xelm: error: {plan_file}: plan run 'dense': command 1 (xelm train) has no path "
            f"after -o; {REMAKE_PLAN.format(plan_file)}\n"
        )


def test_a_plan_run_giving_o_twice_is_refused(tmp_path: Path) -> None:
    command = ["xelm", "train", "seed", "-o", "out", "-o", "other"]
    with pytest.raises(FormatError, match=r"^the plan: plan run 'dense': command 0 \(xelm train\) "
                       r"gives -o twice; make the plan again"):  # fmt: skip
        check_plan(a_plan(tmp_path, RUN | {"commands": [command]}))


def test_a_plan_runs_output_other_than_its_last_commands_o_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(a_plan(tmp_path, RUN | {"output": "runs/dense"})))
    code, stdout, stderr = xelm(capsys, "train-all", plan_file, "--dry-run")
    assert (code, stdout) == (3, "")
    assert stderr == (
        f"xelm: error: {plan_file}: plan run 'dense': output 'runs/dense' is not the path its "
        f"last command writes (-o 'out'); {REMAKE_PLAN.format(plan_file)}\n"
    )


def test_a_plan_runs_output_is_compared_as_train_all_takes_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the plan's directory (the current one without it): relative or absolute, `./`, `..`."""
    same = ["./out", "runs/../out", str(tmp_path / "out"), "out/"]
    for output in same:
        check_plan(a_plan(tmp_path, RUN | {"output": output}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(FormatError, match=r"output '.*/out' is not the path its last command"):
        check_plan(a_plan(elsewhere, RUN | {"output": str(tmp_path / "out")}))
    monkeypatch.chdir(tmp_path)
    undirected = {k: v for k, v in a_plan(tmp_path).items() if k != "directory"}
    check_plan(undirected | {"runs": [RUN | {"output": str(tmp_path / "out")}]})
    monkeypatch.chdir(elsewhere)
    with pytest.raises(FormatError, match=r"is not the path its last command writes"):
        check_plan(undirected | {"runs": [RUN | {"output": str(tmp_path / "out")}]})


@pytest.mark.parametrize("version", [True, 1.0])
def test_a_plan_whose_format_version_is_not_the_integer_1_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, version: object
) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(a_plan(tmp_path) | {"format_version": version}))
    code, stdout, stderr = xelm(capsys, "train-all", plan_file, "--dry-run")
    assert (code, stdout) == (3, "")
    assert stderr == (
        f"xelm: error: {plan_file}: plan format version {version!r} is not supported by this "
        "xelm (reads 1); upgrade xelm to run it, or make the plan again with this one\n"
    )


# --- checkpoints --------------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    path = save_checkpoint(tmp_path, 3, model=model, optimizer=optimizer, state={"cursor": 7})
    fresh = torch.nn.Linear(2, 2)  # as xelm writes it: read
    restored = load_checkpoint(path, model=fresh, optimizer=torch.optim.AdamW(fresh.parameters()))
    assert (restored["step"], restored["cursor"]) == (3, 7)
    return path


def test_a_checkpoint_state_with_a_key_twice_is_refused_with_the_way_out(
    checkpoint: Path,
) -> None:
    with_key_twice(checkpoint / "state.json", "step", 1)
    message = (
        f"checkpoint {checkpoint} cannot be read (state.json: key 'step' appears twice in one "
        "object); no older checkpoint is kept: run without --resume and with --force to start "
        "over (or delete it: --resume then starts the run from the beginning)"
    )
    with pytest.raises(FormatError, match=refused(message)):
        read_checkpoint_state(checkpoint)


@pytest.mark.parametrize("version", [True, 1.0])
def test_a_checkpoint_whose_format_version_is_not_the_integer_1_is_refused(
    checkpoint: Path, version: object
) -> None:
    state = json.loads((checkpoint / "state.json").read_text())
    (checkpoint / "state.json").write_text(json.dumps(state | {"format_version": version}))
    message = (
        f"{checkpoint}: checkpoint format version {version!r} is not supported by this xelm "
        "(reads 1); resume with the xelm that wrote it, or pass --force to start over"
    )
    with pytest.raises(FormatError, match=refused(message)):
        read_checkpoint_state(checkpoint)


def test_the_plan_runner_reads_no_flag_value_past_a_commands_end() -> None:
    from xelm_cli.training.plan_runner import flag_value

    assert flag_value(["xelm", "train", "seed", "--tokens"], "--tokens") is None
    assert flag_value(["xelm", "train", "seed", "--tokens", "2K"], "--tokens") == "2K"
    assert flag_value(["xelm", "train"], "--tokens") is None
