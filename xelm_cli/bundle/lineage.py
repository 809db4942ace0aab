"""The family tree of a set of bundles, rebuilt from their manifests alone.

Each manifest's lineage lists the steps from the first bundle of its line to itself; step i's
first parent is the bundle step i-1 produced. Ancestors that are not in the set still appear
(by id and digest) so that two experts branched from one seed show a common root. A manifest
that breaks the spec's rules (a second ``init`` step has no parent to follow) is refused.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xelm_cli.bundle.manifest import first_of
from xelm_cli.bundle.store import Bundle, rule_problems
from xelm_cli.common.errors import FormatError

UNTRAINED = ("branch", "hmr-branch")  # lineage steps that copy weights without training
# the relation of a parent known only by reference (a merge's parents after the first, not in
# the set): its own steps are in its own manifest, which no other bundle copies
UNKNOWN_RELATION = "unknown"


def lineage_steps(bundle: Bundle) -> list[dict[str, Any]]:
    """The bundle's lineage, refused in one line (FormatError) when its manifest breaks the
    spec's rules: ``Bundle.read`` checks only the schema, which lets a later step be an
    ``init`` without parents, and such a lineage is no chain to follow."""
    problems = rule_problems(bundle.manifest.raw)
    if problems:
        raise FormatError(
            f"{bundle.path}: {first_of(problems)}; run `xelm bundle verify {bundle.path}`"
        )
    return bundle.manifest.lineage


def ancestors(bundle: Bundle) -> set[str]:
    """Digests of the bundles on this bundle's line: step i's first parent for every i >= 1."""
    return {step["parents"][0]["digest"] for step in lineage_steps(bundle)[1:]}


@dataclass
class Node:
    digest: str
    id: str
    relation: str
    name: str = ""
    path: str = ""
    role: str = ""
    languages: list[str] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)  # digests

    @property
    def present(self) -> bool:
        return bool(self.path)


def lineage_graph(bundles: Sequence[Bundle | str | Path]) -> dict[str, Node]:
    """Nodes by digest, each with the digests of its parents (FormatError, in one line, for a
    bundle whose manifest breaks the spec's rules: :func:`lineage_steps`). ``bundles``: opened
    bundles or their directories."""
    nodes: dict[str, Node] = {}
    for bundle in map(Bundle.of, bundles):
        steps = lineage_steps(bundle)
        for i in range(1, len(steps)):
            # the bundle step i-1 produced is step i's first parent
            ref = steps[i]["parents"][0]
            ancestor = nodes.setdefault(
                ref["digest"], Node(ref["digest"], ref["id"], steps[i - 1]["relation"])
            )
            ancestor.relation = steps[i - 1]["relation"]  # (first met as a merge's parent)
            if not ancestor.parents:
                ancestor.parents = [p["digest"] for p in steps[i - 1]["parents"]]
        node = nodes.setdefault(
            bundle.digest, Node(bundle.digest, bundle.id, steps[-1]["relation"])
        )
        node.relation = steps[-1]["relation"]
        node.name, node.path, node.role = bundle.name, str(bundle.path), bundle.manifest.role
        node.languages = bundle.languages
        node.parents = [p["digest"] for p in steps[-1]["parents"]]
        for step in steps:  # parents of multi-parent steps (average) that we know only by ref
            for ref in step["parents"]:
                nodes.setdefault(ref["digest"], Node(ref["digest"], ref["id"], UNKNOWN_RELATION))
    return nodes


def roots(nodes: dict[str, Node]) -> list[Node]:
    """Nodes without a parent in ``nodes``, then, so that every node is below one, a node of
    each part of the graph they do not reach: a cycle of parents, which only manifests that
    name a false parent digest can make (digests cannot point back at their children)."""
    found = [n for n in nodes.values() if not any(p in nodes for p in n.parents)]
    kids, reached = children(nodes), set[str]()
    for root in found:
        _reach(root, kids, reached)
    for node in nodes.values():
        if node.digest not in reached:
            found.append(node)
            _reach(node, kids, reached)
    return found


def _reach(start: Node, kids: dict[str, list[Node]], reached: set[str]) -> None:
    """Add to ``reached`` the digests of ``start`` and every node below it."""
    todo = [start]
    while todo:
        node = todo.pop()
        if node.digest not in reached:
            reached.add(node.digest)
            todo += kids[node.digest]


def children(nodes: dict[str, Node]) -> dict[str, list[Node]]:
    result: dict[str, list[Node]] = {d: [] for d in nodes}
    for node in nodes.values():
        for parent in node.parents:
            if parent in result:
                result[parent].append(node)
    return result


def graph_json(nodes: dict[str, Node]) -> dict[str, Any]:
    """What ``xelm bundle lineage --json`` prints of :func:`lineage_graph`'s nodes: ``nodes``
    (each bundle's digest, id, name, path, role, languages and the relation that made it) and
    ``edges`` (parent digest to child digest, with that relation)."""
    return {
        "nodes": [
            {
                "digest": n.digest,
                "id": n.id,
                "name": n.name,
                "path": n.path or None,
                "role": n.role or None,
                "languages": n.languages,
                "relation": n.relation,
            }
            for n in nodes.values()
        ],
        "edges": [
            {"parent": p, "child": n.digest, "relation": n.relation}
            for n in nodes.values()
            for p in n.parents
        ],
    }
