"""The demo report's aggregates: each system's mean perplexity over languages (the paper's
headline aggregate) beside the perplexity pooled over every token, in results written before
the mean too, and the verdicts on overall perplexity judged on the mean; results of part of a
run; the report's files replaced whole; `xelm demo --json`."""

import copy
import json
import statistics
from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED_DATA

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


# ------------------------------------------------------------------ the report's files

REAL = Path(__file__).parents[1] / "docs" / "demo-small" / "results.json"  # a real demo's


def _report(results: dict[str, Any], source: Path, out: Path) -> int:
    """``xelm report`` of ``results`` (written to ``source``) into ``out``: its exit code."""
    source.write_text(json.dumps(results))
    return run(["report", str(source), "-o", str(out), "--force"])  # an earlier report too


def _files(folder: Path) -> dict[str, bytes]:
    """Every file in ``folder``, hidden ones too, and its bytes."""
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def test_a_failed_report_leaves_the_previous_one_and_a_new_one_drops_stale_figures(
    old_results: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, source = tmp_path / "report", tmp_path / "results.json"
    assert _report(old_results, source, out) == 0
    (out / "notes.md").write_text("the user's own")
    before = _files(out)
    assert set(before) == {"report.md", "results.json", "perplexity.png", "adaptation.png",
                           "notes.md"}  # fmt: skip
    damaged = {**old_results, "typology": {  # a tree the figure cannot draw
        "experts": [{"languages": ["en", "hi"]}, {"languages": ["ja"]}],
        "tree": {"leaves": LANGS, "linkage": [[0, 1, 1.0, 2]]},
    }}  # fmt: skip
    capsys.readouterr()
    assert _report(damaged, source, out) == 3
    err = capsys.readouterr().err
    assert "'tree' needs 'leaves'" in err and err.count("\n") == 1
    assert _files(out) == before  # nothing replaced, nothing left beside it
    killed = out / ".report.md.abcd1234.partial"  # what a report killed while drawing leaves
    (killed / "perplexity.png").parent.mkdir()
    (killed / "perplexity.png").write_bytes(b"half")
    del old_results["adaptation"]
    assert _report(old_results, source, out) == 0
    after = _files(out)
    assert set(after) == set(before) - {"adaptation.png"}  # not the earlier report's figure
    assert after["notes.md"] == b"the user's own"
    assert "![adaptation]" not in after["report.md"].decode()
    fresh = tmp_path / "new" / "report"
    assert _report(damaged, source, fresh) == 3 and not (tmp_path / "new").exists()


def test_claims_are_judged_on_the_languages_both_sides_score(
    old_results: dict[str, Any],
) -> None:
    """Without dense's and TF-IDF's ja (which X-ELM loses), X-ELM wins every language both
    sides score, and typology's mean is taken over en and hi as TF-IDF's is; a claim whose
    sides share no score is left out, not "NOT supported" against missing numbers."""
    del old_results["perplexity"]["dense"]["ja"], old_results["perplexity"][TFIDF]["ja"]
    by_claim = {claim["claim"].split(" ")[0]: claim for claim in claims(old_results)}
    assert list(by_claim) == ["X-ELM", "typological", "HMR"]  # no new language: no HMR vs LAPT
    every = by_claim["X-ELM"]
    assert every["supported"] is True
    assert every["evidence"] == "lower in 2 of 2 languages; ja left out (not scored for both)"
    typology = by_claim["typological"]
    assert typology["supported"] is True
    assert typology["evidence"].startswith(  # (80 + 10) / 2 against (100 + 40) / 2
        "mean perplexity over languages 45.00 (typology-k4) vs 70.00 (tfidf-k4, "
    )
    assert typology["evidence"].endswith(
        "; pooled over every token 70.00 vs 60.00; ja left out (not scored for both)"
    )
    del old_results["perplexity"]["dense"]
    del old_results["perplexity"][TYPOLOGY]["en"], old_results["perplexity"][TYPOLOGY]["hi"]
    assert [claim["claim"].split(" ")[0] for claim in claims(old_results)] == ["HMR"]


def test_a_report_of_part_of_a_run_leaves_out_what_it_lacks(tmp_path: Path) -> None:
    """A real demo's results with pieces missing, as merged results of part of a run have
    them: the report leaves out the claim, row or cell that needs them."""
    real = json.loads(REAL.read_text())
    partial = copy.deepcopy(real)
    del partial["adaptation"]["new"]
    del partial["icl"]["xelm"]["languages"]["en"]
    del partial["perplexity"]["dense"]["en"]["bits_per_byte"]
    out = tmp_path / "report"
    assert _report(partial, tmp_path / "partial.json", out) == 0
    text = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    said = [claim["claim"] for claim in results["claims"]]
    assert len(said) == 4 and not any(claim.startswith("adding a language") for claim in said)
    assert "| new language |" not in text and "Old languages (overall perplexity" in text
    dense_en = real["icl"]["dense"]["languages"]["en"]["accuracy"]
    assert f"| en | {dense_en:.2f} | - |" in text
    dense = real["perplexity"]["dense"]
    others = [dense[lang]["bits_per_byte"] for lang in real["languages"] if lang != "en"]
    assert results["perplexity"]["dense"]["mean"] == {
        "perplexity": pytest.approx(statistics.fmean(
            dense[lang]["perplexity"] for lang in real["languages"])),
        "bits_per_byte": pytest.approx(statistics.fmean(others)),
        "languages": 16,
    }  # fmt: skip
    no_old = copy.deepcopy(real)
    del no_old["adaptation"]["old"]
    assert _report(no_old, tmp_path / "no-old.json", out) == 0
    text = (out / "report.md").read_text()
    assert "| new language | donor | HMR | LAPT | dense (before) |" in text
    assert "Old languages (" not in text
    assert "HMR leaves the old languages untouched" not in text
    assert "**NOT supported**: adding a language by HMR" in text
    del real["adaptation"]["old"]["xelm after"]
    assert [claim["claim"].split(" ")[0] for claim in claims(real)] == [
        "X-ELM", "typological", "adding", "X-ELM",
    ]  # fmt: skip


def test_the_report_quotes_the_tokens_trained_not_the_tokens_asked(
    old_results: dict[str, Any], tmp_path: Path
) -> None:
    """xelm train rounds every run to whole steps: the report says what the runs trained."""
    trained = {"dense": 3_999_744, "typology-k4": 3_997_696, "tfidf-k4": 3_997_696,
               "moe-finetune": 399_360}  # fmt: skip
    old_results["training"] = {step: {"tokens": n, "seconds": 1.0} for step, n in trained.items()}
    old_results["preset"]["moe_tokens"] = 400_000
    old_results["merging"] = {"moe+ft": {"tokens": 400_000, "aux_loss_coefficient": 0.01}}
    old_results["perplexity"]["typology-k4 moe+ft"] = old_results["perplexity"][TFIDF]
    out = tmp_path / "report"
    assert _report(old_results, tmp_path / "results.json", out) == 0
    text = (out / "report.md").read_text()
    assert "a dense model continued for B = 3,999,744 tokens" in text
    assert "(each expert B/k tokens from the seed; each X-ELM 3,997,696 in all)" in text
    assert "before and after a 399,360-token fine-tune" in text
    assert "all weights, for 399,360 more tokens" in text
    assert "The fine-tuned MoE has trained on 399,360 tokens more" in text
    assert "4,000,000" not in text and "400,000" not in text


def test_demo_json_prints_one_object_with_the_report_and_the_claims(
    old_results: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The run itself stood in for by its results; stdout holds the JSON alone."""
    import xelm_cli.demo
    from xelm_cli.demo import write_report
    from xelm_cli.demo.folder import record_folder
    from xelm_cli.demo.presets import PRESETS

    def finished(preset: str, data: Path, out: Path, *args: Any) -> Any:
        results = {**old_results, "seconds": 12.0}
        record_folder(Path(out), PRESETS["smoke"], Path(data))  # as a run records its folder
        return results, write_report(results, Path(out) / "report", overwrite=True)

    monkeypatch.setattr(xelm_cli.demo, "run_demo", finished)
    out = tmp_path / "run"
    args = ["demo", "--preset", "smoke", "--data", str(SHARED_DATA), "-o", str(out)]
    assert run([*args, "--json"]) == 0
    captured = capsys.readouterr()
    report = out / "report"
    written = json.loads((report / "results.json").read_text())["claims"]
    said = json.loads(captured.out)
    assert said.pop("invocation_seconds") >= 0  # this invocation's; "seconds": the run's
    assert said == {
        "report": str(report / "report.md"),
        "results": str(report / "results.json"),
        "figures": [str(report / "perplexity.png"), str(report / "adaptation.png")],
        "seconds": 12.0,
        "claims": [{**claim, "verdict": verdict} for claim, verdict in
                   zip(written, ["NOT supported", "supported", "supported"], strict=True)],
    }  # fmt: skip
    assert "finished in 12 s" in captured.err
    assert run(args) == 0  # without --json: the report's verdict lines and its path
    lines = (report / "report.md").read_text().splitlines()
    claim_lines = [line for line in lines if line.startswith("- **")]
    assert capsys.readouterr().out.splitlines() == [*claim_lines, f"report: {report}/report.md"]
