"""Provenance: which installed code produced a result, and qualified plugin names.

Two real distributions (tests/fixtures/xelm-shared-a and -b, installed with pip) both register
the router ``shared``; -b also registers a router named like xelm's own ``uniform``.
"""

import io
import json
from pathlib import Path

import pytest
import zstandard
from conftest import SHARED_DATA, TEST_LANGS, install, installed_sites, xelm

from xelm_cli.bundle.seed import init_from_config
from xelm_cli.bundle.store import Bundle
from xelm_cli.cluster.allocation import read_allocation, recording_provenance, write_allocation
from xelm_cli.common.errors import UsageError
from xelm_cli.data.prepare import prepare
from xelm_cli.ensemble.ensemble_file import EnsembleSpec
from xelm_cli.ensemble.results import _throughput, build_evaluator, run_evaluation, systems_for
from xelm_cli.ensemble.routing import build_router
from xelm_cli.ensemble.runner import RunStats
from xelm_cli.plugin import host
from xelm_cli.plugin.contracts import EvalRequest, PreRouter
from xelm_cli.plugin.registry import Registry

LANGS = ("en", "tr", "ar")
SHARED_REFUSAL = (
    "router 'shared' is registered by two plugins: xelm-shared-a (plugin shared-a) and "
    "xelm-shared-b (plugin shared-b); choose one as xelm-shared-a:shared or xelm-shared-b:shared"
)
UNIFORM_NOTICE = (
    "router 'uniform' is also xelm's own (plugin 'routers'), which the name 'uniform' selects; "
    "select this one as xelm-shared-b:uniform"
)
SHARED_A = {
    "name": "shared",
    "options": {},
    "plugin": "shared-a",
    "distribution": "xelm-shared-a",
    "version": "1.0.0",
}


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return [
        install(f"xelm-shared-{x}", tmp_path_factory.mktemp(f"shared-{x}") / "site") for x in "ab"
    ]


@pytest.fixture
def installed(sites: list[Path], monkeypatch: pytest.MonkeyPatch) -> Registry:
    """This process's registry with both distributions installed (entry points on sys.path)."""
    with installed_sites(monkeypatch, sites) as registry:
        yield registry


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """Two experts, x0 (en, tr) and x1 (ar), and two FLORES sentences per language."""
    root = tmp_path_factory.mktemp("pool")
    for i, langs in enumerate((["en", "tr"], ["ar"])):
        init_from_config("tiny", tokenizer_dir, root / "experts" / f"x{i}", languages=langs, seed=i)
    for lang in LANGS:
        lines = (SHARED_DATA / "eval" / "flores200-devtest" / f"{lang}.txt").read_text()
        (root / "flores").mkdir(exist_ok=True)
        (root / "flores" / f"{lang}.txt").write_text("\n".join(lines.splitlines()[:2]) + "\n")
    return root


def evaluate(
    sites: list[Path], pool: Path, *args: str, out: Path | None = None
) -> tuple[int, str, list[str]]:
    extra = ["-o", str(out)] if out is not None else []
    result = xelm(
        "ensemble", "eval", str(pool / "experts" / "*"), "--data", str(pool / "flores"),
        "--format", "json", *extra, *args, sites=sites,
    )  # fmt: skip
    return result.returncode, result.stdout, result.stderr.splitlines()


# ---------------------------------------------------------------- the registry


def test_both_registrations_are_kept_with_their_distribution_and_version(
    installed: Registry,
) -> None:
    a, b = installed.all_of("router", "shared")
    assert (a.plugin, a.distribution, a.version) == ("shared-a", "xelm-shared-a", "1.0.0")
    assert (b.plugin, b.distribution, b.version) == ("shared-b", "xelm-shared-b", "2.1.0")
    assert "shared" not in installed.routers
    with pytest.raises(UsageError) as caught:
        installed.get("router", "shared")
    assert str(caught.value) == SHARED_REFUSAL
    # the distribution (normalised as pip does) or the plugin name selects one
    for selector in ("xelm-shared-a:shared", "xelm_shared_a:shared", "shared-a:shared"):
        assert installed.get("router", selector) is a
    assert installed.get("router", "xelm-shared-b:shared").provenance == {
        "name": "shared",
        "plugin": "shared-b",
        "distribution": "xelm-shared-b",
        "version": "2.1.0",
    }
    # xelm's own name stays xelm's; the third party's is reachable qualified
    assert installed.get("router", "uniform").distribution == "xelm"
    assert installed.get("router", "xelm-shared-b:uniform").plugin == "shared-b"
    assert [p.message for p in installed.problems] == [UNIFORM_NOTICE, SHARED_REFUSAL]


def test_python_callers_select_with_qualified_names(installed: Registry, pool: Path) -> None:
    with pytest.raises(UsageError, match=r"^router 'shared' is registered by two plugins: "):
        build_router("shared")
    router = build_router("xelm-shared-b:shared")
    assert isinstance(router, PreRouter) and type(router).__module__ == "xelm_shared_b"

    members = [Bundle.read(pool / "experts" / f"x{i}") for i in range(2)]
    spec = EnsembleSpec(members, "xelm-shared-a:shared")
    evaluator = build_evaluator("eval:perplexity", EvalRequest(data=str(pool / "flores")))
    systems = systems_for(spec, build_router(spec.router), each=False, baselines=[], device="cpu")
    results = run_evaluation("eval:perplexity", evaluator, spec, systems)
    assert results["provenance"]["router"] == SHARED_A
    assert results["provenance"]["evaluator"]["name"] == "perplexity"
    assert results["provenance"]["evaluator"]["distribution"] == "xelm"
    assert results["request"]["protocol"] is None  # perplexity has none, however selected
    assert results["ensemble"]["router"] == {"name": "xelm-shared-a:shared", "options": {}}
    assert results["systems"][0]["executed"]["sequences"] == {"x0": 6}


def test_results_name_the_fallback_router_with_its_provenance(pool: Path) -> None:
    """A pre-router's fallback is a plugin object of the run too: its record is the
    router's, built without options (every declared default)."""
    members = [Bundle.read(pool / "experts" / f"x{i}") for i in range(2)]
    evaluator = build_evaluator("perplexity", EvalRequest(data=str(pool / "flores")))

    def provenance(spec: EnsembleSpec) -> dict:
        systems = systems_for(
            spec,
            build_router(spec.router, spec.router_options),
            each=False,
            baselines=[],
            device="cpu",
        )
        return run_evaluation("perplexity", evaluator, spec, systems)["provenance"]

    named = provenance(EnsembleSpec(members, "language", {"fallback": "uniform"}))
    assert named["router"]["options"]["fallback"] == "uniform"
    assert named["fallback"] == {
        "name": "uniform",
        "options": {},
        "plugin": "routers",
        "distribution": "xelm",
        "version": named["fallback"]["version"],
    }
    assert "fallback" not in provenance(EnsembleSpec(members, "language"))


def test_tokens_per_second_is_null_without_time_of_its_own() -> None:
    metrics = {"overall": {"tokens": 100}}
    assert _throughput(metrics, 0.5, stats=RunStats()) == {"tokens_per_second": 200.0}
    assert _throughput(metrics, 0.0, stats=RunStats()) == {"tokens_per_second": None}
    assert _throughput({"overall": {"accuracy": 0.5}}, 0.5, stats=RunStats()) == {}


# ---------------------------------------------------------------- the command line


def test_the_bare_shared_name_is_refused_naming_both(sites: list[Path], pool: Path) -> None:
    code, stdout, stderr = evaluate(sites, pool, "--router", "shared")
    assert (code, stdout) == (2, "")
    assert stderr[-1] == f"xelm: error: {SHARED_REFUSAL}"
    assert sum(SHARED_REFUSAL in line for line in stderr) == 2  # the load notice, the refusal


def test_a_qualified_router_runs_and_results_name_its_distribution(
    sites: list[Path], pool: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results.json"
    code, stdout, stderr = evaluate(sites, pool, "--router", "xelm-shared-a:shared", out=out)
    assert code == 0, stderr
    results = json.loads(stdout)
    assert results == json.loads(out.read_text())
    assert results["provenance"]["router"] == SHARED_A
    evaluator = results["provenance"]["evaluator"]
    assert evaluator == {
        "name": "perplexity",
        "options": {
            "config": None,
            "split": None,
            "text_column": None,
            "lang_map": None,
        },  # every one, defaults too
        "plugin": "eval",
        "distribution": "xelm",
        "version": results["versions"]["xelm"],
    }
    assert results["systems"][0]["executed"]["sequences"] == {"x0": 6}  # all weight on x0

    code, stdout, stderr = evaluate(sites, pool, "--router", "shared-b:shared")  # plugin name
    assert code == 0, stderr
    results = json.loads(stdout)
    assert results["provenance"]["router"]["distribution"] == "xelm-shared-b"
    assert results["provenance"]["router"]["version"] == "2.1.0"
    assert results["systems"][0]["executed"]["sequences"] == {"x1": 6}  # all weight on x1


def test_a_builtin_name_is_xelms_and_the_shadow_is_qualified(sites: list[Path], pool: Path) -> None:
    code, stdout, stderr = evaluate(sites, pool, "--router", "uniform")
    assert code == 0, stderr
    results = json.loads(stdout)
    assert results["provenance"]["router"]["plugin"] == "routers"
    assert results["systems"][0]["executed"]["sequences"] == {"x0": 6, "x1": 6}
    code, stdout, stderr = evaluate(sites, pool, "--router", "xelm-shared-b:uniform")
    assert code == 0, stderr
    results = json.loads(stdout)
    assert results["provenance"]["router"]["distribution"] == "xelm-shared-b"
    assert results["systems"][0]["executed"]["sequences"] == {"x1": 6}


def test_an_ensemble_file_keeps_the_qualified_name(
    sites: list[Path], pool: Path, tmp_path: Path
) -> None:
    ensemble = tmp_path / "ens.json"
    result = xelm(
        "ensemble", "create", str(pool / "experts" / "*"), "--router", "xelm-shared-b:shared",
        "-o", str(ensemble), sites=sites,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(ensemble.read_text())["router"]["name"] == "xelm-shared-b:shared"
    result = xelm(
        "ensemble", "eval", str(ensemble), "--data", str(pool / "flores"), "--format", "json",
        sites=sites,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["provenance"]["router"]["plugin"] == "shared-b"


def test_plugins_list_shows_both_and_each_problem_once(sites: list[Path]) -> None:
    result = xelm("plugins", "list", "--json", sites=sites)
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    shared = [p for p in listing["plugins"] if p["name"].startswith("shared-")]
    rows = [(p["name"], p["distribution"], p["version"], p["registered"]["router"]) for p in shared]
    assert rows == [
        ("shared-a", "xelm-shared-a", "1.0.0", ["shared"]),
        ("shared-b", "xelm-shared-b", "2.1.0", ["shared", "uniform"]),
    ]
    assert listing["problems"] == [
        {"plugin": "shared-b", "message": UNIFORM_NOTICE, "kind": "router", "name": "uniform"},
        {"plugin": "shared-b", "message": SHARED_REFUSAL, "kind": "router", "name": "shared"},
    ]
    result = xelm("plugins", "list", sites=sites)
    assert result.returncode == 0, result.stderr
    for message in (SHARED_REFUSAL, UNIFORM_NOTICE):
        assert result.stdout.count(message) == 1, result.stdout
        assert result.stderr.count(message) <= 1, result.stderr


def test_plugins_list_prints_each_problem_once_in_all(sites: list[Path]) -> None:
    result = xelm("plugins", "list", sites=sites)
    assert result.returncode == 0, result.stderr
    printed = result.stdout + result.stderr
    for message in (SHARED_REFUSAL, UNIFORM_NOTICE):
        assert printed.count(message) == 1, printed


# ---------------------------------------------------------------- trainer and clusterer records


def test_an_allocation_fitted_by_a_clusterer_names_it(tmp_path: Path) -> None:
    from xelm_cli.cluster.fitting import cluster

    host.reset_registry()
    registry = host.get_registry()
    typology = registry.get("clusterer", "typology")
    assert registry.provenance_of("clusterer", typology.obj) == typology.provenance
    assert registry.provenance_of("clusterer", object) is None
    allocation = cluster("typology", k=2, output=tmp_path / "alloc.json", languages="en,tr,ar")
    assert read_allocation(allocation.path).provenance == {
        "name": "typology",
        "plugin": "typology",
        "distribution": "xelm",
        "version": typology.version,
    }
    host.reset_registry()


def test_allocation_provenance_is_recorded_and_optional(tmp_path: Path) -> None:
    provenance = {"name": "mine", "plugin": "p", "distribution": "dist-x", "version": "3.0"}
    with recording_provenance(provenance):
        allocation = write_allocation(tmp_path / "a.json", clusterer="mine", experts=[["en"]])
    assert allocation.provenance == provenance
    assert allocation.raw["provenance"] == {"clusterer": provenance}
    assert allocation.raw["format_version"] == "1.1.0"
    plain = write_allocation(tmp_path / "b.json", clusterer="mine", experts=[["en"]])
    assert plain.provenance is None and "provenance" not in plain.raw
    # a 1.0.0 file (no provenance) still reads
    old = json.loads((tmp_path / "b.json").read_text())
    old["format_version"] = "1.0.0"
    (tmp_path / "c.json").write_text(json.dumps(old))
    assert read_allocation(tmp_path / "c.json").provenance is None


def test_the_training_record_names_the_trainer(tmp_path: Path, seed_bundle: Path) -> None:
    from xelm_cli.cli import run
    from xelm_cli.training.run import train

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for lang in TEST_LANGS:
        with open(SHARED_DATA / "corpus" / "train" / f"{lang}.jsonl.zst", "rb") as f:
            reader = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), "utf-8")
            (corpus / f"{lang}.jsonl").write_text("".join(reader.readline() for _ in range(40)))
    prepare(corpus, seed_bundle, tmp_path / "shards", token_caps=1000)
    host.reset_registry()
    registration = host.get_registry().get("trainer", "causal-lm")
    expected = {
        "name": "causal-lm",
        "plugin": "trainer",
        "distribution": "xelm",
        "version": registration.version,
    }
    assert registration.version
    small = {"block_size": 32, "batch_size": 4, "log_every": 4}
    trained = train(
        seed_bundle, data=tmp_path / "shards", tokens=256, output=tmp_path / "py", **small
    )
    record = Bundle.read(trained.path).manifest.training
    assert record is not None and record["trainer"] == expected
    # the command line, with the trainer selected by its qualified name
    args = [str(seed_bundle), "--data", str(tmp_path / "shards"), "--tokens", "256"]
    args += ["--block-size", "32", "--batch-size", "4", "--trainer", "xelm:causal-lm"]
    assert run(["train", *args, "-o", str(tmp_path / "cli")]) == 0
    record = Bundle.read(tmp_path / "cli").manifest.training
    assert record is not None and record["trainer"] == expected
    host.reset_registry()
