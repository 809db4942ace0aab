"""Tables printed into a pipe or a file keep whole lines: a digest, a path or a run's output is
never cut at 80 columns (rich's width when stdout is no terminal), as the bundle commands keep
theirs (test_hmr_user)."""

from pathlib import Path

from conftest import xelm

from xelm_cli.cluster.allocation import write_allocation
from xelm_cli.data.shards import Shards

LONG = "runs-in-a-folder-whose-name-alone-is-wider-than-a-terminal-" + "x" * 100


def test_data_inspect_keeps_the_digest_and_every_column(train_shards: Path) -> None:
    inspected = xelm("data", "inspect", train_shards, sites=[])  # stdout is a pipe
    assert inspected.returncode == 0, inspected.stderr
    lines = inspected.stdout.splitlines()
    assert any(Shards.open(train_shards).digest in line for line in lines)
    header = next(line for line in lines if "documents" in line)
    assert "of corpus tokens" in header and "budget" in header


def test_the_plan_table_keeps_each_runs_whole_output_path(
    seed_bundle: Path, train_shards: Path, tmp_path: Path
) -> None:
    alloc = tmp_path / "alloc.json"
    write_allocation(alloc, clusterer="typology", experts=[["en", "ru"], ["tr", "ar"]])
    runs = tmp_path / LONG
    planned = xelm("plan", "--budget", "64K", "--allocation", alloc, "--seed-bundle", seed_bundle,
                   "--data", train_shards, "-o", runs, "--train-args", "--block-size 64",
                   sites=[])  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    table = [line for line in planned.stdout.splitlines() if "expert-0" in line and "│" in line]
    assert len(table) == 1 and str(runs / "experts" / "expert-0") in table[0]


def test_the_evaluation_table_keeps_each_systems_whole_name(
    seed_bundle: Path, tmp_path: Path
) -> None:
    """Columns named model:NAME, baseline:NAME were cut mid-name at 80 columns."""
    from conftest import SHARED_DATA

    from xelm_cli.api import branch

    name = "an-expert-whose-name-is-long"
    long = branch(seed_bundle, tmp_path / name).path
    evaluated = xelm("ensemble", "eval", long, "--data", SHARED_DATA / "eval" / "flores200-devtest",
                     "--langs", "en,tr", "--limit", "2", "--baseline", long, "--router", "uniform",
                     sites=[])  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    header = next(line for line in evaluated.stdout.splitlines() if "language" in line)
    assert f"model:{name}" in header and f"delta vs baseline:{name}" in header


def test_a_column_of_prose_wraps_in_a_pipe_too() -> None:
    """`data recipes` printed each recipe's paragraph on one line of ~1,900 characters; the
    description wraps at PROSE_WIDTH while names stay whole, and every word is still there."""
    from xelm_cli.common.cli_options import PROSE_WIDTH
    from xelm_cli.data.recipes import load_recipe, shipped_recipes

    listed = xelm("data", "recipes", sites=[])
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert max(map(len, lines)) <= PROSE_WIDTH + 30  # the name and count columns, the rules
    text = " ".join(" ".join(line.split("│")[3].split()) for line in lines if line.count("│") == 4)
    for name in shipped_recipes():
        assert any(line.startswith(f"│ {name} ") for line in lines)
        assert str(load_recipe(name).raw["description"]).split()[-1] in text.split()
