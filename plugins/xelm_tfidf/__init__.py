"""xelm's balanced TF-IDF clusterer (c-BTM style), registered like any third-party plugin.

``xelm cluster tfidf CORPUS -k 4 -o DIR`` embeds documents (TF-IDF with number normalisation,
multilingual stop words and optional Chinese/Japanese/Thai segmentation -> truncated SVD -> L2),
fits balanced k-means and writes a portable allocation (arrays + JSON, no pickles). The fitted
state is specified in spec/allocation-tfidf.md; ``TfidfClusterer.assigner(allocation)`` returns
a :class:`TfidfModel` with ``assign(documents)`` and ``distances(texts)``.
It imports nothing from xelm but ``xelm_cli.api``.
"""

from xelm_cli.api import Register, hookimpl

from .clusterer import TfidfClusterer
from .state import TfidfModel

__all__ = ["TfidfClusterer", "TfidfModel"]


@hookimpl
def register_clusterers(register: Register) -> None:
    register("tfidf", TfidfClusterer)
