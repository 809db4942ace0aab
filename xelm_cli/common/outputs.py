"""The one check of every writer's output, before any input is read.

A writer names what it writes (``kind``: "a bundle", "shards", "an allocation"...) and how to
recognise an earlier output of that kind (``own``); :func:`check_replaceable` then refuses, in
one line that names the way out:

- an output inside a bundle (a folder above it holds ``xelm.json``): it would be a file the
  bundle's manifest does not list;
- an output that is, holds or lies inside one of the command's inputs;
- with ``overwrite`` (``--force``), an existing output that is not of the writer's own kind (nor
  an empty folder, for a writer that may write a folder), and the current directory or a
  folder above it;
- without ``overwrite``, an existing output: with the ``--force`` hint only where ``--force``
  would then be accepted, otherwise saying why it would not.

Bundle code is not imported here (``xelm_cli.common`` imports nothing of xelm's beyond itself):
the bundle manifest's name is spelled out below, as spec/bundle-v1.md fixes it.
"""

import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from xelm_cli.common.atomic import refuse_existing, refuse_replacing_workdir, resolved_output
from xelm_cli.common.errors import UsageError

BUNDLE_MANIFEST = "xelm.json"  # spec/bundle-v1.md section 1 (bundle.manifest.MANIFEST_NAME)
_SMALL_JSON = 64 * 1024 * 1024  # a JSON file larger than this is read as no output of ours

Own = Callable[[Path], bool]
_LEFT_BY_A_WRITER = re.compile(r"\..+\.(?:partial|lock)")  # atomic.py's temporaries and locks


def enclosing_bundle(path: str | Path, *, itself: bool = False) -> Path | None:
    """The nearest folder above ``path`` that holds a ``xelm.json`` (with ``itself``, ``path``
    too: it is the nearest), or None."""
    target = resolved_output(path)
    for folder in [target, *target.parents] if itself else target.parents:
        if (folder / BUNDLE_MANIFEST).is_file():
            return folder
    return None


def refuse_inside_bundle(out: str | Path, what: str = "the output", *, into: bool = False) -> None:
    """Refuse ``out`` inside a bundle (its folder, or any folder above it, holds xelm.json);
    with ``into`` (the writer fills the folder ``out`` with files), ``out`` that is a bundle
    itself too. A writer that replaces ``out`` whole leaves ``into`` off: replacing a bundle
    is its own output check's business (``--force``), not a write inside one."""
    folder = enclosing_bundle(out, itself=into)
    if folder is not None and folder == resolved_output(out):
        raise UsageError(
            f"{out} is a bundle: {what} would be written into it, unlisted in its manifest (the "
            "bundle would no longer verify): write it somewhere else"
        )
    if folder is not None:
        raise UsageError(
            f"{out}: {what} would lie inside the bundle {folder}, unlisted in its manifest (the "
            "bundle would no longer verify): write it somewhere else"
        )


def refuse_inputs(out: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Refuse ``out`` that is, holds or lies inside one of ``inputs`` (those that exist: a Hub
    id or a missing path holds nothing to lose)."""
    target = resolved_output(out)
    for given in inputs:
        if given is None or not os.path.lexists(given):
            continue
        source = Path(given).resolve()
        where = (
            "is" if target == source
            else "holds" if target in source.parents
            else "lies inside" if source in target.parents
            else None
        )  # fmt: skip
        if where:
            raise UsageError(
                f"{out} {where} {given}, which this command reads: write the output somewhere else"
            )


def is_empty_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding nothing but what a writer killed there left (its
    hidden ``.NAME.lock`` files and ``.NAME.*.partial`` temporaries)."""
    if not path.is_dir() or path.is_symlink():
        return False
    try:
        return all(_LEFT_BY_A_WRITER.fullmatch(entry.name) for entry in path.iterdir())
    except OSError:
        return False


def check_replaceable(
    out: str | Path,
    *,
    overwrite: bool,
    inputs: Iterable[str | Path | None] = (),
    own: Own | None = None,
    kind: str = "an output of this command",
    folder: bool = True,
    update: bool = False,
    unlike: str | None = None,
    what: str = "the output",
) -> None:
    """Refuse ``out`` in one line, before any input is read, where writing it could lose data.

    ``own(path)``: whether the existing ``path`` is an earlier output of this command's
    ``kind`` (a noun phrase: "a bundle", "shards"); only such an output, or an empty folder
    where ``folder`` (the writer may write a folder), is replaced with ``overwrite``, never the
    current directory or a folder above it. ``update``: an existing output of its own kind is
    no error without ``overwrite`` (the writer updates it, or finds it up to date).
    ``unlike``: how to describe an existing folder not of the kind (default: "a folder of other
    things, not KIND"). ``what``: the output, as the refusal of one inside a bundle names it.
    """
    refuse_inside_bundle(out, what)
    refuse_inputs(out, inputs)
    target = resolved_output(out)
    if not (target.exists() or target.is_symlink()):
        return
    refuse_replacing_workdir(out)
    empty = folder and is_empty_folder(target)
    if not (empty or (own is not None and _safely(own, target))):
        only = f"{kind} or an empty folder" if folder else kind
        if target.is_dir() and not target.is_symlink():
            if not folder:  # a file's writer: even an empty folder stays
                raise UsageError(
                    f"{out} is a folder, not {kind}; --force replaces only {only}: write the "
                    "output somewhere else, or remove that folder first"
                )
            described = unlike or f"a folder of other things, not {kind}"
            raise UsageError(
                f"{out} is {described}; --force replaces only {only}: write the output "
                "somewhere else, or empty or remove that folder first"
            )
        noun = "a link" if target.is_symlink() else "a file"
        raise UsageError(
            f"{out} is {noun}, not {kind}; --force replaces only {only}: write the output "
            "somewhere else, or remove the file first"
        )
    if not overwrite and not (update and not empty):
        refuse_existing(target)


def _safely(own: Own, path: Path) -> bool:
    try:
        return bool(own(path))
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def small_json(path: Path) -> object:
    """The JSON value in the (small, plain) file ``path``, or None where it holds none."""
    if not path.is_file() or path.is_symlink() or path.stat().st_size > _SMALL_JSON:
        return None
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None


def json_format(path: Path) -> str | None:
    """The ``format`` member of the JSON object in the (small, plain) file ``path``, or None."""
    data = small_json(path)
    value = data.get("format") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def has_magic(path: Path, magic: bytes) -> bool:
    """Whether the plain file ``path`` starts with ``magic`` (an archive's, an image's)."""
    if not path.is_file() or path.is_symlink():
        return False
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


__all__ = [
    "BUNDLE_MANIFEST",
    "check_replaceable",
    "enclosing_bundle",
    "has_magic",
    "is_empty_folder",
    "json_format",
    "refuse_inputs",
    "refuse_inside_bundle",
    "resolved_output",
]
