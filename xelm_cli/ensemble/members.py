"""Ensemble members: bundles found by paths or globs, checked to run together."""

import glob
import shlex
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from xelm_cli.bundle.store import MANIFEST_NAME, Bundle, holds_bundles, is_bundle
from xelm_cli.common.errors import UsageError
from xelm_cli.common.jsonio import read_json_object
from xelm_cli.common.progress import byte_progress
from xelm_cli.lang.codes import normalize_language, wanted_form
from xelm_cli.plugin.contracts import ExpertInfo


def expand_paths(patterns: Sequence[str]) -> list[Path]:
    """Paths as given, with unexpanded glob patterns (quoted on the command line) expanded."""
    paths: list[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):  # a quoted glob: its bundles (not checkpoints, files...)
            found = [Path(p) for p in sorted(glob.glob(pattern))]
            bundles = [p for p in found if is_bundle(p)]
            if not bundles:
                raise UsageError(f"no bundle matches {pattern!r}")
            paths += bundles
        else:
            paths.append(Path(pattern))
    return paths


def open_members(paths: Sequence[Path]) -> list[Bundle]:
    """Read and verify the bundles of an ensemble (manifests, digests, compatibility); digests
    come first, so nothing is read from a file that does not match its manifest."""
    return verify_members(read_members(paths))


def read_members(paths: Sequence[Path]) -> list[Bundle]:
    """The bundles' manifests, their files not yet checked (:func:`verify_members`)."""
    for path in paths:
        if not is_bundle(path):
            raise UsageError(not_a_bundle(path))
    return [Bundle.read(path) for path in paths]


def verify_members(bundles: list[Bundle]) -> list[Bundle]:
    """``bundles`` once every file matches its manifest's digest and they can run together."""
    verify_files(bundles)
    check_compatible(bundles)
    return bundles


def verify_files(bundles: Sequence[Bundle]) -> None:
    """Refuse a bundle whose files do not match its manifest's digests."""
    with byte_progress("verifying experts", sum(b.size for b in bundles)) as advance:
        for bundle in bundles:
            bundle.check_files(progress=advance)


def not_a_bundle(path: Path) -> str:
    """Why ``path`` cannot be a member, naming the way out for a directory of bundles."""
    if not path.exists():
        if path.suffix == ".json":  # meant as an ensemble file, not a bundle
            return (
                f"ensemble file not found: {path} (make one with: xelm ensemble create "
                f"EXPERTS... -o {shlex.quote(str(path))})"
            )
        return f"{path} does not exist: an ensemble member must be a bundle directory"
    if holds_bundles(path):
        return (
            f"{path} is a directory of bundles, not a bundle: pass its bundles, e.g. "
            f"'{path / '*'}' (quoted: xelm expands it and skips checkpoints)"
        )
    return (
        f"{path} has no {MANIFEST_NAME}: an ensemble member must be a bundle directory (from "
        f"Python too, a quoted glob such as 'experts/*' takes only the bundles)"
    )


def _config(bundle: Bundle) -> dict[str, object]:
    return read_json_object(bundle.path / "config.json", f"{bundle.path}/config.json")


def _model_type(bundle: Bundle) -> str:
    return str(_config(bundle).get("model_type", "?"))


def output_size(bundle: Bundle) -> object:
    """The logits the model gives a position (its config's ``vocab_size``, a text model's in
    ``text_config``): at least its tokenizer's, more when the embedding table is padded."""
    config = _config(bundle)
    text = config.get("text_config")
    if "vocab_size" not in config and isinstance(text, dict):
        return text.get("vocab_size")
    return config.get("vocab_size")


def check_compatible(bundles: Sequence[Bundle]) -> None:
    """One shared tokenizer and architecture family, distinct experts, languages declared."""
    if not bundles:
        raise UsageError("an ensemble needs at least one bundle")
    first = bundles[0]
    first_type = _model_type(first)
    seen: dict[str, Bundle] = {}
    for bundle in bundles:
        if bundle.id in seen:
            raise UsageError(
                f"{seen[bundle.id].path} and {bundle.path} are the same expert "
                f"(id {bundle.id}); list each expert once"
            )
        seen[bundle.id] = bundle
        if bundle.manifest.fingerprints["tokenizer"] != first.manifest.fingerprints["tokenizer"]:
            raise UsageError(
                f"{bundle.path} and {first.path} have different tokenizers; the experts of an "
                "ensemble must share one (branch them from the same seed)"
            )
        if (model_type := _model_type(bundle)) != first_type:
            raise UsageError(
                f"{bundle.path} is a {model_type!r} model but {first.path} is a "
                f"{first_type!r} model; an ensemble needs one architecture family (to score "
                f"them side by side: xelm ensemble eval {first.path} --baseline {bundle.path})"
            )
        if not bundle.languages:
            raise UsageError(f"{bundle.path} declares no languages")
    _check_framings(bundles)


def _check_framings(bundles: Sequence[Bundle]) -> None:
    """Every member frames documents alike (xelm_cli.bundle.framing): the ensemble scores all of
    them on one token sequence, so a different start or end token would score another text."""
    # a bundle older than the record frames as ``bos doc eos`` of its own tokenizer: one
    # tokenizer.json may sit beside other special-token designations
    first = bundles[0].framing()
    for bundle in bundles[1:]:
        framing = bundle.framing()
        if (framing.start, framing.end) != (first.start, first.end):
            raise UsageError(
                f"{bundle.path} frames documents with start/end tokens "
                f"{framing.start}/{framing.end} but {bundles[0].path} with "
                f"{first.start}/{first.end}; the experts of an ensemble must frame documents "
                "alike (branch them from one seed, or init seeds with the same "
                "--doc-start/--doc-end)"
            )


def expert_infos(bundles: Sequence[Bundle]) -> list[ExpertInfo]:
    return [ExpertInfo(b.id, b.name, tuple(b.languages), b.manifest.allocation) for b in bundles]


def covering_language(language: str, covered: Collection[str]) -> str | None:
    """The language of ``covered`` (normalised codes of the experts' languages) that the
    language router sends ``language`` to: itself, or the broader form the experts name it by
    (``wanted_form``: ``arb`` and ``ar-EG`` to ``ar``, ``en-US`` to ``en``); None when no
    expert covers it."""
    form = wanted_form(language, covered)
    return form if form in covered else None


def split_covered(
    languages: Iterable[str], experts_languages: Iterable[str]
) -> tuple[list[str], list[str]] | None:
    """``languages`` (in order, once each) as those the experts cover, as the language router
    routes them (:func:`covering_language`), and those left out; None when that leaves nothing
    out or keeps nothing (no restriction worth making)."""
    covered = {normalize_language(language) for language in experts_languages}
    held = list(dict.fromkeys(languages))
    kept = [language for language in held if covering_language(language, covered)]
    left_out = [language for language in held if language not in kept]
    return (kept, left_out) if kept and left_out else None
