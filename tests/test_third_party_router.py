"""A third-party router with typed options (tests/fixtures/xelm-prefer-router), pip-installed
and used through the CLI (`xelm ensemble eval --router prefer --router-arg ...`, `xelm plugins
show/check`) and through Python (xelm_cli.api.evaluate, EnsembleModel); a bad value is the
declaration's one-line typed error."""

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import install, installed_sites
from conftest import xelm as run_xelm

from xelm_cli import api
from xelm_cli.ensemble.routing import build_router
from xelm_cli.ensemble.runner import EnsembleModel, single_model
from xelm_cli.plugin.conformance import TinyExperts


@pytest.fixture(scope="module")
def prefer_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install("xelm-prefer-router", tmp_path_factory.mktemp("prefer") / "site")


@pytest.fixture
def installed(prefer_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The installed distribution visible to this process's registry (entry points)."""
    with installed_sites(monkeypatch, [prefer_site]):
        yield


def xelm(*args: str, site: Path) -> subprocess.CompletedProcess[str]:
    return run_xelm(*args, sites=[site], timeout=300)


def members(experts: TinyExperts) -> list[str]:
    return [str(bundle.path) for bundle in experts.bundles]


def test_through_the_cli(prefer_site: Path, tiny_experts: TinyExperts) -> None:
    result = xelm(
        "ensemble", "eval", *members(tiny_experts), "--data", str(tiny_experts.corpus),
        "--router", "prefer", "--router-arg", "expert=1", "--router-arg", "share=0.9",
        "--router-arg", "names=expert-tr,expert-es", "--format", "json",
        site=prefer_site,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    # the text values were converted by the declaration: an int, a float, a list
    options = {"expert": 1, "share": 0.9, "names": ["expert-tr", "expert-es"]}
    assert results["ensemble"]["router"] == {"name": "prefer", "options": options}
    assert results["provenance"]["router"] == {
        "name": "prefer",
        "options": {**options, "by_language": False},  # what ran: the default too
        "plugin": "prefer",
        "distribution": "xelm-prefer-router",
        "version": "1.3.0",
    }
    assert results["systems"][0]["metrics"]["overall"]["documents"] == 6

    for args, error in (
        (["share=lots"], "router 'prefer': option 'share' expects float, not 'lots'"),
        (["expert=-1"], "router 'prefer': option 'expert' must be at least 0, not -1"),
        (["expert=1", "by_language=perhaps"], "router 'prefer': option 'by_language' expects "
         "bool, not 'perhaps'"),
        (["expert=1", "share=2"], "router 'prefer': share must be at most 1, not 2.0"),
        (["share=0.5"], "router 'prefer' needs option 'expert' (Index of the preferred expert "
         "(ensemble order).); pass --router-arg expert=VALUE"),
        (["expert=1", "weight=2"], "router 'prefer' has no option 'weight' (its options: "
         "expert, share, by_language, names)"),
    ):  # fmt: skip
        pairs = [part for pair in args for part in ("--router-arg", pair)]
        result = xelm(
            "ensemble", "eval", *members(tiny_experts), "--data", str(tiny_experts.corpus),
            "--router", "prefer", *pairs, site=prefer_site,
        )  # fmt: skip
        assert (result.returncode, result.stderr) == (2, f"xelm: error: {error}\n")


def test_show_and_check(prefer_site: Path) -> None:
    result = xelm("plugins", "show", "prefer", "--json", site=prefer_site)
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)
    assert (record["class"], record["distribution"], record["version"]) == (
        "xelm_prefer:PreferRouter",
        "xelm-prefer-router",
        "1.3.0",
    )
    assert [(o["name"], o["type"], o["default"], o["required"]) for o in record["options"]] == [
        ("expert", "int", None, True),
        ("share", "float", 0.8, False),
        ("by_language", "bool", False, False),
        ("names", "list of str", [], False),
    ]
    result = xelm("plugins", "check", "prefer", "--router-arg", "expert=2", site=prefer_site)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == "router prefer (plugin prefer)"
    assert "FAIL" not in result.stdout and "  PASS  normalised:" in result.stdout


@pytest.mark.usefixtures("installed")
def test_through_python(tiny_experts: TinyExperts) -> None:
    from xelm_prefer import PreferRouter

    # the registered class, built with Python values or text alike
    router = build_router("prefer", {"expert": 2, "share": 1.0})
    assert isinstance(router, PreferRouter) and router.options.share == 1.0
    assert PreferRouter(expert="2", by_language="yes").options.by_language is True
    with pytest.raises(api.UsageError) as caught:
        PreferRouter(expert="two")
    assert str(caught.value) == "router 'prefer': option 'expert' expects int, not 'two'"

    # all the weight on expert 2: the ensemble scores exactly as that expert alone
    documents = tiny_experts.documents
    ensemble = EnsembleModel(tiny_experts.bundles, router, device="cpu")
    alone = single_model(tiny_experts.bundles[2], "alone", device="cpu")
    for mixed, single in zip(
        ensemble.score_documents(documents), alone.score_documents(documents), strict=True
    ):
        np.testing.assert_allclose(mixed, single, rtol=1e-6, atol=1e-6)
    assert dict(ensemble.stats.loads) == {"expert-es": 1}

    results = api.evaluate(
        [bundle.path for bundle in tiny_experts.bundles],
        data=tiny_experts.corpus,
        router="prefer",
        router_options={"expert": 0, "share": 0.5},
        device="cpu",
    )
    assert results["provenance"]["router"]["distribution"] == "xelm-prefer-router"
    assert results["ensemble"]["router"]["options"] == {"expert": 0, "share": 0.5}
    with pytest.raises(api.UsageError, match=r"^router 'prefer': option 'share' expects float"):
        api.evaluate(
            [bundle.path for bundle in tiny_experts.bundles],
            data=tiny_experts.corpus,
            router="prefer",
            router_options={"expert": 0, "share": [0.5]},
        )
