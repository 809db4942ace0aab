"""The demo's document grouping and cluster purity, against hand-worked inputs."""

import json
from pathlib import Path

import pytest
import zstandard

from xelm_cli.common.errors import FormatError
from xelm_cli.demo.documents import (
    cluster_purity,
    group_records,
    grouped_documents,
    mean_purity,
    purity_of_counts,
)
from xelm_cli.demo.report import purity_section, text_sentence


def records(*texts: str, lang: str = "en", source: str = "s") -> list[dict[str, str]]:
    return [{"text": t, "lang": lang, "source": source} for t in texts]


def test_consecutive_records_join_up_to_the_target() -> None:
    # "abc\ndefg" is 8 bytes, "+\nhi" makes 11 >= 10: the first document ends there.
    got = list(group_records(records("abc", "defg", "hi", "jklmnop", "q"), 10))
    assert got == ["abc\ndefg\nhi", "jklmnop\nq"]


def test_a_record_at_the_target_stands_alone_and_order_is_kept() -> None:
    got = list(group_records(records("0123456789", "ab", "cd"), 5))
    assert got == ["0123456789", "ab\ncd"]


def test_target_counts_utf8_bytes() -> None:
    # "äöü" is 6 bytes: two of them (13 with the newline) reach 12.
    assert list(group_records(records("äöü", "äöü", "äöü"), 12)) == ["äöü\näöü", "äöü"]


def test_each_language_and_source_has_its_own_document() -> None:
    # The sample corpus interleaves sources record by record: a document takes the next
    # records of its own source and language, in order, skipping the others'.
    mixed = [
        *records("a", "b", source="opus"),
        *records("c", source="debian"),
        *records("d", "e", source="opus"),
        *records("f", lang="ru", source="opus"),
        *records("g", source="debian"),
    ]
    assert list(group_records(mixed, 5)) == ["a\nb\nd", "c\ng", "e", "f"]
    assert list(group_records(mixed, 1000)) == ["a\nb\nd\ne", "c\ng", "f"]


def test_blank_records_are_skipped_and_zero_target_keeps_records() -> None:
    assert list(group_records(records("a", "  ", "b"), 1000)) == ["a\nb"]
    assert list(group_records(records("a", "b", "c"), 0)) == ["a", "b", "c"]
    assert list(group_records([], 100)) == []


def test_records_without_source_group_together() -> None:
    plain = [{"text": "x"}, {"text": "y", "lang": None}]
    assert list(group_records(plain, 100)) == ["x\ny"]


def test_grouped_documents_reads_compressed_files(tmp_path: Path) -> None:
    lines = [json.dumps(r) for r in records("one", "two", "three", source="a")]
    lines.append(json.dumps({"text": "four", "lang": "en", "source": "b"}))
    path = tmp_path / "en.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))
    assert grouped_documents(path, 7) == ["one\ntwo", "three", "four"]


def test_grouped_documents_refuses_a_record_without_text(tmp_path: Path) -> None:
    path = tmp_path / "en.jsonl"
    path.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(FormatError, match=r"en.jsonl:2: a record needs a string field 'text'"):
        grouped_documents(path, 100)


def test_purity_and_entropy_match_a_hand_computation() -> None:
    languages = ["en", "en", "en", "en", "ru", "ru"]
    clusters = [0, 0, 1, 2, 3, 3]
    purity = cluster_purity(languages, clusters, 4)
    # en: shares 1/2, 1/4, 1/4, 0 -> purity 0.5 in cluster 0; entropy 0.5*1 + 2*0.25*2 = 1.5
    assert purity["en"] == {
        "documents": 4,
        "shares": [0.5, 0.25, 0.25, 0.0],
        "cluster": 0,
        "purity": 0.5,
        "entropy_bits": 1.5,
    }
    assert purity["ru"]["shares"] == [0.0, 0.0, 0.0, 1.0]
    assert (purity["ru"]["purity"], purity["ru"]["entropy_bits"]) == (1.0, 0.0)
    assert mean_purity(purity) == 0.75


def test_purity_of_counts_is_that_of_the_labels_it_counts() -> None:
    languages = ["en", "en", "en", "en", "ru", "ru"]
    clusters = [0, 0, 1, 2, 3, 3]
    counts = {"en": [2, 1, 1, 0], "ru": [0, 0, 0, 2], "de": [0, 0, 0, 0]}
    assert purity_of_counts(counts) == cluster_purity(languages, clusters, 4)  # no "de"


def test_even_spread_has_purity_one_over_k_and_log2_k_bits() -> None:
    purity = cluster_purity(["de"] * 8, [0, 1, 2, 3, 0, 1, 2, 3], 4)["de"]
    assert (purity["purity"], purity["entropy_bits"]) == (0.25, 2.0)


def test_purity_refuses_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="2 languages for 1 cluster labels"):
        cluster_purity(["en", "en"], [0], 2)


def test_report_section_names_the_text_and_each_language() -> None:
    results = {
        "corpus": {"document_bytes": 1500, "bytes": {"en": 3000, "ru": 1000},
                   "documents": {"en": 2, "ru": 2}},
        "tfidf_clusters": {"name": "tfidf-k2", "purity": cluster_purity(
            ["en", "en", "ru", "ru"], [0, 0, 0, 1], 2)},
    }  # fmt: skip
    results["tfidf_clusters"]["purity"]["en"]["eval_routed"] = 0.75
    text = "\n".join(purity_section(results))
    assert "## TF-IDF clusters (tfidf-k2): language purity" in text
    assert "documents of about 1,500 bytes, 1,000 bytes on average" in text
    assert "| en | 2 | 1.00 / 0.00 | 1.00 | 0.00 | 0.75 |" in text
    assert "| ru | 2 | 0.50 / 0.50 | 0.50 | 1.00 | - |" in text
    assert "| mean (documents: all) | 4 |  | 0.75 | 0.50 | 0.75 |" in text
    assert purity_section({"corpus": {}}) == []


def test_report_says_when_records_were_used_as_they_are() -> None:
    sentence = text_sentence({"corpus": {"document_bytes": 0, "bytes": {}, "documents": {}}})
    assert sentence == "Training text: the corpus records as they are (mostly single sentences)."
