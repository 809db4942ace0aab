"""A third-party trainer with an option of its own, pip-installed for real (entry points), run
through `xelm train --trainer scale --train-arg scale=...` and through `xelm_cli.api.train`.

The fixture distribution tests/fixtures/xelm-scale-trainer registers the trainer ``scale``: the
new bundle's weights are the input's times its declared option ``scale``.
"""

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, install, installed_sites, weights
from conftest import xelm as run_xelm

import xelm_cli.api as api
from xelm_cli.api import PluginError, Register, Trainer, TrainRequest, hookimpl
from xelm_cli.bundle.store import Bundle, verify_bundle
from xelm_cli.cli import run
from xelm_cli.common.errors import UsageError
from xelm_cli.data.prepare import prepare
from xelm_cli.plugin import host
from xelm_cli.plugin.registry import FIRST_PARTY_DISTRIBUTION, Registration, Registry

PROVENANCE = {
    "name": "scale",
    "plugin": "scale",
    "distribution": "xelm-scale-trainer",
    "version": "0.1.0",
}


@pytest.fixture(scope="module")
def scale_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install("xelm-scale-trainer", tmp_path_factory.mktemp("scale") / "site")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> Path:
    out = tmp_path_factory.mktemp("scale-data") / "shards"
    prepare(SHARED_DATA / "corpus" / "valid", seed_bundle, out, languages=["en"], token_caps=500)
    return out


@pytest.fixture
def installed(scale_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The fixture distribution importable in this process, its entry points found."""
    with installed_sites(monkeypatch, [scale_site]):
        yield scale_site


def xelm(*args: object, site: Path) -> subprocess.CompletedProcess[str]:
    """``python -m xelm_cli ARGS`` with the fixture distribution on its path."""
    return run_xelm(*args, sites=[site], timeout=300)


def assert_scaled(trained: Path, parent: Path, scale: float) -> None:
    """Every tensor of ``trained`` on disk is ``parent``'s times ``scale``, bit for bit."""
    before, after = weights(parent), weights(trained)
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor * scale), name
    assert verify_bundle(trained) == []


def test_cli_passes_the_trainers_own_option(
    scale_site: Path, seed_bundle: Path, shards: Path, tmp_path: Path
) -> None:
    out = tmp_path / "half"
    args = [seed_bundle, "--data", shards, "--tokens", "1K", "-o", out, "--trainer", "scale"]
    result = xelm("train", *args, "--train-arg", "scale=0.5", "--json", site=scale_site)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["path"] == str(out)
    assert_scaled(out, seed_bundle, 0.5)
    record = Bundle.open(out).manifest.training
    assert record is not None
    assert record["options"] == {"trainer": "scale", "scale": 0.5}
    assert record["trainer"] == PROVENANCE
    assert (
        record["command"].startswith("xelm train ")
        and "--train-arg scale=0.5" in (record["command"])
    )


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--train-arg", "scale=big"], "trainer 'scale': option 'scale' expects float, not 'big'"),
        (
            ["--train-arg", "scale=-1"],
            "trainer 'scale': option 'scale' must be at least 0, not -1.0",
        ),
        (["--train-arg", "speed=2"], "trainer 'scale' has no option 'speed' (its options: scale)"),
        (["--train-arg", "scale"], "--train-arg must look like KEY=VALUE, got 'scale'"),
        (
            ["--lr", "0.1"],  # a flag of the default trainer's, which this one does not declare
            "trainer 'scale' has no option --lr (its options: scale; pass them with "
            "--train-arg KEY=VALUE)",
        ),
    ],
)
def test_cli_refuses_a_bad_option_in_one_line(
    scale_site: Path,
    seed_bundle: Path,
    shards: Path,
    tmp_path: Path,
    args: list[str],
    error: str,
) -> None:
    out = tmp_path / "out"
    result = xelm("train", seed_bundle, "--data", shards, "--tokens", "1K", "-o", out,
                  "--trainer", "scale", *args, site=scale_site)  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"xelm: error: {error}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_python_api_passes_the_trainers_own_option(
    installed: Path, seed_bundle: Path, shards: Path, tmp_path: Path
) -> None:
    trained = api.train(
        seed_bundle, data=shards, tokens="1K", output=tmp_path / "quarter", trainer="scale",
        scale=0.25,
    )  # fmt: skip
    assert trained.path == tmp_path / "quarter"
    assert_scaled(trained.path, seed_bundle, 0.25)
    record = trained.manifest.training
    assert record is not None
    assert record["options"] == {"trainer": "scale", "scale": 0.25}
    assert record["trainer"] == PROVENANCE
    assert record["command"].startswith("xelm_cli.api.train(")
    # text converts as on the command line; a qualified name selects the distribution
    api.train(seed_bundle, data=shards, tokens=1024, output=tmp_path / "double",
              trainer="xelm-scale-trainer:scale", scale="2")  # fmt: skip
    assert_scaled(tmp_path / "double", seed_bundle, 2.0)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"scale": "big"}, "trainer 'scale': option 'scale' expects float, not 'big'"),
        ({"scale": -1}, "trainer 'scale': option 'scale' must be at least 0, not -1.0"),
        ({"lr": 0.1}, "trainer 'scale' has no option 'lr' (its options: scale)"),
    ],
)
def test_python_api_refuses_a_bad_option_in_one_line(
    installed: Path,
    seed_bundle: Path,
    shards: Path,
    tmp_path: Path,
    options: dict[str, object],
    error: str,
) -> None:
    out = tmp_path / "out"
    with pytest.raises(UsageError) as caught:
        api.train(seed_bundle, data=shards, tokens="1K", output=out, trainer="scale", **options)
    assert str(caught.value) == error
    assert not out.exists()


# ---------------------------------------------------------------- a third party's bugs


class BuggyTrainers:
    """An in-process plugin: ``raising`` raises KeyError in ``train``, ``refusing`` a
    UsageError, ``returning-none`` returns None and writes nothing."""

    @hookimpl
    def register_trainers(self, register: Register) -> None:
        class Raising(Trainer):
            name = "raising"

            def train(self, request: TrainRequest) -> Bundle:
                return {}["boom"]  # type: ignore[no-any-return]

        class Refusing(Trainer):
            name = "refusing"

            def train(self, request: TrainRequest) -> Bundle:
                raise UsageError("no data for that, pass --data")

        class ReturningNone(Trainer):
            name = "returning-none"

            def train(self, request: TrainRequest) -> Bundle:
                return None  # type: ignore[return-value]

        class ReturningItsInput(Trainer):
            name = "returning-its-input"

            def train(self, request: TrainRequest) -> Bundle:
                return Bundle.read(request.bundle)

        for cls in (Raising, Refusing, ReturningNone, ReturningItsInput):
            register(cls.name, cls)


BUGS = {
    "raising": "trainer 'raising' (plugin 'buggy') failed while training: KeyError: 'boom'; "
    "this is a bug in the trainer (XELM_DEBUG=1 shows the traceback)",
    "returning-none": "trainer 'returning-none' (plugin 'buggy') train() returned NoneType, not "
    "the Bundle it wrote (a trainer returns writer.result after `with write_bundle("
    "request.output, ...) as writer`, spec/plugin-api.md 7.2); this is a bug in the trainer",
}


@pytest.mark.usefixtures("isolated_registry")
@pytest.mark.parametrize("name", sorted(BUGS))
def test_a_third_party_trainers_bug_is_one_line_naming_it(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not xelm's internal error (exit 70): the trainer and its plugin, exit 6; xelm never
    reads the inputs (the trainer does), so none need exist."""
    host.reset_registry(host.load_registry(extra_plugins=[("buggy", BuggyTrainers())]))
    bundle, data, out = tmp_path / "bundle", tmp_path / "data", tmp_path / "out"
    with pytest.raises(PluginError) as caught:
        api.train(bundle, data=data, tokens="1K", output=out, trainer=name)
    assert str(caught.value) == BUGS[name]
    argv = ["train", str(bundle), "--data", str(data), "--tokens", "1K", "-o", str(out)]
    assert run([*argv, "--trainer", name]) == 6
    assert capsys.readouterr().err == f"xelm: error: {BUGS[name]}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no lock left


@pytest.mark.usefixtures("isolated_registry")
def test_a_trainer_that_returns_a_bundle_not_at_the_output_is_a_bug_naming_it(
    seed_bundle: Path, shards: Path, tmp_path: Path
) -> None:
    """The caller would take the seed for the trained expert (was returned as it was)."""
    host.reset_registry(host.load_registry(extra_plugins=[("buggy", BuggyTrainers())]))
    out = tmp_path / "out"
    with pytest.raises(PluginError) as caught:
        api.train(seed_bundle, data=shards, tokens=1, output=out, trainer="returning-its-input")
    assert str(caught.value) == (
        f"trainer 'returning-its-input' (plugin 'buggy') train() returned the bundle at "
        f"{seed_bundle}, not the requested output {out} (write_bundle(request.output, ...)); "
        "this is a bug in the trainer"
    )


@pytest.mark.usefixtures("isolated_registry")
def test_a_third_party_trainers_own_error_passes_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host.reset_registry(host.load_registry(extra_plugins=[("buggy", BuggyTrainers())]))
    with pytest.raises(UsageError, match=r"^no data for that, pass --data$"):
        api.train(tmp_path / "b", data=tmp_path / "d", tokens=1, output=tmp_path / "o",
                  trainer="refusing")  # fmt: skip


@pytest.mark.usefixtures("isolated_registry")
def test_a_bug_in_xelms_own_trainer_stays_an_internal_error(tmp_path: Path) -> None:
    """xelm's own plugins' bugs are xelm's: the exception itself (exit 70 at the CLI)."""
    registry = host.load_registry(extra_plugins=[("buggy", BuggyTrainers())], entry_points=False)
    raising = registry.get("trainer", "raising")
    own = Registration(
        "raising", "trainer", raising.obj, "trainer", "", FIRST_PARTY_DISTRIBUTION, "0"
    )
    mine = Registry()
    mine.add(own)
    host.reset_registry(mine)
    with pytest.raises(KeyError, match="boom"):
        api.train(tmp_path / "b", data=tmp_path / "d", tokens=1, output=tmp_path / "o",
                  trainer="raising")  # fmt: skip
