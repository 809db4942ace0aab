"""Fit a TF-IDF allocation from documents: sample, embed, cluster, measure shares."""

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import stopwordsiso
from numpy.typing import NDArray
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from xelm_cli.api import Document, UsageError, stderr_progress

from .analyzer import AnalyzerSettings
from .embedder import TfidfSettings, fit_embedder
from .kmeans import KMeansSettings, assignment_offsets, equal_capacities, fit_balanced_kmeans
from .state import TfidfModel

# Below this mean document length the clusters are close to chance: the sample corpus's
# sentences (92 bytes) gave a mean held-out purity of 0.60, ~500-byte documents 0.91, ~1500
# bytes 0.94 (benchmarks/tfidf_purity.md, 16 languages, k = 4).
SHORT_DOCUMENT_BYTES = 300
UNBALANCED = 0.05  # the balanced rule's training cluster sizes may be this far off equal


@dataclass
class FitResult:
    model: TfidfModel
    shares: dict[str, list[float]]
    training: dict[str, Any] = field(default_factory=dict)


def stop_words_for(languages: Iterable[str]) -> frozenset[str]:
    """stopwords-iso lists of the languages it has, lower-cased."""
    known = [lang for lang in languages if stopwordsiso.has_lang(lang)]
    return (
        frozenset(word.lower() for word in stopwordsiso.stopwords(known)) if known else frozenset()
    )


def language_shares(
    languages: list[str], labels: NDArray[np.int64], k: int
) -> dict[str, list[float]]:
    """For each language, the fraction of its documents that each expert gets."""
    shares: dict[str, list[float]] = {}
    codes = np.asarray(languages)
    for language in sorted(set(languages)):
        counts = np.bincount(labels[codes == language], minlength=k)
        shares[language] = [round(float(c) / counts.sum(), 6) for c in counts]
    return shares


def short_documents_warning(sample: list[Document], document_bytes: int) -> str | None:
    """A one-line warning when records were fitted as they are (``document_bytes`` 0) and
    average fewer than SHORT_DOCUMENT_BYTES bytes: TF-IDF then sees too few terms per
    document to keep a language in one cluster. None otherwise."""
    if document_bytes or not sample:
        return None
    mean_bytes = sum(len(d.text.encode("utf-8")) for d in sample) / len(sample)
    if mean_bytes >= SHORT_DOCUMENT_BYTES:
        return None
    return (
        f"xelm: warning: fitted on {len(sample):,} documents of {mean_bytes:.0f} bytes on "
        "average, too short for TF-IDF to keep a language in one cluster (clusters near "
        "chance); join consecutive records into documents with --document-bytes 1500"
    )


def unbalanced_warning(sizes: list[int], assignment: str) -> str | None:
    """A one-line warning when the "balanced" rule gives the training documents clusters more
    than UNBALANCED (and one document) off the equal sizes the auction fitted: documents with
    the same embedding (duplicates, texts with no vocabulary term) have the same argmin, so the
    offsets cannot split them (spec/allocation-tfidf.md section 3). None otherwise."""
    if assignment != "balanced" or not sizes:
        return None
    equal = equal_capacities(sum(sizes), len(sizes))
    if (np.abs(np.asarray(sizes) - equal) <= np.maximum(UNBALANCED * equal, 1)).all():
        return None
    return (
        f"xelm: warning: the experts get {min(sizes):,} to {max(sizes):,} of the {sum(sizes):,} "
        f"training documents, not about {sum(sizes) / len(sizes):,.0f} each: documents with the "
        "same embedding (duplicates, texts with no vocabulary term) all go to one expert; remove "
        "duplicates from the corpus"
    )


def _progress() -> Progress:
    return stderr_progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    )


@contextmanager
def reading_progress() -> Iterator[Callable[[int], object]]:
    """A progress line counting the records read (``sample_documents``' ``progress``)."""
    with _progress() as progress:
        reading = progress.add_task("reading corpus", total=None)
        yield lambda records: progress.advance(reading, records)


def fit_sample(
    sample: list[Document],
    *,
    kmeans: KMeansSettings,
    tfidf: TfidfSettings,
    segment: str = "cjk",
    max_per_language: int | None = 2000,
    assignment: str = "balanced",
) -> FitResult:
    """Embed the sampled documents, fit balanced k-means, then the ``assignment`` rule's
    offsets (kmeans.ASSIGNMENTS); ``training["cluster_sizes"]`` are the sizes the model's
    ``assign`` gives on the sample, and ``max_per_language`` is recorded as the sample's cap."""
    if not sample:
        raise UsageError("the corpus has no documents with text")
    if kmeans.k > len(sample):
        counts = Counter(d.language for d in sample).values()
        capped = max_per_language is not None and max(counts) >= max_per_language
        more = "raise --max-docs-per-language" if capped else "give more documents"
        raise UsageError(
            f"-k {kmeans.k} is more than the {len(sample)} documents sampled: lower -k or {more}"
        )
    unlabelled = sum(d.language is None for d in sample)
    if unlabelled:  # the experts' languages come from the documents', and prepare needs them
        raise UsageError(
            f"{unlabelled:,} of the {len(sample):,} documents sampled have no language: add a "
            "'lang' field to the records or pass --lang (the language of records without one)"
        )
    with _progress() as progress:
        languages = [str(d.language) for d in sample]
        analyzer = AnalyzerSettings(segment=segment, stop_words=stop_words_for(set(languages)))
        embedding = progress.add_task("embedding (TF-IDF, SVD)", total=None)
        texts = [d.text for d in sample]
        try:
            embedder, points = fit_embedder(texts, analyzer, tfidf)
        except ValueError as exc:
            raise UsageError(f"cannot fit the TF-IDF embedder: {exc}") from None
        progress.update(embedding, total=1, completed=1)
        clustering = progress.add_task("balanced k-means", total=len(sample))
        centroids = fit_balanced_kmeans(points, kmeans, lambda n: progress.advance(clustering, n))
    offsets = assignment_offsets(points, centroids, assignment)
    model = TfidfModel(embedder, centroids, offsets, assignment)
    labels = model.assign_points(points)
    training = {
        "documents": len(sample),
        "documents_per_language": dict(sorted(Counter(languages).items())),
        "max_documents_per_language": max_per_language,
        "max_features": tfidf.max_features,
        "kmeans": {
            "batch_size": kmeans.batch_size,
            "max_iter": kmeans.max_iter,
            "tol": kmeans.tol,
            "seed": kmeans.seed,
            "solver": kmeans.solver,
        },
        "assignment": assignment,
        "cluster_sizes": np.bincount(labels, minlength=kmeans.k).tolist(),
    }  # no wall-clock time: the same fit writes the same bytes (allocation-v1)
    return FitResult(model, language_shares(languages, labels, kmeans.k), training)
