"""The documents one expert of an allocation gets: what ``xelm data prepare --allocation A
--expert I`` keeps, by the assigner of the clusterer that wrote the allocation."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from xelm_cli.cluster.allocation import Allocation, as_allocation
from xelm_cli.common.errors import UsageError
from xelm_cli.data.corpus import Document
from xelm_cli.data.documents import SEPARATOR, group_positions
from xelm_cli.plugin.contracts import Assigner
from xelm_cli.plugin.host import get_registry
from xelm_cli.plugin.registry import Registration


@dataclass(frozen=True)
class ExpertDocuments:
    """Expert ``index`` of ``allocation``, with the assigner that sends a document to it."""

    allocation: Allocation
    index: int
    assigner: Assigner

    @property
    def reference(self) -> dict[str, Any]:
        """The expert as a bundle's manifest and a shards manifest record it."""
        return self.allocation.reference(self.index)

    @property
    def languages(self) -> list[str]:
        return list(self.allocation.experts[self.index])


def assigned_experts(
    assigner: Assigner, texts: Sequence[str], languages: Sequence[str | None]
) -> NDArray[np.int64]:
    """The expert ``assigner`` sends each document (its text and language) to. When the
    assigner was fitted on joined records (``Assigner.document_bytes``), consecutive documents
    of one language here are joined as the fit joined them and go together."""
    sizes = ((lang, len(text.encode())) for text, lang in zip(texts, languages, strict=True))
    joined = group_positions(sizes, assigner.document_bytes, len(SEPARATOR.encode()))
    groups = [positions for _, positions in joined]
    documents = [
        Document(SEPARATOR.join(texts[i] for i in group), languages[group[0]]) for group in groups
    ]
    experts = np.full(len(texts), -1, dtype=np.int64)
    if documents:
        for group, assigned in zip(groups, np.asarray(assigner.assign(documents)), strict=True):
            experts[group] = assigned
    return experts


def expert_documents(allocation: Allocation | str | Path, expert: int) -> ExpertDocuments:
    """Expert ``expert`` of ``allocation`` (an :class:`Allocation` or its path); an index out of
    range, or an allocation whose clusterer is not installed, is a one-line UsageError."""
    alloc = as_allocation(allocation)
    alloc.reference(expert)  # refuses an index out of range
    return ExpertDocuments(alloc, expert, writer_of(alloc).obj.assigner(alloc))


def writer_of(alloc: Allocation) -> Registration:
    """The registration of the clusterer that wrote ``alloc``: :func:`registration_of`."""
    return registration_of(alloc.clusterer, alloc.provenance)


def registration_of(clusterer: str, provenance: Mapping[str, Any] | None) -> Registration:
    """The installed clusterer named ``clusterer`` whose plugin ``provenance`` records (an
    allocation's, or an allocation reference's ``{name, plugin, distribution, version}``):
    qualified as ``DIST:NAME`` or ``PLUGIN:NAME``, which tells apart a name several plugins
    register. Without provenance, or when its plugin is not installed now, the name decides."""
    registry = get_registry()
    recorded = provenance or {}
    qualifier = recorded.get("distribution") or recorded.get("plugin")
    if qualifier and recorded.get("name") == clusterer:
        try:
            return registry.get("clusterer", f"{qualifier}:{clusterer}")
        except UsageError:
            pass  # not installed now: the name decides
    return registry.get("clusterer", clusterer)


def every_expert(allocation: Allocation | str | Path) -> tuple[ExpertDocuments, ...]:
    """``expert_documents`` of each expert of ``allocation``, in order, sharing one assigner."""
    first = expert_documents(allocation, 0)
    return tuple(replace(first, index=index) for index in range(first.allocation.k))


def allocation_and_expert(
    allocation: Allocation | str | Path | None, expert: int | None
) -> ExpertDocuments | None:
    """``expert_documents`` when both are given, None when neither; one alone is refused."""
    if allocation is None and expert is None:
        return None
    if allocation is None or expert is None:
        raise UsageError(
            "--allocation and --expert go together: the allocation's expert whose documents "
            "to keep (e.g. --allocation alloc-tfidf/ --expert 0)"
        )
    return expert_documents(allocation, expert)


def assigns_documents(clusterer: str | Allocation | Mapping[str, Any]) -> bool:
    """Whether an installed clusterer assigns documents rather than languages
    (``Clusterer.assigns_documents``): ``clusterer`` names it, or is an allocation it wrote
    (:func:`writer_of`), or an allocation reference (a bundle manifest's ``allocation``, whose
    ``provenance`` qualifies its name). One that is not installed is the registry's one-line
    UsageError: what it would say cannot be guessed, and a wrong guess trains an expert on
    documents that are not its own."""
    if isinstance(clusterer, Allocation):
        found = writer_of(clusterer)
    elif isinstance(clusterer, Mapping):
        provenance = clusterer.get("provenance")
        found = registration_of(
            str(clusterer.get("clusterer")),
            provenance if isinstance(provenance, Mapping) else None,
        )
    else:
        found = get_registry().get("clusterer", clusterer)
    return bool(getattr(found.obj, "assigns_documents", False))
