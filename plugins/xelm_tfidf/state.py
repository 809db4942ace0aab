"""The fitted state as allocation members and arrays (spec/allocation-tfidf.md), and back."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from xelm_cli.api import (
    Allocation,
    Assigner,
    Document,
    FormatError,
    UsageError,
    write_allocation,
)

from .analyzer import AnalyzerSettings
from .embedder import Embedder
from .kmeans import ASSIGNMENTS, offset_assignment, squared_distances

STATE_MEMBER = "tfidf"
STATE_VERSION = 1
# experts[i] lists the languages sending >= 10% of their docs to i (and each language is
# listed under its largest-share expert: expert_languages)
EXPERT_LANGUAGE_SHARE = 0.10
ARRAY_NAMES = ("vocabulary", "stop_words", "idf", "components", "centroids")
OFFSETS_ARRAY = "assignment_offsets"  # optional: absent means all zero (nearest centroid)


def encode_lines(lines: Sequence[str]) -> NDArray[np.uint8]:
    return np.frombuffer("\n".join(lines).encode("utf-8"), dtype=np.uint8).copy()


def decode_lines(array: NDArray[np.uint8]) -> list[str]:
    text = bytes(np.asarray(array, dtype=np.uint8)).decode("utf-8")
    return text.split("\n") if text else []


@dataclass
class TfidfModel(Assigner):
    """A fitted embedder, centroids and per-centroid offsets: sends a text to
    argmin_i (squared distance to centroid i + offsets[i]) (spec/allocation-tfidf.md, 3).

    ``assignment`` names the rule the offsets come from: "balanced" (the auction's prices
    for the training documents) or "nearest" (zeros: plain nearest centroid).
    """

    embedder: Embedder
    centroids: NDArray[np.float64]
    offsets: NDArray[np.float64] | None = None
    assignment: str = "nearest"
    document_bytes: int = 0  # the fit's --document-bytes

    def __post_init__(self) -> None:
        if self.offsets is None:
            self.offsets = np.zeros(self.k)
        if self.assignment not in ASSIGNMENTS:
            raise ValueError(f"assignment must be one of {', '.join(ASSIGNMENTS)}")

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def embed(self, texts: Sequence[str]) -> NDArray[np.float64]:
        return self.embedder.transform(texts)

    def distances(self, texts: Sequence[str], *, offsets: bool = False) -> NDArray[np.float64]:
        """(len(texts), k) squared Euclidean distances D to the centroids; with ``offsets``,
        D + o, the scores ``assign`` takes the argmin of and the tfidf router's input (its
        default offsets=true: weights softmax(-(D + o) / T), spec/allocation-tfidf.md 3, 5).
        Without, the plain nearest-centroid distances, which for a balanced allocation
        (nonzero o) send some texts elsewhere than the experts' documents went."""
        distances = squared_distances(self.embed(texts), self.centroids)
        if offsets:
            assert self.offsets is not None  # set by __post_init__
            distances = distances + self.offsets
        return distances

    def assign_points(self, points: NDArray[np.float64]) -> NDArray[np.int64]:
        """Experts of already embedded points (rows of ``embed``)."""
        assert self.offsets is not None  # set by __post_init__
        return offset_assignment(squared_distances(points, self.centroids), self.offsets)

    def assign_texts(self, texts: Sequence[str]) -> NDArray[np.int64]:
        return self.assign_points(self.embed(texts))

    def assign(self, documents: Sequence[Document]) -> NDArray[np.int64]:
        return self.assign_texts([document.text for document in documents])


def expert_languages(shares: dict[str, list[float]], k: int) -> list[list[str]]:
    """Per expert, the languages with a share >= EXPERT_LANGUAGE_SHARE there, and each
    language under its largest-share expert (the lowest on ties) whatever that share, so that
    one spread over more than 10 experts is not left out of the allocation's languages (which
    ``xelm data prepare`` reads). An expert no language reaches gets the language with the
    largest share of its documents going there."""
    largest = {lang: int(np.argmax(row)) for lang, row in shares.items()}
    experts: list[list[str]] = []
    for expert in range(k):
        chosen = [
            lang
            for lang, row in shares.items()
            if row[expert] >= EXPERT_LANGUAGE_SHARE or largest[lang] == expert
        ]
        if not chosen and shares:
            chosen = [max(shares, key=lambda lang: shares[lang][expert])]
        experts.append(sorted(chosen))
    return experts


def save_model(
    out: Path,
    model: TfidfModel,
    *,
    shares: dict[str, list[float]],
    training: dict[str, Any],
    overwrite: bool = False,
) -> Allocation:
    embedder = model.embedder
    members = {
        STATE_MEMBER: {
            "version": STATE_VERSION,
            "analyzer": embedder.analyzer.to_json(),
            "tfidf": {"sublinear_tf": embedder.sublinear_tf, "smooth_idf": True, "norm": "l2"},
            "svd": {"n_components": embedder.dimensions, "n_features": len(embedder.terms)},
            "expert_language_share": EXPERT_LANGUAGE_SHARE,
            "assignment": model.assignment,
            "training": training,
        }
    }
    arrays: dict[str, np.ndarray] = {
        "vocabulary": encode_lines(embedder.terms),
        "stop_words": encode_lines(sorted(embedder.analyzer.stop_words)),
        "idf": embedder.idf.astype(np.float64),
        "components": embedder.components.astype(np.float32),
        "centroids": model.centroids.astype(np.float64),
        OFFSETS_ARRAY: np.asarray(model.offsets, dtype=np.float64),
    }
    return write_allocation(
        out,
        clusterer="tfidf",
        experts=expert_languages(shares, model.k),
        members=members,
        language_shares=shares,
        arrays=arrays,
        overwrite=overwrite,
    )


def load_model(allocation: Allocation) -> TfidfModel:
    if allocation.clusterer != "tfidf":
        raise UsageError(
            f"{allocation.path} was written by the {allocation.clusterer!r} clusterer, "
            "not 'tfidf'; it has no fitted embedder"
        )
    state = allocation.raw.get(STATE_MEMBER)
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise FormatError(f"{allocation.path}: missing or unsupported '{STATE_MEMBER}' member")
    arrays = allocation.arrays()
    missing = [name for name in ARRAY_NAMES if name not in arrays]
    if missing:
        raise FormatError(f"{allocation.path}: missing arrays {', '.join(missing)}")
    try:
        analyzer = AnalyzerSettings.from_json(state["analyzer"], decode_lines(arrays["stop_words"]))
        embedder = Embedder(
            analyzer=analyzer,
            sublinear_tf=bool(state["tfidf"]["sublinear_tf"]),
            terms=decode_lines(arrays["vocabulary"]),
            idf=np.asarray(arrays["idf"], dtype=np.float64),
            components=np.asarray(arrays["components"], dtype=np.float32),
        )
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{allocation.path}: bad '{STATE_MEMBER}' state: {exc}") from None
    centroids = np.asarray(arrays["centroids"], dtype=np.float64)
    offsets = np.asarray(arrays.get(OFFSETS_ARRAY, np.zeros(len(centroids))), dtype=np.float64)
    assignment = state.get("assignment", "nearest")
    _check_shapes(allocation, embedder, centroids, offsets)
    if assignment not in ASSIGNMENTS:
        raise FormatError(f"{allocation.path}: unknown assignment {assignment!r}")
    training = state.get("training")
    joined = training.get("document_bytes", 0) if isinstance(training, dict) else 0
    return TfidfModel(embedder, centroids, offsets, assignment, int(joined or 0))


def _check_shapes(
    allocation: Allocation, embedder: Embedder, centroids: np.ndarray, offsets: np.ndarray
) -> None:
    n_features = len(embedder.terms)
    fine = (
        embedder.idf.shape == (n_features,)
        and embedder.components.ndim == 2
        and embedder.components.shape[1] == n_features
        and centroids.shape == (allocation.k, embedder.dimensions)
        and offsets.shape == (allocation.k,)
        and bool(np.isfinite(offsets).all())
    )
    if not fine:
        raise FormatError(f"{allocation.path}: TF-IDF arrays have inconsistent shapes")
    arrays: dict[str, np.ndarray] = {
        "idf": embedder.idf,
        "components": embedder.components,
        "centroids": centroids,
    }
    broken = [name for name, array in arrays.items() if not bool(np.isfinite(array).all())]
    if broken:  # one NaN centroid sends every text to one expert
        raise FormatError(f"{allocation.path}: TF-IDF arrays hold non-finite values: {broken}")
    if len(set(embedder.terms)) != n_features:
        raise FormatError(f"{allocation.path}: the TF-IDF vocabulary repeats a term")
