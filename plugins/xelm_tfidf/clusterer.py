"""The registered TF-IDF clusterer: its declared options and ``fit``."""

import sys
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from xelm_cli.api import (
    Allocation,
    Clusterer,
    ClusterRequest,
    UsageError,
    option,
    sample_documents,
    sample_kind,
)

from .analyzer import SEGMENTERS
from .embedder import TfidfSettings
from .fitting import fit_sample, reading_progress, short_documents_warning, unbalanced_warning
from .kmeans import ASSIGNMENTS, SOLVERS, KMeansSettings
from .state import STATE_MEMBER, TfidfModel, load_model, save_model

# --solver lsa holds an n x n float64 cost matrix a batch (and scipy's copies of it)
LSA_LARGEST_BATCH = 10_000


class TfidfClusterer(Clusterer):
    """Cluster documents into k equal-size groups by TF-IDF (c-BTM balanced k-means).

    Writes an allocation directory (allocation.json + arrays.safetensors, no pickles) that
    assigns any text to an expert: by default the nearest centroid after per-expert offsets
    that split the training documents into equal groups (--assignment balanced); the
    reference's plain nearest centroid with --assignment nearest. --langs keeps only documents
    in those languages. --document-bytes 1500 joins consecutive records of one language into
    documents of about 1.5 KB first: on a corpus of sentences (the sample data) it keeps each
    language's documents together far more purely, and without it, records that average fewer
    than 300 bytes get a warning saying so. The sizes in the JSON summary are those the
    saved allocation gives the training documents.

    DATA is read as `xelm data prepare` reads it (--split, --lang, --config, --lang-map,
    --text-column, --revision, --data-dir the same). Corpus files are sampled uniformly,
    --max-docs-per-language of each language from all its documents. Datasets and recipes
    (mC4: --config '{lang}', or the recipe mc4) are streamed and read only as far as the
    sample needs: each language's first --max-docs-per-language documents.

    Example: xelm cluster tfidf ../shared/data/corpus/train --langs ar,en,ru,zh -k 4 -o alloc/

    Example (mC4, 10,000 documents a language, each language's stream left after them):
    xelm cluster tfidf allenai/c4 --config '{lang}' --langs ar,de,he,hi --lang-map he=iw -k 4
    --max-docs-per-language 10000 -o alloc-tfidf/
    """

    name = "tfidf"
    default_k = 4
    _fit_seconds: ClassVar[dict[str, float]] = {}  # allocation digest -> its fit's seconds
    assigns_documents = True  # each expert trains on the documents assigned to it
    reads_data = True  # sample_documents reads DATA with request.reading

    @dataclass(frozen=True)
    class Options:
        document_bytes: int = option(
            0,
            help="Join consecutive records of one language into documents of about this many "
            "bytes (UTF-8) before fitting, e.g. 1500 for a corpus of sentences (0: each record "
            "a document).",
            minimum=0,
        )
        max_docs_per_language: int = option(
            2000, help="Fit on at most this many documents per language (0: all).", minimum=0
        )
        segment: str = option(
            "cjk",
            help="cjk: cut Chinese/Japanese/Thai into character bigrams; none.",
            choices=SEGMENTERS,
        )
        max_features: int = option(500_000, help="TF-IDF vocabulary size.", minimum=2)
        components: int = option(100, help="SVD dimensions.", minimum=1)
        batch_size: int = option(4096, help="Documents per k-means batch.", minimum=1)
        solver: str = option(
            "auto",
            help="Balanced assignment: auto (transfers up to 64 experts, else lsa or auction "
            "by batch size), transfers (exact, few experts), auction, or lsa (exact, small "
            "batches).",
            choices=SOLVERS,
        )
        assignment: str = option(
            "balanced",
            help="How documents go to experts: balanced (nearest centroid after per-expert "
            "offsets that split the training documents equally) or nearest (the reference's "
            "plain nearest centroid).",
            choices=ASSIGNMENTS,
        )

    def fit(self, request: ClusterRequest) -> Allocation:
        options = self.options_of(request)
        if request.data is None:
            raise UsageError(
                "the tfidf clusterer fits on documents: give a corpus, dataset or recipe (DATA, "
                "data= from Python), e.g. xelm cluster tfidf ../shared/data/corpus/train -k 4 "
                "-o alloc/"
            )
        if request.output.exists() and not request.overwrite:
            raise UsageError(
                f"output {request.output} already exists; choose another path or pass --force"
            )
        if options.solver == "lsa" and options.batch_size > LSA_LARGEST_BATCH:
            gigabytes = options.batch_size**2 * 8 / 1e9
            raise UsageError(
                f"--solver lsa builds a --batch-size squared cost matrix ({gigabytes:,.1f} GB at "
                f"{options.batch_size:,}): give --batch-size {LSA_LARGEST_BATCH:,} or less, or "
                "--solver auction / auto"
            )
        started = time.perf_counter()
        with reading_progress() as advance:
            sample = sample_documents(
                request.data,
                languages=request.languages,
                per_language=options.max_docs_per_language or None,
                document_bytes=options.document_bytes,
                seed=request.seed,
                reading=request.reading,
                progress=advance,
            )
        result = fit_sample(
            sample,
            kmeans=KMeansSettings(
                k=request.k,
                batch_size=options.batch_size,
                seed=request.seed,
                solver=options.solver,
            ),
            tfidf=TfidfSettings(
                max_features=options.max_features,
                n_components=options.components,
                seed=request.seed,
            ),
            segment=options.segment,
            max_per_language=options.max_docs_per_language or None,
            assignment=options.assignment,
        )
        training = {
            **result.training,
            "sample": sample_kind(
                request.data, languages=request.languages, reading=request.reading
            ),
            "document_bytes": options.document_bytes,
        }
        allocation = save_model(
            request.output,
            result.model,
            shares=result.shares,
            training=training,
            overwrite=request.overwrite,
        )
        # the fit's wall-clock time (reading included) goes to the --json summary, not into
        # allocation.json: the same fit, run again, writes the same bytes (allocation-v1)
        TfidfClusterer._fit_seconds[allocation.digest] = round(time.perf_counter() - started, 2)
        warnings = [
            short_documents_warning(sample, options.document_bytes),
            unbalanced_warning(training["cluster_sizes"], options.assignment),
        ]
        for warning in filter(None, warnings):  # after the fit, so that a failed one still
            print(warning, file=sys.stderr)  # ends in its one error line
        return allocation

    @classmethod
    def summary(cls, allocation: Allocation) -> dict[str, Any]:
        training = allocation.raw.get(STATE_MEMBER, {}).get("training", {})
        summary = {
            key: training[key]
            for key in ("documents", "sample", "document_bytes", "assignment", "cluster_sizes")
            if key in training
        }
        seconds = cls._fit_seconds.get(allocation.digest, training.get("seconds"))
        if seconds is not None:  # this process's fit (older allocations recorded it)
            summary["seconds"] = seconds
        return summary

    @classmethod
    def assigner(cls, allocation: Allocation) -> TfidfModel:
        return load_model(allocation)
