"""``xelm cluster tfidf`` and the registered clusterer class."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from xelm_cli.api import Allocation, Clusterer, UsageError, iter_documents, parse_language_list

from .analyzer import SEGMENTERS
from .embedder import TfidfSettings
from .fitting import fit
from .kmeans import ASSIGNMENTS, SOLVERS, KMeansSettings
from .state import TfidfModel, load_model, save_model


def _check_choice(value: str, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        raise UsageError(f"{option} must be one of {', '.join(choices)}, not {value!r}")
    return value


def cluster_tfidf(
    corpus: Annotated[
        Path, typer.Argument(help="Corpus: .jsonl[.zst]/.txt files or a directory of them.")
    ],
    out: Annotated[Path, typer.Option("--output", "-o", help="Allocation directory to write.")],
    k: Annotated[int, typer.Option("-k", help="Number of experts (clusters).", min=1)] = 4,
    langs: Annotated[
        str | None, typer.Option(help="Only documents in these languages, e.g. ar,bg,de.")
    ] = None,
    max_docs_per_language: Annotated[
        int,
        typer.Option(help="Fit on at most this many documents per language (0: all).", min=0),
    ] = 2000,
    segment: Annotated[
        str, typer.Option(help="cjk: cut Chinese/Japanese/Thai into character bigrams; none.")
    ] = "cjk",
    max_features: Annotated[int, typer.Option(help="TF-IDF vocabulary size.", min=2)] = 500_000,
    components: Annotated[int, typer.Option(help="SVD dimensions.", min=1)] = 100,
    batch_size: Annotated[int, typer.Option(help="Documents per k-means batch.", min=1)] = 4096,
    solver: Annotated[
        str, typer.Option(help="Balanced assignment: auto, auction or lsa (exact, small batches).")
    ] = "auto",
    assignment: Annotated[
        str,
        typer.Option(
            help="How documents go to experts: balanced (nearest centroid after per-expert "
            "offsets that split the training documents equally) or nearest (the reference's "
            "plain nearest centroid)."
        ),
    ] = "balanced",
    seed: Annotated[int, typer.Option(help="Random seed (sampling, SVD, k-means).")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Cluster documents into k equal-size groups by TF-IDF (c-BTM balanced k-means).

    Writes an allocation directory (allocation.json + arrays.safetensors, no pickles) that
    assigns any text to an expert: by default the nearest centroid after per-expert offsets
    that split the training documents into equal groups (--assignment balanced); the
    reference's plain nearest centroid with --assignment nearest. The sizes printed are those
    the saved allocation gives the training documents.

    Example: xelm cluster tfidf ../shared/data/corpus/train --langs ar,en,ru,zh -k 4 -o alloc/
    """
    _check_choice(segment, SEGMENTERS, "--segment")
    _check_choice(solver, SOLVERS, "--solver")
    _check_choice(assignment, ASSIGNMENTS, "--assignment")
    if out.exists() and not force:
        raise UsageError(f"output {out} already exists; choose another path or pass --force")
    documents = iter_documents(corpus)
    if langs:
        wanted = set(parse_language_list(langs))
        documents = (d for d in documents if d.language in wanted)
    result = fit(
        documents,
        kmeans=KMeansSettings(k=k, batch_size=batch_size, seed=seed, solver=solver),
        tfidf=TfidfSettings(max_features=max_features, n_components=components, seed=seed),
        segment=segment,
        max_per_language=max_docs_per_language or None,
        assignment=assignment,
    )
    allocation = save_model(
        out, result.model, shares=result.shares, training=result.training, overwrite=force
    )
    summary = {
        "path": str(allocation.path),
        "k": allocation.k,
        "experts": allocation.experts,
        "documents": result.training["documents"],
        "assignment": assignment,
        "cluster_sizes": result.training["cluster_sizes"],
        "seconds": result.training["seconds"],
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    console = Console(soft_wrap=True)
    console.print(
        f"wrote [bold]{allocation.path}[/]: k={allocation.k}, {summary['documents']} documents "
        f"in {summary['seconds']} s"
    )
    for index, languages in enumerate(allocation.experts):
        size = summary["cluster_sizes"][index]
        console.print(f"  expert {index}: {size} documents; languages {','.join(languages)}")


class TfidfClusterer(Clusterer):
    """Balanced TF-IDF k-means over documents (c-BTM); assigns any text to an expert."""

    name = "tfidf"

    @classmethod
    def command(cls) -> Callable[..., None]:
        return cluster_tfidf

    @classmethod
    def assigner(cls, allocation: Allocation) -> TfidfModel:
        return load_model(allocation)
