"""xelm's typology clusterer: languages -> experts by URIEL typological distance.

The reference algorithm (xelm-method.md section 3): lang2vec ``syntax_average`` features with
``minimal=True``; cosine distance over the features both languages have; single linkage between
clusters; each round sorts every pair of clusters by distance, merges the closest pair, drops
every pair touching either member and repeats until no pair is left, so each round halves the
number of clusters (an odd one out passes to the next round alone). The rounds form a balanced
binary tree; the groups at the level with k clusters are the k experts. The allocation members
it writes are specified in spec/allocation-typology.md.

Registered like a third party's plugin; it imports nothing from xelm but ``xelm_cli.api``.
"""

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from xelm_cli.api import (
    Allocation,
    Assigner,
    Clusterer,
    ClusterRequest,
    Document,
    Register,
    UsageError,
    distance_matrix,
    feature_set_name,
    hookimpl,
    option,
    uriel_code,
    write_allocation,
)

NAME = "typology"
DEFAULT_FEATURES = "syntax_average"
NO_LANGUAGE = "(no language)"  # how a document without a language label is named


@dataclass(frozen=True)
class _Cluster:
    node: int  # scipy linkage id: leaves 0..n-1, the j-th merge n+j
    members: tuple[int, ...]  # leaf ids, in tree order


@dataclass(frozen=True)
class TypologyTree:
    """The merge tree of :func:`build_tree`.

    ``linkage`` follows scipy.cluster.hierarchy: rows ``[a, b, distance, size]``, the j-th row
    creating node ``len(leaves) + j``, listed round by round down to the root. ``levels`` maps
    a number of groups to the groups (lists of languages) after the round that left that many,
    in the order the groups were formed.
    """

    leaves: list[str]
    linkage: list[tuple[int, int, float, int]]
    levels: dict[int, list[list[str]]]

    def groups(self, k: int) -> list[list[str]]:
        """The k groups of the level with k clusters (k = number of leaves: one each)."""
        if k == len(self.leaves):
            return [[lang] for lang in self.leaves]
        if k not in self.levels:
            sizes = ", ".join(str(n) for n in [len(self.leaves), *self.levels])
            raise UsageError(
                f"the tree of {len(self.leaves)} languages has no level with k={k} groups "
                f"(levels: {sizes}); pick one of those or change --langs"
            )
        return self.levels[k]


def _single_linkage(a: _Cluster, b: _Cluster, distances: NDArray[np.float64]) -> float:
    return float(distances[np.ix_(a.members, b.members)].min())


def _merge_round(
    clusters: list[_Cluster], distances: NDArray[np.float64], next_node: int
) -> tuple[list[_Cluster], list[tuple[int, int, float, int]]]:
    """One round: merge closest pairs greedily; the merged first, any odd one out last."""
    pairs = sorted(
        (_single_linkage(clusters[i], clusters[j], distances), i, j)
        for i, j in itertools.combinations(range(len(clusters)), 2)
    )
    merged: list[_Cluster] = []
    rows: list[tuple[int, int, float, int]] = []
    used: set[int] = set()
    for distance, i, j in pairs:
        if i in used or j in used:
            continue
        used |= {i, j}
        a, b = clusters[i], clusters[j]
        rows.append((a.node, b.node, distance, len(a.members) + len(b.members)))
        merged.append(_Cluster(next_node + len(rows) - 1, a.members + b.members))
    alone = [c for i, c in enumerate(clusters) if i not in used]
    return merged + alone, rows


def build_tree(languages: Sequence[str], distances: NDArray[np.float64]) -> TypologyTree:
    """Cluster ``languages`` (distance matrix in the same order) round by round to one root.

    Ties between pairs at equal distance go to the pair whose clusters come first in the
    previous round's order (the merged ones as formed, the one passed alone last; the leaves
    in input order in the first round).
    """
    clusters = [_Cluster(i, (i,)) for i in range(len(languages))]
    linkage: list[tuple[int, int, float, int]] = []
    levels: dict[int, list[list[str]]] = {}
    while len(clusters) > 1:
        clusters, rows = _merge_round(clusters, distances, len(languages) + len(linkage))
        linkage += rows
        levels[len(clusters)] = [[languages[m] for m in c.members] for c in clusters]
    return TypologyTree(list(languages), linkage, levels)


def _check_k(k: int, n_languages: int) -> None:
    """k within 1..n; which k the tree has a level for (a power of two for 16 languages, 6, 3,
    2 and 1 for six) is :meth:`TypologyTree.groups`' to say, naming the levels."""
    if k < 1 or k > n_languages:
        raise UsageError(
            f"-k must be between 1 and the number of languages ({n_languages}), got {k}"
        )


def allocation_members(
    languages: list[str], features: str, minimal: bool
) -> tuple[TypologyTree, dict[str, Any]]:
    """The tree and the allocation members (spec/allocation-typology.md) for ``languages``."""
    distances = distance_matrix(languages, features, minimal)
    tree = build_tree(languages, distances)
    members = {
        "features": features,
        "minimal": minimal,
        "uriel_codes": {lang: uriel_code(lang, features) for lang in languages},
        "distances": {"languages": languages, "matrix": distances.tolist()},
        "tree": {"leaves": tree.leaves, "linkage": [list(row) for row in tree.linkage]},
        "levels": {str(k): groups for k, groups in tree.levels.items()},
    }
    return tree, members


class LanguageAssigner(Assigner):
    """Sends each document to the expert whose languages contain its language label; a
    language listed under two experts (``of`` names the allocation) is a one-line
    UsageError, since all its documents would go to one of them."""

    def __init__(self, experts: Sequence[Sequence[str]], *, of: str = "the allocation") -> None:
        self.k = len(experts)
        self.expert_of: dict[str, int] = {}
        for index, langs in enumerate(experts):
            for lang in langs:
                first = self.expert_of.setdefault(lang, index)
                if first != index:
                    raise UsageError(
                        f"language {lang} is listed under experts {first} and {index} of {of}, "
                        "but a language's documents all go to one expert: list it under one "
                        "(or cluster again with xelm cluster typology)"
                    )

    def assign(self, documents: Sequence[Document]) -> NDArray[np.int64]:
        uncovered = sorted(
            {d.language or NO_LANGUAGE for d in documents if d.language not in self.expert_of}
        )
        if uncovered:
            raise UsageError(self._uncovered_message(uncovered))
        return np.array([self.expert_of[str(d.language)] for d in documents], dtype=np.int64)

    def _uncovered_message(self, uncovered: list[str]) -> str:
        """The one-line refusal, with the ways out: keep to the covered languages, re-cluster
        with the new ones (at the same k), label the documents that have no language."""
        covered = list(self.expert_of)
        labelled = [language for language in uncovered if language != NO_LANGUAGE]
        ways = [f"keep to the covered languages (--langs {','.join(covered)})"]
        if labelled:
            ways.append(
                f"re-cluster with {'it' if len(labelled) == 1 else 'them'} (xelm cluster typology "
                f"--langs {','.join(covered + labelled)} -k {self.k} -o ALLOCATION)"
            )
        if NO_LANGUAGE in uncovered:
            ways.append("give every document its language")
        return (
            f"no expert covers language(s) {', '.join(uncovered)} (covered: "
            f"{', '.join(covered)}); {', '.join(ways[:-1])} or {ways[-1]}"
        )


class TypologyClusterer(Clusterer):
    """Group languages into k experts by typological distance (URIEL, single linkage).

    Each round merges the closest pairs of clusters, halving their number, so the groups form
    a balanced tree; the allocation records the tree, every level and the distances. Experts
    are numbered in the order their groups were formed (closest first). Needs --langs; no
    corpus.

    Example: xelm cluster typology --langs ar,bg,de,el,en,es,fr,hi -k 4 -o alloc.json
    """

    name = NAME

    @dataclass(frozen=True)
    class Options:
        features: str = option(
            DEFAULT_FEATURES,
            help="lang2vec feature set, e.g. syntax_average, syntax_knn, phonology_average, "
            "fam; aliases syntax, phonology, inventory, family.",
        )
        minimal: bool = option(True, help="Drop features that do not vary across --langs.")

    def fit(self, request: ClusterRequest) -> Allocation:
        options = self.options_of(request)
        languages = list(request.languages)
        if not languages:
            raise UsageError(
                "the typology clusterer needs the languages to group: pass --langs "
                "(languages= from Python), e.g. --langs ar,bg,de,en"
            )
        if request.data is not None:  # it would be ignored: say so rather than fit without it
            raise UsageError(
                f"the typology clusterer reads no DATA (it groups the languages of --langs): "
                f"drop {request.data}"
            )
        _check_k(request.k, len(languages))
        canonical = feature_set_name(options.features)
        tree, members = allocation_members(languages, canonical, options.minimal)
        return write_allocation(
            request.output,
            clusterer=NAME,
            experts=tree.groups(request.k),
            members=members,
            language_shares=None,
            overwrite=request.overwrite,
        )

    @classmethod
    def assigner(cls, allocation: Allocation) -> Assigner:
        if allocation.clusterer != NAME:
            raise UsageError(
                f"{allocation.path} was written by clusterer {allocation.clusterer!r}, not {NAME!r}"
            )
        return LanguageAssigner(allocation.experts, of=str(allocation.path))


@hookimpl
def register_clusterers(register: Register) -> None:
    register(NAME, TypologyClusterer)
