"""The document embedder: TF-IDF -> truncated SVD -> L2 normalisation.

Fitting uses scikit-learn; the fitted state is a handful of plain arrays (vocabulary, idf, SVD
components) and ``transform`` is re-implemented on them with scipy sparse products, so a saved
allocation depends neither on pickles nor on scikit-learn's private attributes or version.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from .analyzer import Analyzer, AnalyzerSettings

if TYPE_CHECKING:  # scikit-learn costs ~1 s to import, scipy.sparse 50 ms: only use needs them
    from scipy import sparse
    from sklearn.decomposition import TruncatedSVD
    from sklearn.pipeline import Pipeline

Matrix = NDArray[np.float64]


@dataclass(frozen=True)
class TfidfSettings:
    max_features: int = 500_000
    n_components: int = 100
    sublinear_tf: bool = False
    seed: int = 0


@dataclass
class Embedder:
    """A fitted embedder: everything ``transform`` needs, as arrays."""

    analyzer: AnalyzerSettings
    sublinear_tf: bool
    terms: list[str]  # column order
    idf: NDArray[np.float64]  # (n_features,)
    components: NDArray[np.float32]  # (n_components, n_features)

    def __post_init__(self) -> None:
        self._analyze = Analyzer(self.analyzer)
        self._columns = {term: column for column, term in enumerate(self.terms)}
        self._projection: Matrix | None = None  # components.T in float64, made on first use

    @property
    def dimensions(self) -> int:
        return int(self.components.shape[0])

    def tfidf(self, texts: Sequence[str]) -> "sparse.csr_matrix":
        """Rows: tf * idf, L2-normalised (rows without any known term stay zero)."""
        from scipy import sparse

        indptr: list[int] = [0]
        indices: list[int] = []
        for text in texts:
            indices.extend(
                c for t in self._analyze(text) if (c := self._columns.get(t)) is not None
            )
            indptr.append(len(indices))
        counts = sparse.csr_matrix(
            (np.ones(len(indices)), np.asarray(indices, dtype=np.int64), indptr),
            shape=(len(texts), len(self.terms)),
        )
        return self.weighted(counts)

    def weighted(self, counts: "sparse.csr_matrix") -> "sparse.csr_matrix":
        """``tfidf`` of the texts whose term counts (columns in ``terms`` order) these are."""
        from scipy import sparse

        counts = sparse.csr_matrix(counts, dtype=np.float64, copy=True)
        counts.sum_duplicates()  # and sorted columns: the same sums in the same order
        if self.sublinear_tf:
            counts.data = np.log(counts.data) + 1.0
        weighted = counts @ sparse.diags(self.idf)
        return sparse.csr_matrix(sparse.diags(1.0 / _row_norms(weighted)) @ weighted)

    def transform(self, texts: Sequence[str]) -> Matrix:
        """Unit-length embeddings of shape (len(texts), dimensions)."""
        return self.project(self.tfidf(texts))

    def project(self, tfidf: "sparse.csr_matrix") -> Matrix:
        """``transform`` of the texts whose ``tfidf`` rows these are."""
        if self._projection is None:  # a copy of (features x dims) per call cost routing 10x
            self._projection = np.ascontiguousarray(self.components.T, dtype=np.float64)
        return normalize_rows(np.asarray(tfidf @ self._projection))


def _row_norms(matrix: "sparse.csr_matrix") -> NDArray[np.float64]:
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return norms


def normalize_rows(matrix: Matrix) -> Matrix:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return matrix / norms


def fit_tfidf(
    texts: Sequence[str], analyzer: AnalyzerSettings, settings: TfidfSettings
) -> tuple["Pipeline", "sparse.csr_matrix", "sparse.csr_matrix"]:
    """scikit-learn's TF-IDF fitted on ``texts`` (term counts, then weights: its
    TfidfVectorizer in two steps), the texts' term counts and their TF-IDF matrix."""
    from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer
    from sklearn.pipeline import make_pipeline

    counter = CountVectorizer(
        analyzer=Analyzer(analyzer),
        lowercase=False,  # the analyzer lower-cases
        token_pattern=None,
        max_features=settings.max_features,
        dtype=np.float64,
    )
    counts = counter.fit_transform(texts)
    weighting = TfidfTransformer(norm="l2", smooth_idf=True, sublinear_tf=settings.sublinear_tf)
    matrix = weighting.fit_transform(counts)
    return make_pipeline(counter, weighting), counts, matrix


def fit_pipeline(
    texts: Sequence[str], analyzer: AnalyzerSettings, settings: TfidfSettings
) -> tuple["Pipeline", "TruncatedSVD", "sparse.csr_matrix"]:
    """Fit scikit-learn's TF-IDF (``fit_tfidf``) and SVD on ``texts`` (the reference for
    ``Embedder``); also the texts' term counts."""
    from sklearn.decomposition import TruncatedSVD

    tfidf, counts, matrix = fit_tfidf(texts, analyzer, settings)
    n_features = matrix.shape[1]
    if n_features < 2:
        raise ValueError(
            f"the documents yield {n_features} distinct term(s); need at least 2: give more or "
            "longer documents, or more languages"
        )
    components = min(settings.n_components, n_features - 1, len(texts) - 1)
    if components < 1:
        raise ValueError("need at least 2 documents to fit the embedder")
    svd = TruncatedSVD(n_components=components, random_state=settings.seed)
    # In float32 (the components are stored so): 0.33x float64's time on a matrix of the gpu
    # demo preset's size (14,323 x 437,120), its subspace within a cosine of 1 - 1e-6 of
    # float64's (benchmarks/tfidf_svd.md)
    svd.fit(matrix.astype(np.float32))
    return tfidf, svd, counts


def fit_embedder(
    texts: Sequence[str], analyzer: AnalyzerSettings, settings: TfidfSettings
) -> tuple[Embedder, Matrix]:
    """The embedder fitted on ``texts`` and their embeddings, the same numbers as its
    ``transform(texts)`` gives, from the counts of the fit (the texts analysed once)."""
    pipeline, svd, counts = fit_pipeline(texts, analyzer, settings)
    counter, weighting = pipeline[0], pipeline[1]
    terms = [""] * len(counter.vocabulary_)
    for term, column in counter.vocabulary_.items():
        terms[column] = term
    embedder = Embedder(
        analyzer=analyzer,
        sublinear_tf=settings.sublinear_tf,
        terms=terms,
        idf=np.asarray(weighting.idf_, dtype=np.float64),
        components=np.asarray(svd.components_, dtype=np.float32),
    )
    return embedder, embedder.project(embedder.weighted(counts))
