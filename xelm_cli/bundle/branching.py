"""Branching: new experts that start as (linked) copies of an existing bundle.

``branch`` makes expert N of an allocation, or an expert for given languages, from a seed.
``hmr_branch`` adds a new language by branching the expert that holds its typological donor
(hierarchical multi-round training, xelm-method.md section 8): old experts stay untouched.
"""

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from xelm_cli.bundle.lineage import ancestors
from xelm_cli.bundle.store import (
    Bundle,
    Progress,
    check_output,
    check_role,
    holds_bundles,
    is_bundle,
    is_hidden,
    what_else,
    write_bundle,
)
from xelm_cli.cluster.allocation import Allocation, as_allocation
from xelm_cli.common.errors import UsageError
from xelm_cli.lang.codes import language_codes, normalize_language


def branch(
    parent_dir: str | Path,
    out: str | Path,
    *,
    languages: Sequence[str] | str | None = None,
    allocation: Allocation | str | Path | None = None,
    expert: int | None = None,
    role: str = "expert",
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Bundle:
    """Branch ``parent_dir`` into ``out``; costs O(1) in model size when hard links work.

    Args:
        parent_dir: the bundle to branch; its files are verified first.
        out: the new bundle's directory.
        languages: the new bundle's languages, a list or text such as ``"ar,tr"``
            (normalised); default: the parent's. Not with ``allocation``.
        allocation: an :class:`Allocation` or its file; with ``expert``, the new bundle is
            that expert: its languages, and a reference to the allocation in the manifest.
        expert: the index of the expert in ``allocation``.
        role: ``expert``, ``seed`` or ``dense``.
        overwrite: replace an existing ``out``.
        progress: called with the number of bytes hashed.

    Returns:
        The new bundle, whose last lineage step is ``branch`` from the parent.
    """
    check_role(role)
    if allocation is not None and (expert is None or languages):
        raise UsageError("--allocation needs --expert N and cannot be combined with --langs")
    if expert is not None and allocation is None:
        raise UsageError("--expert needs --allocation FILE")
    codes = language_codes(languages)
    read = [parent_dir, *([allocation] if isinstance(allocation, str | Path) else [])]
    check_output(out, overwrite=overwrite, inputs=read)  # before the parent is hashed
    parent = Bundle.open(parent_dir)  # a corrupt parent would pass its digests on
    allocation_ref = None
    if allocation is not None and expert is not None:
        allocation = as_allocation(allocation)
        allocation_ref = allocation.reference(expert)
        codes = tuple(allocation.experts[expert])
    step = {"relation": "branch", "parents": [parent.ref]}
    return _linked_child(
        parent, out, step, role=role, languages=list(codes or parent.languages),
        allocation=allocation_ref, overwrite=overwrite, progress=progress,
    )  # fmt: skip


def _linked_child(
    parent: Bundle,
    out: str | Path,
    step: dict[str, Any],
    *,
    role: str,
    languages: list[str],
    overwrite: bool,
    progress: Progress | None,
    allocation: dict[str, Any] | None = None,
) -> Bundle:
    """A new bundle at ``out`` whose files are the parent's, linked, under its own manifest."""
    with write_bundle(
        out,
        role=role,
        languages=languages,
        parent=parent,
        step=step,
        allocation=allocation,
        overwrite=overwrite,
        progress=progress,
    ) as writer:
        pass
    assert writer.result is not None
    return writer.result


def find_bundles(paths: Iterable[Path], *, deep: bool = False) -> list[Bundle]:
    """Bundles named directly, or found one level inside directories that are not bundles (at
    any depth with ``deep``); hidden entries (``.NAME``: checkpoints, a killed writer's
    ``.NAME.*.partial``) are never taken; each once, where paths overlap (``experts`` and
    ``experts/e1``, or ``./experts``)."""
    bundles: dict[Path, Bundle] = {}
    for path in paths:
        if is_bundle(path):
            found = [path]
        elif path.is_dir():
            found = _bundles_below(path, deep)
        else:
            why = f"is a file{what_else(path)}" if path.exists() else "does not exist"
            raise UsageError(f"not a bundle or a directory of bundles: {path} {why}")
        for directory in found:
            if directory.resolve() not in bundles:
                bundles[directory.resolve()] = Bundle.read(directory)
    return list(bundles.values())


def _bundles_below(directory: Path, deep: bool) -> list[Path]:
    found = []
    for child in sorted(directory.iterdir()):
        if is_hidden(child):
            continue
        if is_bundle(child):
            found.append(child)
        elif deep and child.is_dir():
            found += _bundles_below(child, deep)
    return found


def _describe(bundles: Iterable[Bundle]) -> str:
    return "; ".join(
        f"{b.path} ({b.manifest.role}: {','.join(b.languages) or '-'})" for b in bundles
    )


def choose_donor_bundle(
    pool: list[Bundle], donor: str, *, language: str = "LANG", out: str | Path = "OUT"
) -> Bundle:
    """The one expert of ``pool`` whose languages include ``donor``.

    HMR branches the donor's *expert*: a seed or dense bundle that covers ``donor`` is not
    taken in its place (it would start the new expert from the wrong weights); the refusal
    names it, with ``language`` and ``out`` in the command that branches it directly.
    """
    if not pool:
        raise UsageError("the pool holds no bundles")
    covering = [b for b in pool if donor in b.languages]
    if not covering:
        raise UsageError(
            f"no bundle in the pool covers donor language {donor!r}; candidates: {_describe(pool)}"
        )
    experts = [b for b in covering if b.manifest.role == "expert"]
    if not experts:
        other = covering[0]
        raise UsageError(
            f"no expert covers donor language {donor!r}: the pool (read one level deep) held "
            f"{_describe(pool)}; {_experts_hint(pool)}, or branch {other.path} itself: "
            f"xelm bundle branch {other.path} --langs {language} -o {out}"
        )
    # a branch and the expert trained from it (demo-run/typology-k4/branch-0 and expert-0)
    # both cover the donor: the donor's expert is the trained one
    trained_from = set().union(*(ancestors(b) for b in experts))
    experts = [b for b in experts if b.digest not in trained_from]
    if len(experts) > 1:
        raise UsageError(
            f"several bundles cover donor language {donor!r}: "
            f"{_describe(experts)}; pass the one to branch with --from"
        )
    return experts[0]


def _experts_hint(pool: list[Bundle]) -> str:
    """Where the experts probably are: directories of bundles beside the pool's bundles
    (``runs/experts`` beside ``runs/dense``), which a pool read one level deep misses."""
    searched = {b.path.parent for b in pool}
    nested = sorted(str(d) for parent in searched for d in _bundle_dirs(parent) - searched)
    if len(nested) == 1:
        return f"pass the experts' directory with --from {nested[0]}"
    if nested:
        return f"pass the experts' directory with --from DIR (one of {', '.join(nested)})"
    return "pass the experts' directory with --from DIR"


def _bundle_dirs(parent: Path) -> set[Path]:
    """The directories directly in ``parent`` that are not bundles but hold some."""
    try:
        return {d for d in parent.iterdir() if holds_bundles(d)}
    except OSError:  # an unreadable directory only costs the hint
        return set()


def _no_bundles(paths: list[Path]) -> str:
    """Why the pool ``paths`` (existing folders that hold no bundle one level deep) gives no
    donor, naming each and the way out."""
    named = ", ".join(str(p) for p in paths)
    if len(paths) == 1:
        held = what_else(paths[0])
    else:
        notes = [f"{p}{what_else(p)}" for p in paths if what_else(p)]
        held = f" ({'; '.join(notes)})" if notes else ""
    deeper = [p for p in paths if p.is_dir() and _bundles_below(p, deep=True)]
    hint = (
        f"its bundles lie deeper: pass the folder that holds them (e.g. --from "
        f"{_bundles_below(deeper[0], deep=True)[0].parent})"
        if deeper
        else "pass the experts' bundles or the folder that holds them (e.g. --from runs/experts)"
    )
    return (
        f"--from {named}: no bundles there{held}; a pool is bundles, or folders of bundles "
        f"read one level deep: {hint}"
    )


def hmr_donor(
    pool: str | Path | Sequence[str | Path], donor: str, language: str, out: str | Path
) -> Bundle:
    """The expert of ``pool`` that :func:`hmr_branch` branches to add ``language`` from
    ``donor`` into ``out`` (see there), read before anything is written. Refused in one line:
    a pool without that one expert, an expert that already covers ``language``, and an ``out``
    that is, lies inside or holds a bundle of the pool (``--force`` would replace it)."""
    donor, language = normalize_language(donor), normalize_language(language)
    paths = [pool] if isinstance(pool, str | Path) else pool
    pool_bundles = find_bundles(map(Path, paths))
    if not pool_bundles:
        raise UsageError(_no_bundles([Path(p) for p in paths]))
    chosen = choose_donor_bundle(pool_bundles, donor, language=language, out=out)
    if language in chosen.languages:
        raise UsageError(f"{chosen.path} already covers {language!r}; no new expert needed")
    target = Path(out).resolve()
    for bundle in pool_bundles:
        where = bundle.path.resolve()
        if target == where or where in target.parents or target in where.parents:
            raise UsageError(
                f"-o {out} overlaps {bundle.path}, a bundle of the pool (--from) that must not "
                f"change: write the new expert elsewhere (e.g. -o branches/{language})"
            )
    return chosen


def hmr_branch(
    pool: str | Path | Sequence[str | Path],
    donor: str,
    language: str,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Bundle:
    """Add ``language`` by branching the one expert of ``pool`` that holds ``donor`` (HMR,
    ``xelm bundle branch --from POOL --donor DONOR --lang LANGUAGE``); the pool is untouched.

    Args:
        pool: bundles, or directories of bundles (one level deep), to pick the donor's
            expert from; only experts are taken (a seed or dense bundle is refused).
        donor: a language the pool has seen, typologically close to ``language``
            (:func:`rank_donors` ranks candidates).
        language: the new language.
        out: the new expert's directory.
        overwrite: replace an existing ``out``.
        progress: called with the number of bytes hashed.

    Returns:
        The new expert for ``[language]``, whose last lineage step is ``hmr-branch`` from the
        donor's expert, recording ``donor`` and ``language`` (normalised codes).
    """
    donor, language = normalize_language(donor), normalize_language(language)
    chosen = hmr_donor(pool, donor, language, out).path  # manifests only
    check_output(out, overwrite=overwrite, inputs=[chosen])  # before the donor is hashed
    parent = Bundle.open(chosen)
    step = {"relation": "hmr-branch", "parents": [parent.ref], "donor": donor, "language": language}
    return _linked_child(
        parent, out, step, role="expert", languages=[language], overwrite=overwrite,
        progress=progress,
    )  # fmt: skip
