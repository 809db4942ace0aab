"""The demo report's aggregates: each system's mean perplexity over languages (the paper's
headline aggregate) beside the perplexity pooled over every token, in results written before
the mean too, and the verdicts on overall perplexity judged on the mean."""

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from xelm_cli.cli import run
from xelm_cli.demo.figures import perplexity_groups, perplexity_series
from xelm_cli.demo.report import claims, mean_over_languages, with_means

LANGS = ["en", "hi", "ja"]
TYPOLOGY, TFIDF = "typology-k4 language", "tfidf-k4 tfidf"


def _scores(ppl: list[float], bpb: list[float], pooled: float) -> dict[str, Any]:
    scores: dict[str, Any] = {
        lang: {"perplexity": p, "bits_per_byte": b}
        for lang, p, b in zip(LANGS, ppl, bpb, strict=True)
    }
    return {**scores, "overall": {"perplexity": pooled, "bits_per_byte": 1.0}}


@pytest.fixture
def old_results() -> dict[str, Any]:
    """Results of a demo from before the mean: every table has its languages and overall."""
    tfidf = _scores([100.0, 40.0, 160.0], [3.0, 1.5, 3.3], 60.0)  # mean 100
    return {
        "preset": {"name": "small", "budget": 4_000_000, "typology_ks": [4], "tfidf_k": 4},
        "languages": LANGS,
        "main_xelm": "typology-k4",
        "perplexity": {
            "dense": _scores([100.0, 20.0, 90.0], [3.0, 1.0, 2.9], 55.0),  # mean 70
            TYPOLOGY: _scores([80.0, 10.0, 150.0], [2.5, 0.8, 3.2], 70.0),  # mean 80
            TFIDF: tfidf,
        },
        "adaptation": {
            "new": {},
            "old": {
                "xelm before": copy.deepcopy(tfidf),
                "xelm after": copy.deepcopy(tfidf),
                "dense": _scores([10.0, 20.0, 30.0], [1.0, 1.0, 1.0], 25.0),  # mean 20
                "lapt-pl": _scores([30.0, 20.0, 40.0], [1.0, 1.0, 1.0], 22.0),  # mean 30
            },
        },
    }


def test_the_mean_is_the_mean_of_the_languages_each_counted_once(
    old_results: dict[str, Any],
) -> None:
    dense = old_results["perplexity"]["dense"]
    assert mean_over_languages(dense) == {
        "perplexity": pytest.approx((100 + 20 + 90) / 3),
        "bits_per_byte": pytest.approx((3.0 + 1.0 + 2.9) / 3),
        "languages": 3,
    }
    before = copy.deepcopy(old_results)
    filled = with_means(old_results)
    assert old_results == before  # the caller's results are left as they are
    for system, table in filled["perplexity"].items():
        assert list(table) == [*LANGS, "overall", "mean"], system
        assert table["overall"] == old_results["perplexity"][system]["overall"]  # pooled kept
    assert filled["perplexity"][TYPOLOGY]["mean"]["perplexity"] == pytest.approx(80.0)
    assert filled["adaptation"]["old"]["lapt-pl"]["mean"]["perplexity"] == pytest.approx(30.0)
    stale = copy.deepcopy(filled)
    stale["perplexity"]["dense"]["en"]["perplexity"] = 400.0  # a later file's en, say
    assert with_means(stale)["perplexity"]["dense"]["mean"]["perplexity"] == pytest.approx(170.0)


def test_verdicts_on_overall_perplexity_follow_the_mean_not_the_pooled_tokens(
    old_results: dict[str, Any],
) -> None:
    """Pooled, TF-IDF (60) beats typology (70) and LAPT (22) is better than dense (25) on
    the old languages; over languages typology (80) beats TF-IDF (100) and LAPT (30)
    forgets against dense (20): the claims say what the mean says."""
    by_claim = {claim["claim"].split(" ")[0]: claim for claim in claims(old_results)}
    typology = by_claim["typological"]
    assert typology["supported"] is True
    assert typology["evidence"].startswith(
        "mean perplexity over languages 80.00 (typology-k4) vs 100.00 (tfidf-k4, "
    )
    assert typology["evidence"].endswith("; pooled over every token 70.00 vs 60.00")
    forgetting = by_claim["HMR"]
    assert forgetting["supported"] is True
    assert forgetting["evidence"].endswith(
        "mean perplexity over the old languages: dense 20.00 -> 30.00 after LAPT on pl"
    )


def test_results_without_the_mean_report_it_beside_the_pooled_overall(
    old_results: dict[str, Any], tmp_path: Path
) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps(old_results))
    assert run(["report", str(old), "-o", str(tmp_path / "report")]) == 0
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results["perplexity"]["dense"]["mean"] == {
        "perplexity": pytest.approx(70.0),
        "bits_per_byte": pytest.approx((3.0 + 1.0 + 2.9) / 3),
        "languages": 3,
    }
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| overall (pooled) | 55.00 | 70.00 | 60.00 |" in text
    assert "| mean over languages | 70.00 | 80.00 | 100.00 |" in text
    assert "judged on the paper's aggregate, the mean of the languages' perplexities" in text
    assert "dense 25.00 (mean 20.00), lapt-pl 22.00 (mean 30.00)" in text
    assert (tmp_path / "report" / "perplexity.png").is_file()


def test_results_without_a_preset_report_with_question_marks(
    old_results: dict[str, Any], tmp_path: Path
) -> None:
    """spec/demo-results.md: members other than languages, perplexity and main_xelm may be
    absent (the report failed formatting a missing budget with a thousands separator)."""
    del old_results["preset"]
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(old_results))
    assert run(["report", str(bare), "-o", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "a dense model continued for B = ? tokens" in text


def test_the_perplexity_figure_has_a_mean_group_where_results_have_the_mean(
    old_results: dict[str, Any],
) -> None:
    assert perplexity_groups(old_results) == [*LANGS, "overall"]
    filled = with_means(old_results)
    assert perplexity_groups(filled) == [*LANGS, "overall", "mean"]
    dense = next(values for label, _, values in perplexity_series(filled) if label == "dense")
    assert dense[-2:] == [55.0, pytest.approx(70.0)]
