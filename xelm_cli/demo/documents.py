"""Document-like text for the demo, and how purely a clustering keeps each language together.

The sample corpus is mostly single sentences (61 bytes on average in English), while the
paper clusters mC4 web pages (kilobytes). A TF-IDF vector of one sentence holds a handful of
terms, too few for its nearest centroid to be its language's, so the demo joins consecutive
records of one language and one source into documents of about ``target_bytes``
(benchmarks/tfidf_purity.py measures the effect). Records that are already that long (fetched
Hub documents) stay as they are.
"""

import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from xelm_cli.data.blocks import iter_records
from xelm_cli.data.documents import SEPARATOR, group_texts


def group_records(
    records: Iterable[Mapping[str, Any]], target_bytes: int, separator: str = SEPARATOR
) -> Iterator[str]:
    """Documents of about ``target_bytes`` (UTF-8) of consecutive records of one ``lang`` and
    ``source``, as :func:`xelm_cli.data.documents.group_texts` joins them: in order, even where
    the file interleaves sources record by record (as the sample corpus does)."""
    keyed = (((record.get("lang"), record.get("source")), record["text"]) for record in records)
    for _, text in group_texts(keyed, target_bytes, separator):
        yield text


def grouped_documents(path: Path, target_bytes: int) -> list[str]:
    """The documents of one corpus file, grouped as :func:`group_records` does."""
    return list(group_records((record for _, record in iter_records(path)), target_bytes))


def sampled_documents(path: Path, language: str, target_bytes: int, size: int) -> list[str]:
    """The demo's sample of one corpus file: its documents (:func:`grouped_documents`) in a
    random order fixed by ``language``, taken until they hold ``size`` bytes (UTF-8) or the
    file ends."""
    texts = grouped_documents(path, target_bytes)
    random.Random(f"demo-{language}").shuffle(texts)
    chosen, held = [], 0
    for text in texts:
        if held >= size:
            break
        chosen.append(text)
        held += len(text.encode())
    return chosen


def cluster_purity(
    languages: Sequence[str], clusters: Sequence[int], k: int
) -> dict[str, dict[str, Any]]:
    """For each language: its documents' shares over the k clusters, its purity (the share
    of its most common cluster), that cluster, and the entropy of the shares in bits
    (0: one cluster; log2(k): spread evenly)."""
    if len(languages) != len(clusters):
        raise ValueError(f"{len(languages)} languages for {len(clusters)} cluster labels")
    counts: dict[str, list[int]] = {}
    for language, cluster in zip(languages, clusters, strict=True):
        counts.setdefault(language, [0] * k)[int(cluster)] += 1
    return purity_of_counts(counts)


def purity_of_counts(counts: Mapping[str, Sequence[int]]) -> dict[str, dict[str, Any]]:
    """``cluster_purity`` from each language's number of documents in each cluster (languages
    without documents left out)."""
    result = {}
    for language in sorted(counts):
        row = counts[language]
        total = sum(row)
        if not total:
            continue
        k = len(row)
        shares = [c / total for c in row]
        top = max(range(k), key=lambda i: row[i])
        result[language] = {
            "documents": total,
            "shares": [round(s, 4) for s in shares],
            "cluster": top,
            "purity": round(shares[top], 4),
            "entropy_bits": abs(round(-sum(s * math.log2(s) for s in shares if s > 0), 4)),
        }
    return result


def mean_purity(purity: Mapping[str, Mapping[str, Any]]) -> float:
    """The languages' purities averaged, each language counting once."""
    return sum(p["purity"] for p in purity.values()) / len(purity) if purity else math.nan
