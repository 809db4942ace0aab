"""The perplexity evaluator's summary: pooled over every token, and the mean over languages."""

import copy
import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SHARED_DATA
from rich.console import Console
from xelm_eval.perplexity import summarise

from xelm_cli.api import Document, UsageError, evaluate
from xelm_cli.ensemble.results import render_csv, render_table


def test_mean_over_languages_counts_each_language_once_where_overall_pools_tokens() -> None:
    documents = [Document("ab", "en"), Document("cd", "en"), Document("e", "tr")]
    scores = [np.log([0.5, 0.5]), np.log([0.5, 0.5]), np.log([0.125])]  # en: p = 1/2, tr: 1/8
    metrics = summarise(documents, scores, ["en", "tr"])
    en, tr = metrics["languages"]["en"], metrics["languages"]["tr"]
    assert (en["perplexity"], tr["perplexity"]) == pytest.approx((2.0, 8.0))
    assert (en["bits_per_byte"], tr["bits_per_byte"]) == pytest.approx((1.0, 3.0))
    assert metrics["overall"]["mean_over_languages"] == pytest.approx(
        {"perplexity": (2.0 + 8.0) / 2, "bits_per_byte": (1.0 + 3.0) / 2, "languages": 2}
    )
    # pooled: 4 tokens at 1/2 and 1 at 1/8, 5 bytes; the fields it always had are unchanged
    assert metrics["overall"]["perplexity"] == pytest.approx(2 ** ((4 + 3) / 5))
    assert metrics["overall"]["bits_per_byte"] == pytest.approx((4 + 3) / 5)
    assert {"nll", "tokens", "bytes", "documents"} <= set(metrics["overall"])


def test_a_document_with_no_scored_token_counts_for_nothing() -> None:
    """A model whose tokenizer drops a document (zero-width text) scores it as no tokens: its
    bytes do not dilute bits per byte; a language with no scored token is refused, one line."""
    documents = [Document("ab", "en"), Document("\u200b\u200b", "en"), Document("\u200b", "tr")]
    scores = [np.log([0.5, 0.5]), np.array([]), np.array([])]
    with pytest.raises(UsageError, match=r"no token of the tr documents; leave it out with"):
        summarise(documents, scores, ["en", "tr"])
    en = summarise(documents[:2], scores[:2], ["en"])["languages"]["en"]
    assert (en["bits_per_byte"], en["documents"], en["bytes"]) == (pytest.approx(1.0), 1, 2)


@pytest.fixture(scope="module")
def results(seed_bundle: Path) -> dict[str, Any]:
    return evaluate(
        [seed_bundle],
        data=SHARED_DATA / "eval" / "flores200-devtest",
        languages=["en", "ar", "ru"],
        limit=2,
        device="cpu",
    )


def test_the_record_and_csv_hold_the_mean_of_the_languages_perplexities(
    results: dict[str, Any],
) -> None:
    metrics = results["systems"][0]["metrics"]
    per_language = [metrics["languages"][code] for code in ("en", "ar", "ru")]
    mean = metrics["overall"]["mean_over_languages"]
    assert mean["perplexity"] == pytest.approx(sum(m["perplexity"] for m in per_language) / 3)
    assert mean["bits_per_byte"] == pytest.approx(sum(m["bits_per_byte"] for m in per_language) / 3)
    assert not math.isclose(mean["perplexity"], metrics["overall"]["perplexity"])
    rows = list(csv.DictReader(io.StringIO(render_csv(results))))
    overall = {r["metric"]: float(r["value"]) for r in rows if r["language"] == "overall"}
    assert overall["mean_over_languages.perplexity"] == pytest.approx(mean["perplexity"])
    assert overall["perplexity"] == pytest.approx(metrics["overall"]["perplexity"])


def test_the_table_labels_the_pooled_row_and_adds_the_mean_of_the_languages(
    results: dict[str, Any],
) -> None:
    console = Console(width=100, file=io.StringIO())
    console.print(render_table(results))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    rows = {
        cells[0].strip(): cells[1].strip()
        for line in text.splitlines()
        if line.startswith("│") and (cells := line.split("│")[1:-1])
    }
    assert list(rows) == ["en", "ar", "ru", "pooled", "mean", "tokens/s"]
    overall = results["systems"][0]["metrics"]["overall"]
    assert rows["pooled"] == f"{overall['perplexity']:.3f}"
    assert rows["mean"] == f"{overall['mean_over_languages']['perplexity']:.3f}"


def test_a_table_without_the_mean_keeps_its_overall_row(results: dict[str, Any]) -> None:
    older = copy.deepcopy(results)  # as written before the mean was recorded
    del older["systems"][0]["metrics"]["overall"]["mean_over_languages"]
    console = Console(width=100, file=io.StringIO())
    console.print(render_table(older))
    labels = [
        line.split("│")[1].strip()
        for line in console.file.getvalue().splitlines()  # type: ignore[attr-defined]
        if line.startswith("│")
    ]
    assert labels == ["en", "ar", "ru", "overall", "tokens/s"]
