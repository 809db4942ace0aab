"""Clustering benchmark: typology tree time, TF-IDF fit/assign versus plain scikit-learn KMeans.

    python benchmarks/cluster.py [-k 4] [--data ../shared/data] [--json]

(a) Typology clustering of 20 languages (URIEL distances and the merge tree; a tree of 20
leaves has levels 20, 10, 5, 3, 2, 1, so k=4 is reported as unavailable, not faked): cold
(first call in a fresh process, timed inside a subprocess so interpreter start-up is excluded
but imports and URIEL loading are not) and cached (a second call in the same process).
(b) TF-IDF clustering of the sample corpus (per-language cap as the CLI default): fit seconds
(reading, embedding, balanced k-means, offsets), assign throughput (texts -> experts, embedding
included, and on precomputed SVD vectors), next to ``sklearn.cluster.KMeans(n_clusters=k,
n_init=1, random_state=0)`` fitted on the same SVD vectors. Balance: largest cluster / mean.
Prints measured numbers only.
"""

import argparse
import importlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from xelm_cli.api import Document, UsageError, get_registry, iter_documents, sample_per_language

LANGUAGES = ["ar", "bg", "de", "el", "en", "es", "fr", "hi", "ja", "ko"]
LANGUAGES += ["ru", "sw", "tr", "ur", "vi", "zh", "az", "he", "pl", "sv"]
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

COLD_SCRIPT = """
import importlib, json, sys, time
started = time.perf_counter()
from xelm_cli.api import get_registry
module = importlib.import_module(get_registry().get("clusterer", "typology").obj.__module__)
tree, _ = module.allocation_members(sys.argv[1].split(","), module.DEFAULT_FEATURES, True)
print(json.dumps({"seconds": time.perf_counter() - started, "levels": sorted(tree.levels)}))
"""


def typology_module() -> ModuleType:
    registration = get_registry().get("clusterer", "typology")
    return importlib.import_module(registration.obj.__module__)


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def typology_tree(module: ModuleType) -> Any:
    """Distances and the merge tree (what `xelm cluster typology` computes before -k)."""
    tree, _ = module.allocation_members(LANGUAGES, module.DEFAULT_FEATURES, True)
    return tree


def tree_groups(tree: Any, k: int) -> list[list[str]] | str:
    """The k groups, or why the tree has none (the rounds halve: 20 -> 10 -> 5 -> 3 ...)."""
    try:
        groups: list[list[str]] = tree.groups(k)
    except UsageError as exc:
        return str(exc)
    return groups


def bench_typology(k: int) -> dict[str, Any]:
    command = [sys.executable, "-c", COLD_SCRIPT, ",".join(LANGUAGES), str(k)]
    cold = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    module = typology_module()
    first, _ = timed(lambda: typology_tree(module))
    cached, tree = timed(lambda: typology_tree(module))
    return {
        "languages": len(LANGUAGES),
        "k": k,
        "cold_s": round(cold["seconds"], 4),
        "first_in_process_s": round(first, 4),
        "cached_s": round(cached, 6),
        "levels": sorted(tree.levels),
        "groups": tree_groups(tree, k),
    }


def balance(labels: NDArray[np.int64], k: int) -> dict[str, Any]:
    sizes = np.bincount(labels, minlength=k)
    return {"sizes": sizes.tolist(), "max_over_mean": round(float(sizes.max() / sizes.mean()), 4)}


def per_second(count: int, seconds: float) -> float:
    return round(count / seconds, 1)


def default_cap() -> int:
    """The clusterer's own default of --max-docs-per-language, from its declared options."""
    return int(get_registry().get("clusterer", "tfidf").obj.Options().max_docs_per_language)


def bench_tfidf(corpus: Path, k: int, cap: int) -> dict[str, Any]:
    from xelm_tfidf.embedder import TfidfSettings
    from xelm_tfidf.fitting import FitResult, fit_sample
    from xelm_tfidf.kmeans import KMeansSettings

    kmeans = KMeansSettings(k=k)

    def sample_and_fit() -> tuple[list[Document], FitResult]:
        """The training sample (read from the corpus) and the model fitted on it."""
        documents = sample_per_language(iter_documents(corpus), cap, kmeans.seed)
        fitted = fit_sample(documents, kmeans=kmeans, tfidf=TfidfSettings(), max_per_language=cap)
        return documents, fitted

    fit_s, (documents, result) = timed(sample_and_fit)
    model = result.model
    assign_s, labels = timed(lambda: model.assign(documents))
    points = model.embed([d.text for d in documents])
    vectors_s, _ = timed(lambda: model.assign_points(points))
    return {
        "documents": len(documents),
        "fit_s": round(fit_s, 2),
        "assign_docs_per_s": per_second(len(documents), assign_s),
        "assign_vectors_per_s": per_second(len(documents), vectors_s),
        "balance": balance(labels, k),
        "sklearn_kmeans": bench_sklearn(points, k),
    }


def bench_sklearn(points: NDArray[np.float64], k: int) -> dict[str, Any]:
    from sklearn.cluster import KMeans

    kmeans = KMeans(n_clusters=k, n_init=1, random_state=0)
    fit_s, _ = timed(lambda: kmeans.fit(points))
    predict_s, labels = timed(lambda: kmeans.predict(points))
    return {
        "fit_s_on_vectors": round(fit_s, 2),
        "predict_vectors_per_s": per_second(len(points), predict_s),
        "balance": balance(np.asarray(labels, dtype=np.int64), k),
    }


def print_text(report: dict[str, Any]) -> None:
    typ, tf = report["typology"], report["tfidf"]
    sk = tf["sklearn_kmeans"]
    print(f"typology, {typ['languages']} languages, k={typ['k']}:")
    print(f"  cold (fresh process) {typ['cold_s']:.3f} s; first in this process ", end="")
    print(f"{typ['first_in_process_s']:.3f} s; cached {typ['cached_s'] * 1000:.2f} ms")
    groups = typ["groups"]
    shown = groups if isinstance(groups, str) else " | ".join(",".join(g) for g in groups)
    print(f"  tree levels {typ['levels']}; groups at k={typ['k']}: {shown}")
    print(f"tfidf, {tf['documents']} documents (cap {report['cap']}/language), k={report['k']}:")
    print(
        f"  xelm balanced: fit {tf['fit_s']} s (reading + embedding + k-means + offsets); ", end=""
    )
    print(f"assign {tf['assign_docs_per_s']:,.0f} docs/s (texts), ", end="")
    print(f"{tf['assign_vectors_per_s']:,.0f} vectors/s")
    print(f"    sizes {tf['balance']['sizes']}, max/mean {tf['balance']['max_over_mean']}")
    print(f"  sklearn KMeans (same SVD vectors): fit {sk['fit_s_on_vectors']} s; ", end="")
    print(f"predict {sk['predict_vectors_per_s']:,.0f} vectors/s")
    print(f"    sizes {sk['balance']['sizes']}, max/mean {sk['balance']['max_over_mean']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", type=int, default=4, help="Clusters (a power of two <= 16).")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared/data folder.")
    parser.add_argument("--max-docs-per-language", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="Print machine-readable JSON.")
    args = parser.parse_args()
    cap = args.max_docs_per_language or default_cap()
    report = {
        "k": args.k,
        "cap": cap,
        "typology": bench_typology(args.k),
        "tfidf": bench_tfidf(args.data / "corpus" / "train", args.k, cap),
    }
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print_text(report)


if __name__ == "__main__":
    main()
