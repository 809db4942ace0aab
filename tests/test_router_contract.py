"""A third-party router held to its contract while it routes (spec/plugin-api.md 6): an exception
in ``route()`` or ``route_tokens()``, or weights that are no distributions, is one line naming the
router and its plugin (exit 6), never an internal error of xelm or of the evaluator scoring."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xelm_cli.api import (
    Document,
    ExpertInfo,
    OutputRouter,
    PreRouter,
    Register,
    ScoredDocument,
    Weights,
    hookimpl,
)
from xelm_cli.cli import run
from xelm_cli.plugin import host
from xelm_cli.plugin.conformance import TinyExperts

pytestmark = pytest.mark.usefixtures("isolated_registry")


class RaisingRouter(PreRouter):
    name = "raising"

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        return np.ones((len(documents), len(experts))) / len(experts[5].languages)


class DoublingRouter(PreRouter):
    name = "doubling"

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        return np.full((len(documents), len(experts)), 2.0 / len(experts))


class RaisingPerToken(OutputRouter):
    name = "raising-per-token"

    def route_tokens(self, scored: ScoredDocument, experts: Sequence[ExpertInfo]) -> Weights:
        raise KeyError("no such token")


class RaisingCalibration(DoublingRouter):
    name = "raising-calibration"

    def calibrate(self, scored: Sequence[ScoredDocument], experts: Sequence[ExpertInfo]) -> Any:
        weights = {"xx": 1.0}  # a language it forgot
        return {"prior": [weights[str(doc.document.language)] for doc in scored]}


class Routers:
    @hookimpl
    def register_routers(self, register: Register) -> None:
        for router in (RaisingRouter, DoublingRouter, RaisingPerToken, RaisingCalibration):
            register(router.name, router)


def evaluate(experts: TinyExperts, router: str) -> int:
    members = [str(bundle.path) for bundle in experts.bundles]
    argv = ["ensemble", "eval", *members, "--data", str(experts.corpus), "--router", router]
    return run([*argv, "--format", "json"])


@pytest.mark.parametrize(
    ("router", "line"),
    [
        ("raising", "router 'raising' (plugin 'mine') failed while routing: IndexError: list "
         "index out of range; this is a bug in the router (XELM_DEBUG=1 shows the traceback)"),
        ("raising-per-token", "router 'raising-per-token' (plugin 'mine') failed while routing: "
         "KeyError: 'no such token'; this is a bug in the router (XELM_DEBUG=1 shows the "
         "traceback)"),
        ("doubling", "router 'doubling' (plugin 'mine') returned weights summing to 2 for "
         "document 0; each row must sum to 1"),
    ],
)  # fmt: skip
def test_a_routers_bug_is_one_line_naming_it_and_its_plugin(
    tiny_experts: TinyExperts, capsys: pytest.CaptureFixture[str], router: str, line: str
) -> None:
    host.reset_registry(host.load_registry(extra_plugins=[("mine", Routers())]))
    assert evaluate(tiny_experts, router) == 6
    assert capsys.readouterr().err == f"xelm: error: {line}\n"


def test_a_bug_in_calibration_is_one_line_naming_the_router_and_its_plugin(
    tiny_experts: TinyExperts, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    host.reset_registry(host.load_registry(extra_plugins=[("mine", Routers())]))
    members = [str(bundle.path) for bundle in tiny_experts.bundles]
    argv = ["ensemble", "create", *members, "--router", "raising-calibration"]
    out = tmp_path / "ens.json"
    assert run([*argv, "--calibration", str(tiny_experts.corpus), "-o", str(out)]) == 6
    assert capsys.readouterr().err == (
        "xelm: error: router 'raising-calibration' (plugin 'mine') failed while calibrating: "
        "KeyError: 'en'; this is a bug in the router (XELM_DEBUG=1 shows the traceback)\n"
    )
    assert not out.exists()
