"""The demo report's figures: which PNGs are written, that they are real images of the
expected size, and the expert colouring of the typology tree's leaves."""

import copy
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from xelm_cli.cli import run
from xelm_cli.demo import figures
from xelm_cli.demo.figures import draw_all, expert_of_language

LANGS = ["ar", "bg", "de", "el", "en", "es", "fr", "hi",
         "ja", "ko", "ru", "sw", "tr", "ur", "vi", "zh"]  # fmt: skip
MAIN = "typology-k4"
ALL_FIGURES = [
    "perplexity.png",
    "gain_vs_data.png",
    "expert_heatmap.png",
    "typology_tree.png",
    "adaptation.png",
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def typology(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real typology allocation (k = 4) of the 16 training languages, as JSON."""
    path = tmp_path_factory.mktemp("alloc") / "alloc.json"
    assert run(["cluster", "typology", "--langs", ",".join(LANGS), "-k", "4", "-o", str(path)]) == 0
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _score(ppl: float) -> dict[str, float]:
    return {"perplexity": ppl, "bits_per_byte": math.log2(ppl) / 4}


def _system(ppl: dict[str, float]) -> dict[str, dict[str, float]]:
    scores = {lang: _score(value) for lang, value in ppl.items()}
    scores["overall"] = _score(math.exp(sum(math.log(v) for v in ppl.values()) / len(ppl)))
    return scores


@pytest.fixture
def results(typology: dict[str, Any]) -> dict[str, Any]:
    """A full results dict: made-up but plausible numbers around the real allocation."""
    rng = random.Random(0)
    experts = [
        {"name": f"expert-{i}", "languages": e["languages"], "digest": f"sha256:{i:064x}"}
        for i, e in enumerate(typology["experts"])
    ]
    seed = {lang: rng.uniform(40, 400) for lang in LANGS}
    dense = {lang: v * rng.uniform(0.5, 0.7) for lang, v in seed.items()}
    xelm = {lang: v * rng.uniform(0.85, 1.02) for lang, v in dense.items()}
    perplexity = {
        "seed": _system(seed),
        "dense": _system(dense),
        f"{MAIN} language": _system(xelm),
        f"{MAIN} posterior": _system({k: v * 1.03 for k, v in xelm.items()}),
        "typology-k2 language": _system({k: v * 1.05 for k, v in xelm.items()}),
        "tfidf-k4 tfidf": _system({k: v * 1.1 for k, v in xelm.items()}),
    }
    for i, expert in enumerate(experts):
        own = set(expert["languages"])
        perplexity[f"{MAIN} expert-{i}"] = _system(
            {lang: v * (0.55 if lang in own else rng.uniform(0.9, 1.6)) for lang, v in seed.items()}
        )
    old = {
        name: _system({lang: v * factor for lang, v in xelm.items()})
        for name, factor in [
            ("xelm before", 1.0), ("dense", 1.1), ("lapt-pl", 1.4), ("lapt-sv", 1.3),
            ("xelm after", 1.0),
        ]
    }  # fmt: skip
    new = {
        lang: {
            "donor": donor,
            "donor expert": f"bundle-{donor}",
            "hmr": _score(rng.uniform(30, 60)),
            "lapt": _score(rng.uniform(35, 70)),
            "dense": _score(rng.uniform(200, 900)),
        }
        for lang, donor in {"pl": "ru", "sv": "en"}.items()
    }
    return {
        "languages": LANGS,
        "new_languages": {"pl": "ru", "sv": "en"},
        "main_xelm": MAIN,
        "training_tokens": {lang: rng.randint(20_000, 2_000_000) for lang in [*LANGS, "pl", "sv"]},
        "perplexity": perplexity,
        "experts": {MAIN: experts},
        "typology": typology,
        "adaptation": {"new": new, "old": old},
    }


def _check_png(path: Path, results: dict[str, Any]) -> None:
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 10_000, path  # a real drawing, not an empty canvas
    width, height = figures.figure_inches(path.stem, results)
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (round(height * figures.DPI), round(width * figures.DPI)), path
    assert image[..., :3].std() > 0.05, path  # not a blank page


def test_draw_all_writes_every_figure(results: dict[str, Any], tmp_path: Path) -> None:
    written = draw_all(results, tmp_path / "report")
    assert written == [tmp_path / "report" / name for name in ALL_FIGURES]
    for path in written:
        _check_png(path, results)
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(ALL_FIGURES)


def test_expert_of_language_colours_leaves_by_expert(results: dict[str, Any]) -> None:
    owners = expert_of_language(results)
    assert set(owners) == set(LANGS)
    for i, expert in enumerate(results["experts"][MAIN]):
        assert all(owners[lang] == i for lang in expert["languages"])
    # The typology's expected k=4 groups: en and ru share an expert, en and ja do not.
    assert owners["en"] == owners["ru"] == owners["es"] == owners["bg"]
    assert owners["ja"] != owners["en"]
    # Without results["experts"], the allocation's own experts give the same mapping.
    assert expert_of_language({**results, "experts": {}}) == owners
    assert expert_of_language({"languages": LANGS}) == {}
    colours = figures.expert_colours(4)
    assert len(set(colours)) == 4


def test_draw_all_skips_figures_without_their_data(results: dict[str, Any], tmp_path: Path) -> None:
    partial = copy.deepcopy(results)
    del partial["adaptation"]
    partial["perplexity"] = {
        system: value for system, value in partial["perplexity"].items() if " expert-" not in system
    }
    written = draw_all(partial, tmp_path)
    assert [p.name for p in written] == ["perplexity.png", "gain_vs_data.png", "typology_tree.png"]
    for path in written:
        _check_png(path, partial)
    assert not (tmp_path / "expert_heatmap.png").exists()
    assert not (tmp_path / "adaptation.png").exists()


def test_draw_all_with_almost_nothing(tmp_path: Path) -> None:
    assert draw_all({"languages": LANGS, "perplexity": {}}, tmp_path) == []


def test_perplexity_figure_has_a_bar_for_each_merged_system(
    results: dict[str, Any], tmp_path: Path
) -> None:
    labels = [label for label, _, _ in figures.perplexity_series(results)]
    assert labels == ["dense", f"X-ELM {MAIN}", "posterior"]
    width = figures.figure_inches("perplexity", results)[0]
    merged = copy.deepcopy(results)
    xelm = merged["perplexity"][f"{MAIN} language"]
    for name, factor in (("average", 5.0), ("moe", 6.0), ("moe+ft", 1.4)):
        merged["perplexity"][f"{MAIN} {name}"] = {
            lang: _score(score["perplexity"] * factor) for lang, score in xelm.items()
        }
    series = figures.perplexity_series(merged)
    assert [label for label, _, _ in series] == [
        "dense", f"X-ELM {MAIN}", "posterior", "averaged model", "MoE", "MoE fine-tuned",
    ]  # fmt: skip
    assert len({colour for _, colour, _ in series}) == 6
    values = dict((label, values) for label, _, values in series)
    assert values["MoE"][-1] == pytest.approx(6.0 * xelm["overall"]["perplexity"])
    assert figures.figure_inches("perplexity", merged)[0] > width  # room for the extra bars
    assert figures.draw_perplexity(merged, tmp_path / "perplexity.png")
    _check_png(tmp_path / "perplexity.png", merged)
