"""The ``tfidf`` router: c-BTM routing by distance to the TF-IDF centroids of an allocation.

Equations and options in spec/allocation-tfidf.md, section 5.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xelm_cli.api import (
    Allocation,
    Document,
    ExpertInfo,
    PreRouter,
    UsageError,
    Weights,
    build_options,
    keep_top_k,
    option,
    read_allocation,
    softmax,
)

from .kmeans import squared_distances
from .state import TfidfModel, load_model

DISTANCES = ("squared", "squared-twice")


class TfidfRouter(PreRouter):
    """c-BTM routing: softmax of the distances of a text's TF-IDF vector to the centroids.

    The centroids are those of the TF-IDF allocation the experts were trained from.

    For a text with embedding v (spec/allocation-tfidf.md section 3) and D_i = ||v - c_i||^2,
    the weight of cluster i is softmax_i(-D_i / T) (``distance="squared"``, the c-BTM
    equation softmax(-d^2 / T)) or softmax_i(-D_i^2 / T) (``distance="squared-twice"``, the
    authors' reference code, which squares an already squared distance). D_i includes the
    assignment offset o_i of a balanced allocation (``offsets``, default true): a text is
    routed as the experts' training documents were assigned, argmin_i (D_i + o_i); a nearest
    allocation's offsets are 0, so the reference's routing is unchanged.

    Options (``--router-arg KEY=VALUE``):

    - ``allocation``: the TF-IDF allocation (directory or its allocation.json) written by
      ``xelm cluster tfidf``; an allocation of another clusterer is refused.
    - ``temperature``: T > 0 (0.1 in c-BTM); smaller is closer to top-1.
    - ``top_k``: keep the k largest cluster weights of each text, zero the rest and
      renormalise; experts with zero weight do not run. ``top_k`` counts clusters: experts
      sharing a cluster all keep their share.
    - ``stride``: None routes each document once on its whole text; an integer n routes the
      text *before* target tokens 0, n, 2n, ... (prefix routing, done by the ensemble runner,
      which calls ``route`` on the prefixes), so the first n tokens are routed on the empty
      text. A text with no term in the vocabulary (the empty prefix, a script the allocation
      never saw) embeds to the zero vector, whose distances ||c_i||^2 say nothing about the
      text; such a text gets equal weights on every cluster in the ensemble (``top_k`` does
      not apply to it: there is no ranking to cut).
    - ``experts_in_order``: map ensemble expert e to cluster e (needs exactly k experts)
      instead of reading the experts' allocation references.
    - ``offsets``: add the allocation's assignment offsets to the distances (true, default:
      the rule that split the training documents); false: the plain distances, so a balanced
      allocation's router prefers the nearest centroid where training used another.

    Experts are mapped to clusters by their bundles' allocation reference
    (``ExpertInfo.allocation``): expert e gets cluster ``allocation["expert"]`` when its
    ``digest`` is this allocation's digest. Several experts of one cluster share its weight
    equally. Clusters without an expert in the ensemble are dropped: the softmax runs over the
    clusters that have one (the same as renormalising the full softmax without them).
    """

    name = "tfidf"
    routes_uncovered_languages = True  # it weighs a text by its terms, whatever its language

    @dataclass(frozen=True, kw_only=True)
    class Options:
        allocation: Path = option(
            help="The TF-IDF allocation (directory or its allocation.json) written by xelm "
            "cluster tfidf.",
        )
        temperature: float = option(
            0.1, help="Softmax temperature T > 0 (0.1 in c-BTM); smaller is closer to top-1."
        )
        top_k: int | None = option(
            None,
            help="Keep the K largest cluster weights of each text and renormalise; experts "
            "with zero weight do not run.",
            minimum=1,
        )
        stride: int | None = option(
            None,
            help="Route the text before every N-th target token (prefix routing); none "
            "routes each document once on its whole text.",
            minimum=1,
        )
        distance: str = option(
            "squared",
            help="squared: softmax(-D/T) as in c-BTM; squared-twice: softmax(-D^2/T) as the "
            "authors' code.",
            choices=DISTANCES,
        )
        experts_in_order: bool = option(
            False,
            help="Map ensemble expert e to cluster e (needs exactly k experts) instead of "
            "reading the experts' allocation references.",
        )
        offsets: bool = option(
            True,
            help="Add the allocation's assignment offsets to the distances, routing as the "
            "training documents were assigned (false: plain distances).",
        )

    def __init__(self, **options: Any) -> None:
        self.options = build_options(
            type(self), options, label=f"router {self.name!r}", via="--router-arg"
        )
        temperature = self.options.temperature
        if not (math.isfinite(temperature) and temperature > 0):
            raise UsageError(
                f"tfidf router temperature must be positive and finite, got {temperature!r}"
            )
        self.temperature = temperature
        self.top_k = self.options.top_k
        self.stride = self.options.stride
        self.distance = self.options.distance
        self.experts_in_order = self.options.experts_in_order
        self.offsets = self.options.offsets
        self.allocation: Allocation = read_allocation(self.options.allocation)
        if self.allocation.clusterer != "tfidf":
            raise UsageError(
                f"the tfidf router needs an allocation of the 'tfidf' clusterer, but "
                f"{self.allocation.path} was written by {self.allocation.clusterer!r}; "
                "pass one written by xelm cluster tfidf"
            )
        self._model: TfidfModel | None = None

    @property
    def model(self) -> TfidfModel:
        """The fitted embedder and centroids, loaded on first use."""
        if self._model is None:
            self._model = load_model(self.allocation)
        return self._model

    def clusters_of(self, experts: Sequence[ExpertInfo]) -> list[int]:
        """The cluster of each expert, in ensemble order."""
        k = self.allocation.k
        if self.experts_in_order:
            if len(experts) != k:
                raise UsageError(
                    f"experts_in_order maps ensemble order to cluster order, so it needs the "
                    f"{k} experts of {self.allocation.path}, but the ensemble has {len(experts)}"
                )
            return list(range(k))
        clusters = []
        for index, expert in enumerate(experts):
            reference = expert.allocation or {}
            cluster = reference.get("expert")
            if reference.get("digest") != self.allocation.digest:
                raise UsageError(
                    f"expert {index} ({expert.name}, {expert.id}) was not trained from "
                    f"allocation {self.allocation.path} (its bundle has no reference with digest "
                    f"{self.allocation.digest}): train the experts from this allocation, or pass "
                    f"experts_in_order=true to map ensemble order to cluster order (needs "
                    f"exactly {k} experts)"
                )
            if not isinstance(cluster, int) or isinstance(cluster, bool) or not 0 <= cluster < k:
                raise UsageError(
                    f"expert {index} ({expert.name}, {expert.id}) refers to cluster {cluster!r} "
                    f"of {self.allocation.path}, which has clusters 0..{k - 1}"
                )
            clusters.append(cluster)
        return clusters

    def cluster_weights(self, texts: Sequence[str], clusters: Sequence[int]) -> Weights:
        """(len(texts), len(clusters)) weights over the given clusters (before top_k)."""
        model = self.model
        points = model.embed(texts)
        distances = squared_distances(points, model.centroids)
        if self.offsets:
            assert model.offsets is not None  # zeros for a nearest allocation
            distances = distances + model.offsets
        distances = distances[:, list(clusters)]
        if self.distance == "squared-twice":
            distances = distances**2
        weights = softmax(-distances / self.temperature, axis=1)
        weights = keep_top_k(weights, self.top_k, axis=1)
        no_terms = ~points.any(axis=1)
        weights[no_terms] = 1.0 / len(clusters)
        return weights

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        if not experts:
            raise UsageError("the tfidf router needs at least one expert")
        of_expert = self.clusters_of(experts)
        present = sorted(set(of_expert))
        if not documents:
            return np.zeros((0, len(experts)))
        weights = self.cluster_weights([d.text for d in documents], present)
        column = {cluster: i for i, cluster in enumerate(present)}
        sharing = np.bincount(of_expert, minlength=self.allocation.k)
        result = np.stack(
            [weights[:, column[cluster]] / sharing[cluster] for cluster in of_expert], axis=1
        )
        return np.asarray(result, dtype=np.float64)
