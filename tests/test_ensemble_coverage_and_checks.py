"""Ensembles on tiny real experts: the languages the experts cover as the language router routes
them (a broader form: en-US, arb), fallbacks that cannot serve refused when the ensemble is built,
router options that do not fit the experts refused by create, the typology fallback's way out,
and the refusals of an ensemble file's content naming the file."""

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import train_tokenizer

from xelm_cli.api import Document, PreRouter, Register, UsageError, Weights, hookimpl
from xelm_cli.bundle.seed import init_from_config
from xelm_cli.bundle.store import Bundle
from xelm_cli.cli import run
from xelm_cli.ensemble.create import create_ensemble
from xelm_cli.ensemble.evaluate import evaluate
from xelm_cli.ensemble.members import expert_infos, split_covered
from xelm_cli.ensemble.routing import build_router
from xelm_cli.ensemble.runner import EnsembleModel
from xelm_cli.plugin import host
from xelm_cli.plugin.conformance import TinyExperts

FALLBACKS = "posterior, posterior-last-token, uniform"  # xelm's routers that can be a fallback
REMAKE = "write it again with xelm ensemble create MEMBERS --router NAME -o"


@pytest.fixture(scope="module")
def ar_expert(tiny_experts: TinyExperts) -> Bundle:
    """A fourth tiny expert, for ar, on the tiny experts' tokenizer."""
    root = tiny_experts.root
    return init_from_config("tiny", root / "tokenizer", root / "expert-ar", languages=["ar"])


@pytest.fixture(scope="module")
def regional(tiny_experts: TinyExperts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus named as FLORES and regional data name languages: en-US and arb_Arab (covered
    by the en and ar experts through a broader code), tr (as an expert names it), es (not
    covered by the en, tr and ar experts)."""
    corpus = tmp_path_factory.mktemp("regional")
    for name, language in (("en-US", "en"), ("arb_Arab", "tr"), ("tr", "tr"), ("es", "es")):
        text = (tiny_experts.corpus / f"{language}.txt").read_text()
        (corpus / f"{name}.txt").write_text(text)
    return corpus


def paths(bundles: list[Bundle]) -> list[str]:
    return [str(bundle.path) for bundle in bundles]


def en_tr_ar(tiny_experts: TinyExperts, ar_expert: Bundle) -> list[str]:
    return paths([*tiny_experts.bundles[:2], ar_expert])


# ------------------------------------------------- coverage as the language router routes


def test_coverage_takes_a_broader_form_of_an_experts_language() -> None:
    assert split_covered(["arb", "en-US", "es", "ar-EG", "en-US"], ["en", "ara"]) == (
        ["arb", "en-US", "ar-EG"],
        ["es"],
    )
    assert split_covered(["hi-Latn", "hi"], ["hi"]) == (["hi"], ["hi-Latn"])  # another script


def test_eval_keeps_the_languages_the_router_routes_through_a_broader_code(
    capsys: pytest.CaptureFixture[str],
    tiny_experts: TinyExperts,
    ar_expert: Bundle,
    regional: Path,
) -> None:
    """en-US and arb were left out as "not routed" (codes compared as strings), though the
    language router sends them to the en and ar experts."""
    results = evaluate(en_tr_ar(tiny_experts, ar_expert), data=regional)
    assert sorted(results["request"]["languages"]) == ["arb", "en-US", "tr"]
    assert results["systems"][0]["routing"] == {
        "arb": [0.0, 0.0, 1.0],
        "en-US": [1.0, 0.0, 0.0],
        "tr": [0.0, 1.0, 0.0],
    }
    err = capsys.readouterr().err
    assert "that the experts cover (" in err and "left out es, which router" in err


def test_calibration_takes_the_languages_the_router_routes_through_a_broader_code(
    capsys: pytest.CaptureFixture[str],
    tiny_experts: TinyExperts,
    ar_expert: Bundle,
    regional: Path,
    tmp_path: Path,
) -> None:
    """The oracle's table (one entry per calibration language) shows what calibrated it."""
    spec = create_ensemble(
        en_tr_ar(tiny_experts, ar_expert),
        tmp_path / "ens.json",
        router="oracle",
        calibrate=regional,
    )
    assert sorted(spec.router_options["table"]) == ["arb", "en-US", "tr"]
    err = capsys.readouterr().err
    assert f"calibrating on the languages of {regional} that the experts cover (" in err
    assert "left out es (--langs chooses the languages)" in err


# ------------------------------------------------- a fallback that cannot serve


def test_a_fallback_that_needs_options_is_refused_by_create(
    tiny_experts: TinyExperts, tmp_path: Path
) -> None:
    """It was written, and every eval then asked for --router-arg weights, which the language
    router refuses."""
    ens = tmp_path / "ens.json"
    with pytest.raises(UsageError) as refused:
        create_ensemble(paths(tiny_experts.bundles), ens, router_options={"fallback": "fixed"})
    assert str(refused.value) == (
        "router 'language' cannot fall back to 'fixed': a fallback is built without options, "
        f"and it needs weights; choose one that can: {FALLBACKS}"
    )
    assert not ens.exists()


def test_a_fallback_that_does_not_route_uncovered_languages_is_refused_before_eval_runs(
    tiny_experts: TinyExperts,
) -> None:
    """An oracle built without options has no table: it was refused only on the first document
    the language router abstained on, with "create the ensemble with --router oracle"."""
    for fallback in ("oracle", "language"):
        with pytest.raises(UsageError) as refused:
            evaluate(
                paths(tiny_experts.bundles),
                data=tiny_experts.corpus,
                router_options={"fallback": fallback},
            )
        assert str(refused.value) == (
            f"router 'language' cannot fall back to {fallback!r}: a fallback is built without "
            "options, and so built, it does not route the languages no expert covers; choose "
            f"one that can: {FALLBACKS}"
        )


class Relaying(PreRouter):
    """A third party's router that abstains on every document, to its fallback ``uniform``."""

    name = "relaying"
    routes_uncovered_languages = True
    fallback = "uniform"

    def route(self, documents: Any, experts: Any) -> Weights:
        return np.full((len(documents), len(experts)), np.nan)


class RelayingRouters:
    @hookimpl
    def register_routers(self, register: Register) -> None:
        register(Relaying.name, Relaying)


@pytest.mark.usefixtures("isolated_registry")
def test_a_fallback_with_a_fallback_of_its_own_is_refused_when_the_ensemble_is_built(
    tiny_experts: TinyExperts,
) -> None:
    """It was refused only once a document was routed to it."""
    host.reset_registry(host.load_registry(extra_plugins=[("relay", RelayingRouters())]))
    router = build_router("language", {"fallback": "relaying"})
    with pytest.raises(UsageError) as refused:
        EnsembleModel(tiny_experts.bundles, router, device="cpu")
    assert str(refused.value) == (
        "router 'language' cannot fall back to 'relaying': a fallback is built without "
        "options, and it has a fallback of its own ('uniform'); choose one that can: "
        f"{FALLBACKS}"
    )
    # a fallback that can serve is built with the ensemble, checked against its experts
    uniform = build_router("language", {"fallback": "uniform"})
    fitting = EnsembleModel(tiny_experts.bundles, uniform, device="cpu")
    uncovered = Document(tiny_experts.documents[0].text, "fr")
    np.testing.assert_array_equal(fitting.route_one(uncovered), np.full(3, 1 / 3))


# ------------------------------------------------- options that do not fit the experts


@pytest.mark.parametrize(
    ("router", "options", "refusal"),
    [
        (
            "fixed",
            {"weights": "1,2"},
            "the fixed router has 2 weights but the ensemble has 3 experts: give one weight "
            "per expert",
        ),
        (
            "oracle",
            {"table": '{"en": "nope"}'},
            "the oracle router's expert nope for 'en' is not in the ensemble: calibrate it on "
            "these experts (xelm ensemble create MEMBERS --router oracle --calibration DEV_DATA "
            "-o FILE)",
        ),
    ],
)
def test_create_refuses_options_that_do_not_fit_the_experts(
    capsys: pytest.CaptureFixture[str],
    tiny_experts: TinyExperts,
    tmp_path: Path,
    router: str,
    options: dict[str, str],
    refusal: str,
) -> None:
    """The file was written, and every eval of it refused."""
    ens = tmp_path / "ens.json"
    args = [f"{key}={value}" for key, value in options.items()]
    code = run(
        ["ensemble", "create", *paths(tiny_experts.bundles), "--router", router]
        + [flag for arg in args for flag in ("--router-arg", arg)]
        + ["-o", str(ens)]
    )
    assert (code, capsys.readouterr().err) == (2, f"xelm: error: {refusal}\n")
    assert not ens.exists()
    infos = expert_infos(tiny_experts.bundles)
    with pytest.raises(UsageError, match=r"^the (fixed|oracle) router"):
        build_router(router, options).check_experts(infos)


# ------------------------------------------------- the typology fallback's way out


def test_a_language_typology_cannot_place_names_the_ways_out_of_eval(
    tiny_experts: TinyExperts, tmp_path: Path
) -> None:
    """It named --features family, a flag of xelm lang that ensemble eval does not have."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(tiny_experts.corpus / "en.txt", corpus / "tlh.txt")  # Klingon: no URIEL values
    with pytest.raises(UsageError) as refused:
        evaluate(paths(tiny_experts.bundles), data=corpus, router_options={"fallback": "typology"})
    assert str(refused.value) == (
        "the typology fallback cannot place 'tlh': lang2vec has no syntax_average values for "
        "'tlh' (URIEL code 'tlh'); weigh it with --router-arg fallback=posterior (or another "
        "fallback router, e.g. uniform), or leave it out with --langs"
    )


# ------------------------------------------------- an ensemble file's content, named


@pytest.fixture(scope="module")
def other_tokenizer_expert(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    root = tmp_path_factory.mktemp("other-tokenizer")
    tokenizer = train_tokenizer(root / "tokenizer", vocab_size=280)
    return init_from_config("tiny", tokenizer, root / "expert", languages=["tr"])


def edited(source: Path, target: Path, **fields: Any) -> Path:
    """Ensemble file ``source`` with ``fields`` replaced, written as ``target``."""
    data = json.loads(source.read_text())
    target.write_text(json.dumps({**data, **fields}))
    return target


def test_refusals_of_an_ensemble_files_content_name_the_file_and_how_to_write_it(
    capsys: pytest.CaptureFixture[str],
    tiny_experts: TinyExperts,
    other_tokenizer_expert: Bundle,
    tmp_path: Path,
) -> None:
    ens = tmp_path / "ens.json"
    create_ensemble(paths(tiny_experts.bundles), ens)
    listed = json.loads(ens.read_text())["members"]
    stranger = {**listed[0], "path": str(other_tokenizer_expert.path)}
    stranger |= {"id": other_tokenizer_expert.id, "digest": other_tokenizer_expert.digest}
    cases = {
        "none.json": ({"members": []}, "an ensemble needs at least one bundle"),
        "twice.json": ({"members": [listed[0], listed[0]]}, "are the same expert"),
        "tokenizers.json": ({"members": [listed[0], stranger]}, "have different tokenizers"),
        "prior.json": (
            {"router": {"name": "posterior", "options": {"prior": [1, 2]}}},
            "the posterior prior has 2 values but the ensemble has 3 experts",
        ),
        "weights.json": (
            {"router": {"name": "fixed", "options": {"weights": [1, 2]}}},
            "the fixed router has 2 weights but the ensemble has 3 experts",
        ),
        "fallback.json": (
            {"router": {"name": "language", "options": {"fallback": "fixed"}}},
            "router 'language' cannot fall back to 'fixed'",
        ),
    }
    for name, (fields, refusal) in cases.items():
        path = edited(ens, tmp_path / name, **fields)
        with pytest.raises(UsageError) as refused:
            evaluate(path, data=tiny_experts.corpus)
        message = str(refused.value)
        assert refusal in message and message.endswith(f" (in {path}; {REMAKE} {path})"), message
        code = run(["ensemble", "eval", str(path), "--data", str(tiny_experts.corpus)])
        assert (code, capsys.readouterr().err) == (2, f"xelm: error: {message}\n")
    # options given with the file are the user's, not the file's: refused without naming it
    with pytest.raises(UsageError) as refused:
        evaluate(ens, data=tiny_experts.corpus, router="fixed", router_options={"weights": "1,2"})
    assert str(refused.value).endswith("give one weight per expert")
