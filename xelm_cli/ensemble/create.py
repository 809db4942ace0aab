"""An ensemble file made from Python or ``xelm ensemble create``: members, router (calibrated
on held-out text when asked), combination rule."""

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xelm_cli.bundle.store import Bundle
from xelm_cli.common.errors import UsageError
from xelm_cli.data.corpus import Document, read_documents, require_source
from xelm_cli.ensemble.ensemble_file import (
    EnsembleSpec,
    Member,
    check_ensemble_output,
    resolve_ensemble,
)
from xelm_cli.ensemble.members import split_covered
from xelm_cli.ensemble.routing import check_router_options, routing
from xelm_cli.ensemble.runner import EnsembleModel
from xelm_cli.lang.codes import language_codes
from xelm_cli.plugin.contracts import calibrates


def create_ensemble(
    members: Sequence[Member] | Member,
    output: str | Path,
    *,
    router: str | None = None,
    router_options: Mapping[str, Any] | None = None,
    combine: str | None = None,
    calibrate: str | Path | None = None,
    languages: Sequence[str] | str | None = None,
    limit: int | None = 200,
    device: str | None = None,
    overwrite: bool = False,
) -> EnsembleSpec:
    """Write the ensemble file ``output`` (atomically; an existing one only with ``overwrite``).

    ``members``: bundle directories, :class:`Bundle` objects or quoted globs, or one ensemble
    file; ``router`` and ``router_options``: the registered router and its options (default
    ``language``); ``calibrate``: a held-out corpus the router is fitted on (the posterior
    router's prior, the oracle's table), ``limit`` documents of each of ``languages`` (None:
    each of its languages that the experts cover; a note names the others).

    Example: ``create_ensemble("experts/*", "ens.json", router="posterior", calibrate="valid/")``
    """
    output = Path(output)
    if limit is not None and limit < 1:  # would calibrate on nothing
        raise UsageError(f"--calibration-limit must be at least 1 (got {limit})")
    check_ensemble_output(output)
    if output.exists() and not overwrite:
        raise UsageError(f"{output} exists; pass --force to replace it")
    if calibrate:
        require_source(calibrate, "--calibration data (held-out labelled text)")
    spec = resolve_ensemble(
        members, router=router, router_options=dict(router_options or {}), combine=combine
    )
    built = spec.built_router()
    runner = EnsembleModel(spec.members, built, spec.combine, device=device, name="calibrate")
    if calibrate:  # (building the runner checked the members and the combination rule)
        if not calibrates(built):  # its calibrate refuses: before every expert scores
            with routing(built, "while calibrating"):
                built.calibrate([], runner.experts)
        documents = read_documents(calibrate, languages=language_codes(languages), limit=limit)
        if languages is None:
            documents = _covered(documents, spec.members, calibrate)
        scored = runner.score_all_experts(documents)
        with routing(built, "while calibrating"):
            found = built.calibrate(scored, runner.experts)
        spec.router_options = {**spec.router_options, **found}
    # a path option (the tfidf router's allocation) must not depend on the working directory
    spec.router_options = check_router_options(spec.router, spec.router_options, resolve_paths=True)
    spec.write(output, overwrite=overwrite)
    return spec


def _covered(
    documents: list[Document], members: Sequence[Bundle], data: str | Path
) -> list[Document]:
    """Without chosen languages, the calibration documents in the languages the experts cover,
    as the language router routes them (``split_covered``: ``en-US`` to an ``en`` expert; the
    router is fitted for them; every expert scores every document), said on stderr when
    that leaves some out; all of them when the experts cover none."""
    experts_languages = [language for member in members for language in member.languages]
    split = split_covered((str(document.language) for document in documents), experts_languages)
    if split is None:
        return documents
    kept, left_out = split
    print(
        f"xelm: note: calibrating on the languages of {data} that the experts cover "
        f"({', '.join(kept)}); left out {', '.join(left_out)} (--langs chooses the languages)",
        file=sys.stderr,
    )
    return [document for document in documents if str(document.language) in kept]
