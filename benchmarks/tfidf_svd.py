"""TF-IDF clusterer: its truncated SVD in float32 against float64 on the same matrix.

    python benchmarks/tfidf_svd.py [--per-language 1000] [--document-bytes 1500]
                                   [--data ../shared/data] [--json FILE]

The clusterer fits scikit-learn's randomized TruncatedSVD (100 dimensions) on the TF-IDF
matrix of its sample and stores the components in float32. This fits one matrix (the sample
corpus's training files in the gpu demo preset's 16 languages, --per-language documents of
about --document-bytes bytes each: the size `xelm demo --preset gpu` fits) in float64 and in
float32, in one process, alternating, and prints each one's seconds, the energy of the matrix
its components capture (the sum of squared projections) and the cosines of the principal
angles between the two subspaces (1: the same subspace).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from xelm_cli.api import sample_documents
from xelm_cli.demo.presets import TRAIN_LANGUAGES

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def tfidf_matrix(corpus: Path, per_language: int, document_bytes: int):
    """The TF-IDF matrix the clusterer's fit makes of the sample (``embedder.fit_tfidf``)."""
    from xelm_tfidf.analyzer import AnalyzerSettings
    from xelm_tfidf.embedder import TfidfSettings, fit_tfidf
    from xelm_tfidf.fitting import stop_words_for

    documents = sample_documents(
        corpus, languages=TRAIN_LANGUAGES, per_language=per_language, document_bytes=document_bytes
    )
    analyzer = AnalyzerSettings(stop_words=stop_words_for(TRAIN_LANGUAGES))
    return fit_tfidf([d.text for d in documents], analyzer, TfidfSettings())[2]


def fit_seconds(matrix, dtype: type) -> tuple[float, np.ndarray]:
    from sklearn.decomposition import TruncatedSVD

    started = time.perf_counter()
    svd = TruncatedSVD(n_components=100, random_state=0).fit(matrix.astype(dtype))
    return time.perf_counter() - started, np.asarray(svd.components_, dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-language", type=int, default=1000)
    parser.add_argument("--document-bytes", type=int, default=1500)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    matrix = tfidf_matrix(args.data / "corpus" / "train", args.per_language, args.document_bytes)
    seconds: dict[str, list[float]] = {"float64": [], "float32": []}
    components = {}
    for _ in range(args.repeats):
        for name, dtype in (("float64", np.float64), ("float32", np.float32)):
            took, components[name] = fit_seconds(matrix, dtype)
            seconds[name].append(round(took, 2))
    energy = {name: float(((matrix @ c.T) ** 2).sum()) for name, c in components.items()}
    cosines = np.linalg.svd(components["float64"] @ components["float32"].T, compute_uv=False)
    report = {
        "matrix": list(matrix.shape),
        "nonzeros": int(matrix.nnz),
        "seconds": seconds,
        "float32_over_float64": round(min(seconds["float32"]) / min(seconds["float64"]), 3),
        "captured_energy": energy,
        "smallest_cosine": float(cosines.min()),
    }
    print(
        f"TF-IDF matrix {matrix.shape[0]:,} x {matrix.shape[1]:,} ({matrix.nnz:,} nonzeros): "
        f"float64 {seconds['float64']} s, float32 {seconds['float32']} s "
        f"(best float32 / best float64 {report['float32_over_float64']}); captured energy "
        f"{energy['float64']:.6f} / {energy['float32']:.6f}; smallest cosine of the principal "
        f"angles between the subspaces {report['smallest_cosine']:.9f}"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
