"""The family tree of a set of bundles, rebuilt from their manifests alone.

Each manifest's lineage lists the steps from the first bundle of its line to itself; step i's
first parent is the bundle step i-1 produced. Ancestors that are not in the set still appear
(by id and digest) so that two experts branched from one seed show a common root.
"""

from dataclasses import dataclass, field
from typing import Any

from xelm_cli.bundle.store import Bundle

UNTRAINED = ("branch", "hmr-branch")  # lineage steps that copy weights without training
# the relation of a parent known only by reference (a merge's parents after the first, not in
# the set): its own steps are in its own manifest, which no other bundle copies
UNKNOWN_RELATION = "unknown"


def ancestors(bundle: Bundle) -> set[str]:
    """Digests of the bundles on this bundle's line: step i's first parent for every i >= 1."""
    return {step["parents"][0]["digest"] for step in bundle.manifest.lineage[1:]}


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


def lineage_graph(bundles: list[Bundle]) -> dict[str, Node]:
    """Nodes by digest, each with the digests of its parents."""
    nodes: dict[str, Node] = {}
    for bundle in bundles:
        steps = bundle.manifest.lineage
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
    return [n for n in nodes.values() if not any(p in nodes for p in n.parents)]


def children(nodes: dict[str, Node]) -> dict[str, list[Node]]:
    result: dict[str, list[Node]] = {d: [] for d in nodes}
    for node in nodes.values():
        for parent in node.parents:
            if parent in result:
                result[parent].append(node)
    return result


def graph_json(nodes: dict[str, Node]) -> dict[str, Any]:
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
