"""The ensemble file (spec/ensemble-v1.md section 2): members with their digests, the router
and its options, the combination rule; read back only if every member is unchanged."""

import shlex
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xelm_cli import __version__
from xelm_cli.bundle.lineage import UNTRAINED
from xelm_cli.bundle.store import MANIFEST_NAME, Bundle, is_bundle
from xelm_cli.cluster.assigning import assigns_documents
from xelm_cli.common.atomic import write_bytes_atomic
from xelm_cli.common.errors import FormatError, IntegrityError, UsageError, XelmError
from xelm_cli.common.jsonio import pretty_json, read_json_object
from xelm_cli.common.outputs import Own, check_replaceable, json_format, refuse_inside_bundle
from xelm_cli.ensemble.members import (
    check_compatible,
    expand_paths,
    expert_infos,
    not_a_bundle,
    open_members,
    read_members,
    verify_files,
)
from xelm_cli.ensemble.routing import (
    build_fallback,
    build_router,
    check_router_experts,
    check_router_options,
    router_class,
)
from xelm_cli.plugin.contracts import Router

ENSEMBLE_FORMAT = "xelm-ensemble"
ENSEMBLE_FORMAT_VERSION = 1
COMBINE_RULES = ("mixture", "logits", "product")
REMAKE = "write it again with xelm ensemble create MEMBERS --router NAME -o"


@dataclass
class EnsembleSpec:
    """What an ensemble file records: members (with digests), router, combination rule;
    ``source``: the ensemble file whose router this is, as it records it (None for one of
    bundles, or with another router or options given)."""

    members: list[Bundle]
    router: str
    router_options: dict[str, Any] = field(default_factory=dict)
    combine: str = "mixture"
    source: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.combine not in COMBINE_RULES:
            raise UsageError(
                f"unknown combination rule {self.combine!r}; choose {', '.join(COMBINE_RULES)}"
            )

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        def where(bundle: Bundle) -> str:
            path = bundle.path.resolve()
            if relative_to is not None:
                try:
                    return str(path.relative_to(relative_to.resolve()))
                except ValueError:
                    pass
            return str(path)

        return {
            "format": ENSEMBLE_FORMAT,
            "format_version": ENSEMBLE_FORMAT_VERSION,
            "created_by": f"xelm {__version__}",
            "members": [
                {
                    "path": where(b),
                    "id": b.id,
                    "digest": b.digest,
                    "name": b.name,
                    "languages": b.languages,
                }
                for b in self.members
            ],
            "router": {"name": self.router, "options": self.router_options},
            "combine": self.combine,
        }

    def built_router(self) -> Router:
        """The router built with its options and checked against the members (its
        ``check_experts``, its fallback) before any expert runs; a refusal of a file's router
        names the file and how to write it again."""
        with _naming_file(self.source) if self.source else nullcontext():
            router = build_router(self.router, self.router_options)
            experts = expert_infos(self.members)
            check_router_experts(router, experts)
            build_fallback(router, experts)
        return router

    def write(self, path: Path, *, overwrite: bool = False) -> None:
        check_ensemble_output(path)
        if path.exists() and not overwrite:
            raise UsageError(f"{path} exists; pass --force to replace it")
        data = self.to_dict(relative_to=path.parent)
        write_bytes_atomic(path, pretty_json(data), overwrite=True)

    @classmethod
    def read(cls, path: Path) -> "EnsembleSpec":
        data = read_json_object(path, "ensemble file", unique_keys=True)
        if data.get("format") != ENSEMBLE_FORMAT:
            raise FormatError(f"{path}: not an xelm ensemble file (format {data.get('format')!r})")
        version = data.get("format_version")
        if type(version) is not int or version != ENSEMBLE_FORMAT_VERSION:  # not true, not 1.0
            raise FormatError(
                f"{path}: ensemble format_version {data.get('format_version')!r} is not "
                f"supported (this xelm reads {ENSEMBLE_FORMAT_VERSION})"
            )
        try:
            entries = list(data["members"])
            router = data["router"]
            name, recorded = str(router["name"]), dict(router.get("options") or {})
            combine = str(data.get("combine", "mixture"))
            paths = [(path.parent / str(entry["path"]), str(entry["digest"])) for entry in entries]
        except KeyError as exc:
            raise FormatError(
                f"{path}: ensemble file without the {exc.args[0]!r} field; {REMAKE} {path}"
            ) from None
        except (TypeError, ValueError) as exc:
            raise FormatError(f"{path}: malformed ensemble file ({exc}); {REMAKE} {path}") from None
        if combine not in COMBINE_RULES:
            raise FormatError(
                f"{path}: unknown combination rule {combine!r} (this xelm knows "
                f"{', '.join(COMBINE_RULES)}); {REMAKE} {path} --combine RULE"
            )
        try:
            router_class(name)  # an unknown router (a plugin not installed here): the file named
        except XelmError as exc:
            raise type(exc)(f"{path}: {exc}") from None
        options = check_router_options(name, recorded, where=str(path))
        members = _read_file_members(path, [member for member, _ in paths])
        for bundle, (member, digest) in zip(members, paths, strict=True):
            if bundle.digest != digest:  # before hashing gigabytes of files it did not record
                raise IntegrityError(
                    f"{member}: manifest digest {bundle.digest[:12]} differs from the "
                    f"{digest[:12]} recorded in {path}; the bundle changed since the ensemble "
                    f"was created: {REMAKE} {path}"
                )
        verify_files(members)  # a damaged member's refusal names it and xelm bundle verify
        with _naming_file(path):  # an empty list, a member twice, another tokenizer...
            check_compatible(members)
        return cls(members, name, options, combine, source=path)


def _read_file_members(path: Path, members: Sequence[Path]) -> list[Bundle]:
    """The manifests of the members ensemble file ``path`` lists; a member that is gone or is
    no bundle, or whose manifest cannot be read, refused naming the file and how to write it
    again (the error's class kept)."""
    for member in members:
        if not is_bundle(member):
            why = "does not exist" if not member.exists() else f"has no {MANIFEST_NAME}"
            raise UsageError(
                f"{path} lists member {member}, which {why} (moved or removed since the "
                f"ensemble was created?): put the bundle back there, or {REMAKE} {path}"
            )
    with _naming_file(path, "a member of", XelmError):
        return read_members(members)


@contextmanager
def _naming_file(
    path: Path, relation: str = "in", refusals: type[XelmError] = UsageError
) -> Iterator[None]:
    """A refusal of what ensemble file ``path`` holds, named with the file and how to write it
    again (the error's class kept)."""
    try:
        yield
    except refusals as exc:
        raise type(exc)(f"{exc} ({relation} {path}; {REMAKE} {path})") from None


def check_file_output(path: str | Path, *, what: str, example: str, kind: str, own: Own) -> None:
    """Refuse, in one line, an output file (results, an ensemble file) that would lose data even
    with --force: an existing directory (named with a file inside it, ``example``), a file
    inside a bundle (which would no longer verify) and an existing file that is not ``kind``
    (``own``: a user's notes, another program's JSON). Whether an output of the kind exists
    is the caller's to refuse without --force."""
    refuse_inside_bundle(path, what)
    if Path(path).is_dir():
        raise UsageError(
            f"{path} is a directory; give a file for {what}, such as {Path(path) / example}"
        )
    check_replaceable(path, overwrite=True, own=own, kind=kind, folder=False, what=what)


def check_ensemble_output(path: str | Path) -> None:
    """:func:`check_file_output` for an ensemble file."""
    check_file_output(path, what="the ensemble", example="ens.json", kind="an ensemble file",
                      own=lambda found: json_format(found) == ENSEMBLE_FORMAT)  # fmt: skip


def is_ensemble_file(path: str) -> bool:
    return path.endswith(".json") and Path(path).is_file()


DEFAULT_ROUTER = "language"
Member = str | Path | Bundle


def resolve_ensemble(
    members: Member | Sequence[Member],
    *,
    router: str | None = None,
    router_options: Mapping[str, Any] | None = None,
    combine: str | None = None,
) -> EnsembleSpec:
    """The ensemble that ``members`` name: one ensemble file (its router and options, with
    ``router``/``router_options`` on top), or bundles (directories, quoted globs such as
    ``"experts/*"`` or :class:`Bundle` objects) with ``router`` (default ``language``).

    The router's options (text as ``--router-arg`` gives them, or JSON values) are checked
    against its declaration before the members (a slower check) are opened.
    """
    members = [members] if isinstance(members, str | Path | Bundle) else list(members)
    options = dict(router_options or {})
    single = members[0] if len(members) == 1 else None
    if single is not None and not isinstance(single, Bundle) and is_ensemble_file(str(single)):
        spec = EnsembleSpec.read(Path(single))
        if router and router != spec.router:
            spec.router, spec.source = router, None  # a refusal of its options: not the file's
            spec.router_options = check_router_options(router, options, resolve_paths=True)
        elif options:
            merged = {**spec.router_options, **options}
            spec.router_options = check_router_options(spec.router, merged, resolve_paths=True)
            spec.source = None
        if combine:
            spec.combine = combine
        return spec
    for member in members:
        if not isinstance(member, Bundle) and is_ensemble_file(str(member)):
            raise UsageError(_file_among_bundles(Path(member)))  # (other files: not bundles)
    name = router or DEFAULT_ROUTER
    # absolute: the results record the options, and must rebuild the router from anywhere
    checked = check_router_options(name, options, resolve_paths=True)
    paths: list[Path] = []
    for member in members:
        paths += [member.path] if isinstance(member, Bundle) else expand_paths([str(member)])
    bundles = open_members(paths)
    if router is None:
        _warn_documents_routed_by_language(bundles)
    _note_untrained_branches(bundles)
    return EnsembleSpec(bundles, name, checked, combine or "mixture")


def _file_among_bundles(path: Path) -> str:
    """The refusal of an ensemble file listed with other members: a file stands alone (its
    router options, a posterior's prior, are fitted to its k experts); the way out lists its
    bundles, which the new ones join. Another JSON file is refused as any non-bundle is."""
    try:
        data = read_json_object(path, "ensemble file")
        entries = data["members"] if data.get("format") == ENSEMBLE_FORMAT else None
        listed = [shlex.quote(str(path.parent / str(entry["path"]))) for entry in entries or []]
    except (XelmError, KeyError, TypeError):
        entries, listed = None, []
    if not entries or not listed:
        return not_a_bundle(path)
    return (
        f"{path} is an ensemble file, which stands alone as the members; to add experts to "
        f"it, list its bundles with them: xelm ensemble create {' '.join(listed)} NEW... "
        "-o NEW.json"
    )


def _note_untrained_branches(bundles: Sequence[Bundle]) -> None:
    """A member made by a branch and not trained since scores exactly as its parent: say so
    (branching an expert for a new language and ensembling it before training is easy)."""
    for bundle in bundles:
        if bundle.manifest.relation in UNTRAINED:
            sys.stderr.write(
                f"xelm: note: {bundle.path} has not been trained since its "
                f"{bundle.manifest.relation}: it scores as its parent does; train it first "
                f"(xelm train {bundle.path} --data SHARDS --tokens N -o TRAINED)\n"
            )


def _warn_documents_routed_by_language(bundles: Sequence[Bundle]) -> None:
    """Experts of an allocation that assigns documents (TF-IDF) share languages: the default
    router picks among them by language alone, not as the allocation assigned documents."""
    allocations = {a.get("digest"): a for b in bundles if (a := b.manifest.allocation) is not None}
    if len(allocations) != 1:
        return
    (reference,) = allocations.values()
    clusterer, path = reference.get("clusterer"), reference.get("path")
    try:
        documents = assigns_documents(reference)
    except XelmError:  # not installed: what it does is not known here
        return
    if documents:
        sys.stderr.write(
            f"xelm: warning: the experts are of {clusterer} allocation {path}, which assigns "
            f"documents, not languages: routed by language (the default); give --router "
            f"{clusterer} --router-arg allocation=PATH to route each document as it assigns it\n"
        )
